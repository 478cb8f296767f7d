package pci

import (
	"encoding/binary"

	"github.com/flushvm/flushvm/virtio"
)

// PCI configuration space registers (PCI Local Bus 3.0, section 6.1).
const (
	cfgVendorID      = 0x00
	cfgDeviceID      = 0x02
	cfgCommand       = 0x04
	cfgStatus        = 0x06
	cfgRevision      = 0x08
	cfgClass         = 0x09 // prog-if, subclass, class
	cfgCacheLine     = 0x0c
	cfgLatency       = 0x0d
	cfgHeaderType    = 0x0e
	cfgBAR0          = 0x10
	cfgBAR2          = 0x18
	cfgSubsysVendor  = 0x2c
	cfgSubsysID      = 0x2e
	cfgCapPtr        = 0x34
	cfgInterruptLine = 0x3c
	cfgInterruptPin  = 0x3d

	cfgSpaceSize = 256

	cmdMemory      = 1 << 1
	cmdBusMaster   = 1 << 2
	cmdINTxDisable = 1 << 10

	statusCapList = 1 << 4

	bar64       = 0x4 // memory BAR, 64-bit
	barPrefetch = 0x8

	capIDVendor = 0x09
	capIDMSIX   = 0x11

	msixCtrlEnable   = 1 << 15
	msixCtrlFuncMask = 1 << 14
)

// virtio-pci identity (virtio 1.2, 4.1.2).
const (
	// VendorID is the PCI vendor of every virtio function.
	VendorID = 0x1af4
	// DeviceIDBase plus the virtio device type is a modern function's PCI
	// device ID.
	DeviceIDBase = 0x1040
	// SubsystemID is the subsystem device ID (>= 0x40 for non-transitional
	// devices).
	SubsystemID = 0x1100
	revision    = 1
)

// virtio_pci_cap cfg_type values (virtio 1.2, 4.1.4).
const (
	capCommonCfg = 1
	capNotifyCfg = 2
	capISRCfg    = 3
	capDeviceCfg = 4
	capPCICfg    = 5
)

// BAR0 layout: one page per virtio structure.
const (
	bar0CommonOff = 0x0000
	bar0ISROff    = 0x1000
	bar0DeviceOff = 0x2000
	bar0NotifyOff = 0x3000
	bar0Size      = 0x4000

	// NotifyOffMultiplier spaces the queues' notify addresses 4 bytes
	// apart: queue n is notified at BAR0 + 0x3000 + 4*n.
	NotifyOffMultiplier = 4
)

// Capability list offsets, filled by buildConfig.
type capLayout struct {
	common, isr, device, notify, pciCfg, msix uint32
}

// classCode returns the (class, subclass, prog-if) for a virtio device type.
func classCode(deviceType uint16) (class, subclass, progIF byte) {
	switch deviceType {
	case 1: // network
		return 0x02, 0x00, 0
	case 2: // block: mass storage, "other"
		return 0x01, 0x80, 0
	case 3: // console: simple communication, other
		return 0x07, 0x80, 0
	case 8: // SCSI host
		return 0x01, 0x00, 0
	default:
		return 0xff, 0x00, 0
	}
}

// buildConfig fills the configuration space image and its write mask.
func (t *Transport) buildConfig() {
	c, m := &t.cfg, &t.wmask
	put16 := func(off int, v uint16) { binary.LittleEndian.PutUint16(c[off:], v) }
	put32 := func(off int, v uint32) { binary.LittleEndian.PutUint32(c[off:], v) }
	mask32 := func(off int, v uint32) { binary.LittleEndian.PutUint32(m[off:], v) }

	put16(cfgVendorID, VendorID)
	put16(cfgDeviceID, DeviceIDBase+t.dev.DeviceID())
	put16(cfgCommand, cmdMemory)
	put16(cfgStatus, statusCapList)
	c[cfgRevision] = revision
	class, sub, pif := classCode(t.dev.DeviceID())
	c[cfgClass], c[cfgClass+1], c[cfgClass+2] = pif, sub, class
	c[cfgHeaderType] = 0
	put16(cfgSubsysVendor, VendorID)
	put16(cfgSubsysID, SubsystemID)
	c[cfgInterruptPin] = 1 // INTA#

	m[cfgCommand] = cmdMemory | cmdBusMaster | 1 // IO space enable is harmless: no IO BARs
	m[cfgCommand+1] = cmdINTxDisable >> 8
	m[cfgCacheLine], m[cfgLatency], m[cfgInterruptLine] = 0xff, 0xff, 0xff

	// Two 64-bit memory BARs. The write mask keeps the address bits below
	// the size at zero, which is what makes the all-ones sizing protocol
	// read back the size.
	for _, b := range []struct {
		reg   int
		size  uint64
		flags uint32
		addr  uint64
	}{{cfgBAR0, bar0Size, bar64 | barPrefetch, t.bar[0]}, {cfgBAR2, t.bar2Size, bar64, t.bar[1]}} {
		put32(b.reg, uint32(b.addr)&^uint32(b.size-1)|b.flags)
		put32(b.reg+4, uint32(b.addr>>32))
		mask32(b.reg, ^uint32(b.size-1)&^0xf)
		mask32(b.reg+4, 0xffffffff)
	}

	t.buildCaps()
}

// buildCaps writes the capability list, chained from 0x40: the virtio
// structures (common, ISR, device, notify, PCI config access) in BAR0,
// then MSI-X with its table and PBA in BAR2.
func (t *Transport) buildCaps() {
	c, m := &t.cfg, &t.wmask
	put16 := func(off int, v uint16) { binary.LittleEndian.PutUint16(c[off:], v) }
	put32 := func(off int, v uint32) { binary.LittleEndian.PutUint32(c[off:], v) }
	mask32 := func(off int, v uint32) { binary.LittleEndian.PutUint32(m[off:], v) }
	next := uint32(0x40)
	c[cfgCapPtr] = byte(next)
	var prev uint32
	add := func(length uint32) uint32 {
		at := next
		if prev != 0 {
			c[prev+1] = byte(at)
		}
		prev = at
		next = (at + length + 3) &^ 3
		return at
	}
	vcap := func(cfgType byte, length, off, size uint32) uint32 {
		at := add(length)
		c[at], c[at+2], c[at+3], c[at+4] = capIDVendor, byte(length), cfgType, 0
		put32(int(at+8), off)
		put32(int(at+12), size)
		return at
	}
	t.caps.common = vcap(capCommonCfg, 16, bar0CommonOff, commonLen)
	t.caps.isr = vcap(capISRCfg, 16, bar0ISROff, 1)
	if t.cfgSize > 0 {
		t.caps.device = vcap(capDeviceCfg, 16, bar0DeviceOff, t.cfgSize)
	}
	t.caps.notify = vcap(capNotifyCfg, 20, bar0NotifyOff, uint32(NotifyOffMultiplier*t.nq))
	put32(int(t.caps.notify+16), NotifyOffMultiplier)
	// VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and the data window are
	// the driver's to write.
	t.caps.pciCfg = vcap(capPCICfg, 20, 0, 0)
	p := t.caps.pciCfg
	m[p+4] = 0xff
	mask32(int(p+8), 0xffffffff)
	mask32(int(p+12), 0xffffffff)
	mask32(int(p+16), 0xffffffff)

	// MSI-X: table and PBA in BAR2 (BIR 2).
	at := add(12)
	t.caps.msix = at
	c[at] = capIDMSIX
	put16(int(at+2), uint16(t.nvec-1))
	put32(int(at+4), msixTableOff|2)
	put32(int(at+8), uint32(t.pbaOff)|2)
	m[at+3] = (msixCtrlEnable | msixCtrlFuncMask) >> 8
}

// barAddr decodes BAR i (0 or 1 for BAR0/BAR2) from the image.
func (t *Transport) barAddr(i int) uint64 {
	reg := cfgBAR0 + 8*i
	lo := binary.LittleEndian.Uint32(t.cfg[reg:])
	hi := binary.LittleEndian.Uint32(t.cfg[reg+4:])
	return uint64(hi)<<32 | uint64(lo&^0xf)
}

func (t *Transport) command() uint16 { return binary.LittleEndian.Uint16(t.cfg[cfgCommand:]) }

// ReadConfig fills data from PCI configuration space at offset. Bytes
// outside the 256-byte space read as zero.
func (t *Transport) ReadConfig(offset uint32, data []byte) {
	clear(data)
	t.mu.Lock()
	defer t.mu.Unlock()
	if offset >= cfgSpaceSize {
		return
	}
	end := min(uint64(offset)+uint64(len(data)), cfgSpaceSize)
	win := t.caps.pciCfg + 16
	if uint64(offset) < uint64(win)+4 && uint64(win) < end {
		// Reading pci_cfg_data performs the BAR read the driver set up.
		if bar, off, n, ok := t.pciCfgWindow(); ok {
			var b [4]byte
			t.readBAR(bar, off, b[:n])
			copy(t.cfg[win:win+4], b[:])
		}
	}
	copy(data, t.cfg[offset:end])
}

// WriteConfig stores data into PCI configuration space at offset; read-only
// bits keep their value.
func (t *Transport) WriteConfig(offset uint32, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if offset >= cfgSpaceSize || t.closed {
		return
	}
	end := min(uint64(offset)+uint64(len(data)), cfgSpaceSize)
	for i := uint64(offset); i < end; i++ {
		v := data[i-uint64(offset)]
		t.cfg[i] = t.cfg[i]&^t.wmask[i] | v&t.wmask[i]
	}
	touches := func(lo, hi uint32) bool { return uint64(offset) < uint64(hi) && uint64(lo) < end }
	if touches(cfgCommand, cfgCommand+2) || touches(cfgBAR0, cfgBAR2+8) {
		t.bar[0], t.bar[1] = t.barAddr(0), t.barAddr(1)
		t.syncIOEventFDs()
		t.irq.setINTxDisabled(t.command()&cmdINTxDisable != 0)
	}
	if touches(t.caps.msix+2, t.caps.msix+4) {
		ctrl := binary.LittleEndian.Uint16(t.cfg[t.caps.msix+2:])
		t.irq.setControl(ctrl&msixCtrlEnable != 0, ctrl&msixCtrlFuncMask != 0)
	}
	win := t.caps.pciCfg + 16
	if touches(win, win+4) {
		if bar, off, n, ok := t.pciCfgWindow(); ok {
			t.writeBAR(bar, off, t.cfg[win:win+n])
		}
	}
}

// pciCfgWindow decodes the VIRTIO_PCI_CAP_PCI_CFG access the driver set up.
func (t *Transport) pciCfgWindow() (bar int, off uint64, n uint32, ok bool) {
	p := t.caps.pciCfg
	bar = int(t.cfg[p+4])
	off = uint64(binary.LittleEndian.Uint32(t.cfg[p+8:]))
	n = binary.LittleEndian.Uint32(t.cfg[p+12:])
	return bar, off, n, (n == 1 || n == 2 || n == 4) && (bar == 0 || bar == 2)
}

// BAR is one memory BAR of the function as the guest currently places it.
type BAR struct {
	// Index is the BAR number (0 or 2).
	Index int
	// Addr is the guest physical address the BAR is at.
	Addr uint64
	// Size is its size in bytes.
	Size uint64
}

// BARs returns where the guest currently has the BARs, or nothing while
// memory decoding is off (the guest is sizing or moving them).
func (t *Transport) BARs() []BAR {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.command()&cmdMemory == 0 || t.closed {
		return nil
	}
	return []BAR{{Index: 0, Addr: t.bar[0], Size: bar0Size}, {Index: 2, Addr: t.bar[1], Size: t.bar2Size}}
}

// deviceFeatures are the features the transport offers: the device's, minus
// the ones this transport does not implement, plus VERSION_1.
func deviceFeatures(dev virtio.Device) uint64 {
	const unsupported = virtio.FeatureRingPacked |
		1<<37 | // SR_IOV
		1<<38 | // NOTIFICATION_DATA
		1<<39 | // NOTIF_CONFIG_DATA
		1<<40 // RING_RESET
	return dev.Features()&^unsupported | virtio.FeatureVersion1
}
