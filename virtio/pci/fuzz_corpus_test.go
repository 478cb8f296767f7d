package pci

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/flushvm/flushvm/internal/fuzzseed"
	"github.com/flushvm/flushvm/virtio"
)

// Operation kinds of FuzzGuestAccess's 13-byte records: kind, bar,
// offset (uint16), width, value (uint64), all little-endian.
const (
	opReadConfig = iota
	opWriteConfig
	opReadBAR
	opWriteBAR
	opInterrupt // the device interrupts queue v%3 and signals a config change
)

// recorder performs guest accesses on a rig the way FuzzGuestAccess
// replays them, and records them in its encoding, so a seed is written as
// the driver code it imitates: reads return what the transport answers,
// and the sequence can branch on them as Linux does.
type recorder struct {
	r   *rig
	ops []byte
}

// op performs one access and records it; it returns what a read read.
func (c *recorder) op(kind, bar int, off uint64, width int, v uint64) uint64 {
	if off > 0xffff || width > 8 || bar > 3 {
		panic(fmt.Sprintf("access kind %d bar %d off %#x width %d cannot be encoded", kind, bar, off, width))
	}
	c.ops = append(c.ops, byte(kind), byte(bar))
	c.ops = binary.LittleEndian.AppendUint16(c.ops, uint16(off))
	c.ops = append(c.ops, byte(width))
	c.ops = binary.LittleEndian.AppendUint64(c.ops, v)
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	switch kind {
	case opReadConfig:
		c.r.tr.ReadConfig(uint32(off), b[:width])
	case opWriteConfig:
		c.r.tr.WriteConfig(uint32(off), b[:width])
	case opReadBAR:
		c.r.tr.ReadBAR(bar, off, b[:width])
	case opWriteBAR:
		c.r.tr.WriteBAR(bar, off, b[:width])
	case opInterrupt:
		if len(c.r.dev.activations) > 0 {
			a := c.r.lastActivation()
			if q := a.Queues[v%uint64(len(a.Queues))]; q.Interrupt != nil {
				q.Interrupt.Notify()
			}
			a.ConfigInterrupt.Notify()
		}
		return 0
	}
	clear(b[width:])
	return binary.LittleEndian.Uint64(b[:])
}

// cfg, wcfg, cc and wcc access configuration space and, in BAR0, the
// common configuration structure.
func (c *recorder) cfg(off uint32, width int) uint64 {
	return c.op(opReadConfig, 0, uint64(off), width, 0)
}
func (c *recorder) wcfg(off uint32, width int, v uint64) {
	c.op(opWriteConfig, 0, uint64(off), width, v)
}
func (c *recorder) cc(off uint64, width int) uint64 {
	return c.op(opReadBAR, 0, bar0CommonOff+off, width, 0)
}
func (c *recorder) wcc(off uint64, width int, v uint64) {
	c.op(opWriteBAR, 0, bar0CommonOff+off, width, v)
}

// addStatus is virtio_add_status: read the status, write it back with bits.
func (c *recorder) addStatus(bits uint8) {
	c.wcc(ccDeviceStatus, 1, c.cc(ccDeviceStatus, 1)|uint64(bits))
}

// reset is vp_modern_set_status(0) followed by polling until the device
// reads 0 (this transport resets at once: one poll).
func (c *recorder) reset() {
	c.wcc(ccDeviceStatus, 1, 0)
	if c.cc(ccDeviceStatus, 1) != 0 {
		panic("device status not 0 after reset")
	}
}

// enumerate is the PCI core's pass over a new function (pci_setup_device,
// __pci_read_base with decoding off, the capability walk) and
// pci_enable_device + pci_set_master, then the capability reads of
// virtio_pci_modern_probe.
func (c *recorder) enumerate() {
	c.cfg(cfgVendorID, 4)
	c.cfg(cfgRevision, 4)
	c.cfg(cfgHeaderType, 1)
	cmd := c.cfg(cfgCommand, 2)
	c.wcfg(cfgCommand, 2, cmd&^cmdMemory)
	for _, reg := range []uint32{cfgBAR0, cfgBAR2} {
		for _, half := range []uint32{reg, reg + 4} {
			old := c.cfg(half, 4)
			c.wcfg(half, 4, 0xffffffff)
			c.cfg(half, 4)
			c.wcfg(half, 4, old)
		}
	}
	c.wcfg(cfgCommand, 2, cmd)
	c.cfg(cfgSubsysVendor, 4)
	c.cfg(cfgInterruptPin, 1)
	if c.cfg(cfgStatus, 2)&statusCapList != 0 {
		for p := uint32(c.cfg(cfgCapPtr, 1)); p >= 0x40 && p < cfgSpaceSize; {
			ent := c.cfg(p, 2) // id and next in one word, as __pci_find_next_cap_ttl reads them
			if ent&0xff == capIDVendor {
				c.cfg(p+3, 1) // cfg_type
				c.cfg(p+4, 1) // bar
				c.cfg(p+8, 4) // offset
				c.cfg(p+12, 4)
				if c.r.cfg8(p+3) == capNotifyCfg {
					c.cfg(p+16, 4) // notify_off_multiplier
				}
			}
			p = uint32(ent >> 8)
		}
	}
	c.wcfg(cfgCommand, 2, c.cfg(cfgCommand, 2)|cmdMemory|cmdBusMaster)
}

// negotiate is virtio_dev_probe up to FEATURES_OK with the driver acking
// want of what the device offers (want 0: everything offered); it
// reports whether the device accepted.
func (c *recorder) negotiate(want uint64) bool {
	c.reset()
	c.addStatus(virtio.StatusAcknowledge)
	c.addStatus(virtio.StatusDriver)
	c.wcc(ccDeviceFeatureSelect, 4, 0)
	offered := c.cc(ccDeviceFeature, 4)
	c.wcc(ccDeviceFeatureSelect, 4, 1)
	offered |= c.cc(ccDeviceFeature, 4) << 32
	if want == 0 {
		want = offered
	}
	c.wcc(ccDriverFeatureSelect, 4, 0)
	c.wcc(ccDriverFeature, 4, want&0xffffffff)
	c.wcc(ccDriverFeatureSelect, 4, 1)
	c.wcc(ccDriverFeature, 4, want>>32)
	c.addStatus(virtio.StatusFeaturesOK)
	return c.cc(ccDeviceStatus, 1)&uint64(virtio.StatusFeaturesOK) != 0
}

// readBlkConfig is what virtio_blk_probe reads: the 64-bit capacity as two
// halves between two generation reads, then the 32-bit limits.
func (c *recorder) readBlkConfig() {
	gen := c.cc(ccConfigGeneration, 1)
	c.op(opReadBAR, 0, bar0DeviceOff, 4, 0)
	c.op(opReadBAR, 0, bar0DeviceOff+4, 4, 0)
	if c.cc(ccConfigGeneration, 1) != gen {
		panic("config generation moved")
	}
	for _, off := range []uint64{8, 12, 20, 32} { // size_max, seg_max, blk_size, writeback
		c.op(opReadBAR, 0, bar0DeviceOff+off, 4, 0)
	}
}

// enableMSIX is pci_alloc_irq_vectors for n vectors: enable with the
// function masked, program every entry, unmask.
func (c *recorder) enableMSIX(n int) {
	m := c.r.msix
	ctrl := c.cfg(m+2, 2)
	c.wcfg(m+2, 2, ctrl|msixCtrlEnable|msixCtrlFuncMask)
	c.cfg(m+4, 4) // table offset and BIR
	for v := range n {
		e := uint64(v) * msixEntrySize
		c.op(opWriteBAR, 2, e+msixEntryCtrl, 4, msixVectorMask)
		c.op(opWriteBAR, 2, e+msixEntryAddrLo, 4, 0xfee00000|uint64(v)<<12)
		c.op(opWriteBAR, 2, e+msixEntryAddrHi, 4, 0)
		c.op(opWriteBAR, 2, e+msixEntryData, 4, 0x4020+uint64(v))
		c.op(opWriteBAR, 2, e+msixEntryCtrl, 4, 0)
	}
	c.wcfg(m+2, 2, ctrl|msixCtrlEnable)
}

// setupQueues is vp_modern_find_vqs: per queue setup_vq with the ring of
// size entries the rig's mock driver laid out, then queue_enable for each,
// with MSI-X vectors when msix is set.
func (c *recorder) setupQueues(size uint16, msix bool) {
	nq := int(c.cc(ccNumQueues, 2))
	if msix {
		c.enableMSIX(nq + 1)
		c.wcc(ccConfigMSIXVector, 2, uint64(nq))
		c.cc(ccConfigMSIXVector, 2)
	}
	for q := range nq {
		c.wcc(ccQueueSelect, 2, uint64(q))
		if c.cc(ccQueueSize, 2) == 0 || c.cc(ccQueueEnable, 2) != 0 {
			panic("queue not available")
		}
		qc := c.r.drivers[q].QueueConfig()
		c.wcc(ccQueueSize, 2, uint64(size))
		for _, f := range []struct{ off, v uint64 }{{ccQueueDesc, qc.DescTable}, {ccQueueDriver, qc.AvailRing}, {ccQueueDevice, qc.UsedRing}} {
			c.wcc(f.off, 4, f.v&0xffffffff) // vp_iowrite64_twopart
			c.wcc(f.off+4, 4, f.v>>32)
		}
		c.cc(ccQueueNotifyOff, 2)
		if msix {
			c.wcc(ccQueueMSIXVector, 2, uint64(q))
			c.cc(ccQueueMSIXVector, 2)
		}
	}
	for q := range nq {
		c.wcc(ccQueueSelect, 2, uint64(q))
		c.wcc(ccQueueEnable, 2, 1)
	}
}

// probe is virtio_dev_probe for virtio_blk through DRIVER_OK.
func (c *recorder) probe(size uint16, msix bool) {
	if !c.negotiate(0) {
		panic("features refused")
	}
	c.readBlkConfig()
	c.setupQueues(size, msix)
	c.addStatus(virtio.StatusDriverOK)
}

// serve is a little traffic: a kick per queue (vp_notify writes the queue
// index at its notify address), completions and a config change, each
// followed by what the interrupt handler reads (vp_interrupt reads the ISR
// without MSI-X; the config handler re-reads the capacity).
func (c *recorder) serve(msix bool) {
	nq := c.r.dev.nq
	for q := range nq {
		c.op(opWriteBAR, 0, bar0NotifyOff+uint64(q)*NotifyOffMultiplier, 2, uint64(q))
		c.op(opInterrupt, 0, 0, 0, uint64(q))
		if !msix {
			c.op(opReadBAR, 0, bar0ISROff, 1, 0)
		}
		c.op(opReadBAR, 0, bar0DeviceOff, 4, 0)
	}
	c.op(opWriteBAR, 0, bar0DeviceOff+32, 1, 0) // cache_type "write through"
}

// remove is virtio_dev_remove and the PCI remove: reset, vectors
// released, MSI-X off, bus mastering off.
func (c *recorder) remove(msix bool) {
	c.reset()
	if msix {
		for q := range c.r.dev.nq {
			c.wcc(ccQueueSelect, 2, uint64(q))
			c.wcc(ccQueueMSIXVector, 2, NoVector)
		}
		c.wcc(ccConfigMSIXVector, 2, NoVector)
		c.wcfg(c.r.msix+2, 2, c.cfg(c.r.msix+2, 2)&^msixCtrlEnable)
	}
	c.wcfg(cfgCommand, 2, c.cfg(cfgCommand, 2)&^cmdBusMaster)
}

// window reads and writes common configuration through the
// VIRTIO_PCI_CAP_PCI_CFG capability, as firmware drivers (SeaBIOS) do.
func (c *recorder) window(off uint64, width int, v uint64, write bool) uint64 {
	p := c.r.caps[capPCICfg]
	c.wcfg(p+4, 1, 0) // bar
	c.wcfg(p+8, 4, off)
	c.wcfg(p+12, 4, uint64(width))
	if write {
		c.wcfg(p+16, width, v)
		return 0
	}
	return c.cfg(p+16, width)
}

// guestAccessSeed is one seed of FuzzGuestAccess: a driver's access
// sequence, and how many activations it leaves the device with.
type guestAccessSeed struct {
	name        string
	activations int
	run         func(c *recorder)
}

func guestAccessSeeds() []guestAccessSeed {
	return []guestAccessSeed{
		{"linux-enumerate", 0, func(c *recorder) { c.enumerate() }},
		{"linux-blk-msix", 1, func(c *recorder) { c.probe(128, true); c.serve(true) }},
		{"linux-blk-intx", 1, func(c *recorder) { c.probe(128, false); c.serve(false) }},
		{"linux-blk-remove-reprobe-smaller-ring", 2, func(c *recorder) {
			c.probe(128, true)
			c.remove(true)
			c.wcfg(cfgCommand, 2, c.cfg(cfgCommand, 2)|cmdBusMaster)
			c.probe(64, true)
		}},
		{"linux-features-refused", 0, func(c *recorder) {
			if c.negotiate(virtio.FeatureVersion1 | 1<<40) {
				panic("unoffered feature accepted")
			}
			c.addStatus(virtio.StatusFailed)
		}},
		{"firmware-pci-cfg-window", 0, func(c *recorder) {
			c.window(ccDeviceStatus, 1, 0, true)
			c.window(ccDeviceStatus, 1, 0, false)
			c.window(ccDeviceStatus, 1, uint64(virtio.StatusAcknowledge|virtio.StatusDriver), true)
			c.window(ccDeviceFeatureSelect, 4, 1, true)
			c.window(ccDeviceFeature, 4, 0, false)
			c.window(ccNumQueues, 2, 0, false)
			c.window(ccQueueSelect, 2, 0, true)
			c.window(ccQueueSize, 2, 0, false)
		}},
	}
}

// record runs s on a fresh rig like the one FuzzGuestAccess replays on.
func record(t *testing.T, s guestAccessSeed) (*recorder, error) {
	c := &recorder{r: newRig(t, 2)}
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("%v", p)
			}
		}()
		s.run(c)
		return nil
	}()
	return c, err
}

// TestFuzzGuestAccessCorpus checks that testdata/fuzz/FuzzGuestAccess
// holds the seeds of guestAccessSeeds, each a Linux (or firmware) driver's
// access sequence that does what it imitates on the transport. Regenerate
// the corpus with
//
//	go test ./virtio/pci/ -run TestFuzzGuestAccessCorpus
func TestFuzzGuestAccessCorpus(t *testing.T) {
	for _, s := range guestAccessSeeds() {
		c, err := record(t, s)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if n := len(c.r.dev.activations); n != s.activations {
			t.Errorf("%s: %d activations, want %d (last error %v)", s.name, n, s.activations, c.r.tr.LastError())
		}
		fuzzseed.Check(t, "FuzzGuestAccess", s.name, fuzzseed.Encode(c.ops))
	}
}
