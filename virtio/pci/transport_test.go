package pci

import (
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/virtio"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// fakePlatform records what the transport asks of the machine. Its MSI
// routes carry real eventfds so tests can see injected interrupts.
type fakePlatform struct {
	mu       sync.Mutex
	ioevents map[uint64]int
	routes   []*fakeRoute
	intx     bool
	failReg  bool
}

type fakeRoute struct {
	fd     int
	addr   uint64
	data   uint32
	sets   int
	closed bool
}

func (r *fakeRoute) Set(addr uint64, data uint32) error {
	r.addr, r.data = addr, data
	r.sets++
	return nil
}
func (r *fakeRoute) EventFD() int { return r.fd }
func (r *fakeRoute) Close() error { r.closed = true; return unix.Close(r.fd) }

func (p *fakePlatform) RegisterIOEventFD(addr uint64, fd int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failReg {
		return errors.New("fake: no ioeventfd")
	}
	if _, dup := p.ioevents[addr]; dup {
		return errors.New("fake: address already registered")
	}
	p.ioevents[addr] = fd
	return nil
}

func (p *fakePlatform) UnregisterIOEventFD(addr uint64, fd int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if got, ok := p.ioevents[addr]; !ok || got != fd {
		return errors.New("fake: not registered")
	}
	delete(p.ioevents, addr)
	return nil
}

func (p *fakePlatform) NewMSIRoute() (MSIRoute, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, err
	}
	r := &fakeRoute{fd: fd}
	p.routes = append(p.routes, r)
	return r, nil
}

func (p *fakePlatform) SetINTx(asserted bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.intx = asserted
	return nil
}

func (p *fakePlatform) registered() map[uint64]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := make(map[uint64]int, len(p.ioevents))
	for k, v := range p.ioevents {
		m[k] = v
	}
	return m
}

// eventCount reads (and resets) an eventfd's counter; 0 when not signalled.
func eventCount(t *testing.T, fd int) uint64 {
	t.Helper()
	var b [8]byte
	if _, err := unix.Read(fd, b[:]); err != nil {
		if err == unix.EAGAIN {
			return 0
		}
		t.Fatalf("reading eventfd: %v", err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

// fakeDevice is a block-like virtio device that records its lifecycle.
type fakeDevice struct {
	nq          int
	config      [16]byte
	activations []virtio.Activation
	resets      int
	activateErr error
	// negotiated records NegotiateFeatures calls (virtio.FeatureNegotiator).
	negotiated []uint64
}

func (d *fakeDevice) NegotiateFeatures(f uint64) { d.negotiated = append(d.negotiated, f) }

func (d *fakeDevice) DeviceID() uint16 { return 2 }
func (d *fakeDevice) Features() uint64 {
	return virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc | virtio.FeatureRingPacked | 1<<9
}
func (d *fakeDevice) NumQueues() int       { return d.nq }
func (d *fakeDevice) MaxQueueSize() uint16 { return 256 }
func (d *fakeDevice) ConfigSize() uint32   { return uint32(len(d.config)) }
func (d *fakeDevice) ReadConfig(off uint32, p []byte) {
	clear(p)
	if off < uint32(len(d.config)) {
		copy(p, d.config[off:])
	}
}
func (d *fakeDevice) WriteConfig(off uint32, p []byte) {
	if off < uint32(len(d.config)) {
		copy(d.config[off:], p)
	}
}
func (d *fakeDevice) Activate(a virtio.Activation) error {
	if d.activateErr != nil {
		return d.activateErr
	}
	d.activations = append(d.activations, a)
	return nil
}
func (d *fakeDevice) Reset() { d.resets++ }

const (
	testBAR0 = 0xe000_0000
	testBAR2 = 0xe000_4000
)

type rig struct {
	t       *testing.T
	tr      *Transport
	plat    *fakePlatform
	dev     *fakeDevice
	mem     *guestmem.Memory
	drivers []*virtio.MockDriver
	caps    map[byte]uint32 // cfg_type -> capability offset
	msix    uint32
}

func newRig(t *testing.T, nq int) *rig {
	t.Helper()
	r := &rig{t: t, plat: &fakePlatform{ioevents: map[uint64]int{}}, dev: &fakeDevice{nq: nq}, caps: map[byte]uint32{}}
	for i := range r.dev.config {
		r.dev.config[i] = byte(0x30 + i)
	}
	var err error
	if r.tr, err = New(r.dev, r.plat, testBAR0, testBAR2); err != nil {
		t.Fatal(err)
	}
	tr := r.tr
	t.Cleanup(func() { tr.Close() })
	const base, size = 0x100000, 4 << 20
	if r.mem, err = virtio.NewMockMemory(base, size); err != nil {
		t.Fatal(err)
	}
	r.tr.SetMemory(r.mem)
	for q := range nq {
		d, err := virtio.NewMockDriver(virtio.MockConfig{Size: 128, EventIdx: true, Memory: r.mem,
			ArenaStart: base + uint64(q)*size/uint64(nq), ArenaEnd: base + uint64(q+1)*size/uint64(nq), NoKickFD: true})
		if err != nil {
			t.Fatal(err)
		}
		r.drivers = append(r.drivers, d)
	}
	// Walk the capability list as Linux's virtio_pci_find_capability does.
	if r.cfg16(cfgStatus)&statusCapList == 0 {
		t.Fatal("no capability list")
	}
	for p, n := uint32(r.cfg8(cfgCapPtr)), 0; p != 0; p, n = uint32(r.cfg8(p+1)), n+1 {
		if n > 48 || p < 0x40 {
			t.Fatalf("bad capability pointer %#x", p)
		}
		switch r.cfg8(p) {
		case capIDVendor:
			r.caps[r.cfg8(p+3)] = p
		case capIDMSIX:
			r.msix = p
		}
	}
	return r
}

func (r *rig) cfg8(off uint32) uint8 {
	var b [1]byte
	r.tr.ReadConfig(off, b[:])
	return b[0]
}
func (r *rig) cfg16(off uint32) uint16 {
	var b [2]byte
	r.tr.ReadConfig(off, b[:])
	return binary.LittleEndian.Uint16(b[:])
}
func (r *rig) cfg32(off uint32) uint32 {
	var b [4]byte
	r.tr.ReadConfig(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}
func (r *rig) wcfg16(off uint32, v uint16) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	r.tr.WriteConfig(off, b[:])
}
func (r *rig) wcfg32(off uint32, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	r.tr.WriteConfig(off, b[:])
}

func (r *rig) read(bar int, off uint64, n int) uint64 {
	var b [8]byte
	r.tr.ReadBAR(bar, off, b[:n])
	return binary.LittleEndian.Uint64(b[:])
}
func (r *rig) write(bar int, off uint64, n int, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	r.tr.WriteBAR(bar, off, b[:n])
}

// Common configuration accessors (BAR0 at the common cap's offset).
func (r *rig) cc(off uint64, n int) uint64 { return r.read(0, bar0CommonOff+off, n) }
func (r *rig) wcc(off uint64, n int, v uint64) {
	r.write(0, bar0CommonOff+off, n, v)
}
func (r *rig) status() uint8 { return uint8(r.cc(ccDeviceStatus, 1)) }

// initDevice runs the Linux virtio_pci + virtio_blk probe sequence.
func (r *rig) initDevice(features uint64, msix bool) {
	t := r.t
	t.Helper()
	r.wcc(ccDeviceStatus, 1, 0)
	if r.status() != 0 {
		t.Fatal("status not 0 after reset")
	}
	r.wcc(ccDeviceStatus, 1, uint64(virtio.StatusAcknowledge))
	r.wcc(ccDeviceStatus, 1, uint64(virtio.StatusAcknowledge|virtio.StatusDriver))
	r.wcc(ccDeviceFeatureSelect, 4, 0)
	offered := r.cc(ccDeviceFeature, 4)
	r.wcc(ccDeviceFeatureSelect, 4, 1)
	offered |= r.cc(ccDeviceFeature, 4) << 32
	if features == 0 {
		features = offered
	}
	r.wcc(ccDriverFeatureSelect, 4, 0)
	r.wcc(ccDriverFeature, 4, features&0xffffffff)
	r.wcc(ccDriverFeatureSelect, 4, 1)
	r.wcc(ccDriverFeature, 4, features>>32)
	r.wcc(ccDeviceStatus, 1, uint64(virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK))
	if r.status()&virtio.StatusFeaturesOK == 0 {
		t.Fatalf("FEATURES_OK refused for %#x (offered %#x)", features, offered)
	}
	nq := int(r.cc(ccNumQueues, 2))
	if msix {
		// pci_msix_enable: enable with all vectors masked, program, unmask.
		ctrl := r.cfg16(r.msix + 2)
		r.wcfg16(r.msix+2, ctrl|msixCtrlEnable|msixCtrlFuncMask)
		for v := range nq + 1 {
			e := uint64(v) * msixEntrySize
			r.write(2, e+msixEntryAddrLo, 4, 0xfee00000|uint64(v)<<12)
			r.write(2, e+msixEntryAddrHi, 4, 0)
			r.write(2, e+msixEntryData, 4, 0x4020+uint64(v))
			r.write(2, e+msixEntryCtrl, 4, 0)
		}
		r.wcfg16(r.msix+2, ctrl|msixCtrlEnable)
		r.wcc(ccConfigMSIXVector, 2, uint64(nq))
		if got := r.cc(ccConfigMSIXVector, 2); got != uint64(nq) {
			t.Fatalf("config vector read back %d", got)
		}
	}
	for q := range nq {
		r.wcc(ccQueueSelect, 2, uint64(q))
		if max := r.cc(ccQueueSize, 2); max != 256 {
			t.Fatalf("queue %d size %d, want 256", q, max)
		}
		qc := r.drivers[q].QueueConfig()
		r.wcc(ccQueueSize, 2, uint64(qc.Size))
		if msix {
			r.wcc(ccQueueMSIXVector, 2, uint64(q))
			if got := r.cc(ccQueueMSIXVector, 2); got != uint64(q) {
				t.Fatalf("queue %d vector read back %d", q, got)
			}
		}
		// vp_iowrite64_twopart: low half, then high half.
		for _, f := range []struct{ off, v uint64 }{{ccQueueDesc, qc.DescTable}, {ccQueueDriver, qc.AvailRing}, {ccQueueDevice, qc.UsedRing}} {
			r.wcc(f.off, 4, f.v&0xffffffff)
			r.wcc(f.off+4, 4, f.v>>32)
		}
		if off := r.cc(ccQueueNotifyOff, 2); off != uint64(q) {
			t.Fatalf("queue %d notify_off %d", q, off)
		}
		r.wcc(ccQueueEnable, 2, 1)
	}
	r.wcc(ccDeviceStatus, 1, uint64(virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK))
	if s := r.status(); s&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("status %#x after DRIVER_OK: %v", s, r.tr.LastError())
	}
}

func (r *rig) lastActivation() virtio.Activation {
	r.t.Helper()
	if len(r.dev.activations) == 0 {
		r.t.Fatal("device not activated")
	}
	return r.dev.activations[len(r.dev.activations)-1]
}

func TestConfigSpaceIdentity(t *testing.T) {
	r := newRig(t, 2)
	checks := []struct {
		name      string
		got, want uint32
	}{
		{"vendor", uint32(r.cfg16(cfgVendorID)), 0x1af4},
		{"device", uint32(r.cfg16(cfgDeviceID)), 0x1042},
		{"revision", uint32(r.cfg8(cfgRevision)), 1},
		{"class", r.cfg32(cfgRevision) >> 8, 0x018000},
		{"subsystem vendor", uint32(r.cfg16(cfgSubsysVendor)), 0x1af4},
		{"subsystem", uint32(r.cfg16(cfgSubsysID)), SubsystemID},
		{"interrupt pin", uint32(r.cfg8(cfgInterruptPin)), 1},
		{"header type", uint32(r.cfg8(cfgHeaderType)), 0},
		{"command", uint32(r.cfg16(cfgCommand)), cmdMemory},
		{"BAR0 low", r.cfg32(cfgBAR0), testBAR0 | 0xc},
		{"BAR2 low", r.cfg32(cfgBAR2), testBAR2 | 0x4},
		{"MSI-X table size", uint32(r.cfg16(r.msix+2) & 0x7ff), 2}, // 3 vectors
		{"MSI-X table BIR/offset", r.cfg32(r.msix + 4), 2},
		{"MSI-X PBA BIR", r.cfg32(r.msix+8) & 7, 2},
		{"notify multiplier", r.cfg32(r.caps[capNotifyCfg] + 16), 4},
		{"notify length", r.cfg32(r.caps[capNotifyCfg] + 12), 8},
		{"common offset", r.cfg32(r.caps[capCommonCfg] + 8), bar0CommonOff},
		{"common length", r.cfg32(r.caps[capCommonCfg] + 12), commonLen},
		{"ISR offset", r.cfg32(r.caps[capISRCfg] + 8), bar0ISROff},
		{"device cfg offset", r.cfg32(r.caps[capDeviceCfg] + 8), bar0DeviceOff},
		{"device cfg length", r.cfg32(r.caps[capDeviceCfg] + 12), 16},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	for _, ct := range []byte{capCommonCfg, capNotifyCfg, capISRCfg, capDeviceCfg, capPCICfg} {
		p, ok := r.caps[ct]
		if !ok {
			t.Errorf("virtio capability %d missing", ct)
			continue
		}
		if ct != capPCICfg && r.cfg8(p+4) != 0 {
			t.Errorf("virtio capability %d in BAR %d, want 0", ct, r.cfg8(p+4))
		}
	}
	// Read-only registers stay put.
	r.wcfg32(cfgVendorID, 0)
	if r.cfg16(cfgVendorID) != 0x1af4 {
		t.Error("vendor ID is writable")
	}
}

// The whole Linux init sequence, then a request end to end: the driver's
// chain reaches the device's queue and its kick arrives on the queue's
// eventfd, registered at the notify address.
func TestLinuxInitSequence(t *testing.T) {
	r := newRig(t, 2)
	want := virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc | 1<<9
	r.initDevice(want, true)
	a := r.lastActivation()
	if a.Features != want || a.Memory != r.mem || len(a.Queues) != 2 || a.ConfigInterrupt == nil {
		t.Fatalf("activation %+v", a)
	}
	reg := r.plat.registered()
	for q, b := range a.Queues {
		if b.Queue == nil || b.Queue.Size() != 128 || b.Interrupt == nil {
			t.Fatalf("queue %d binding %+v", q, b)
		}
		addr := uint64(testBAR0 + bar0NotifyOff + 4*q)
		if reg[addr] != b.Kick {
			t.Fatalf("queue %d: ioeventfd at %#x is %d, kick fd %d", q, addr, reg[addr], b.Kick)
		}
	}
	d := r.drivers[1]
	sub, err := d.Submit(virtio.MockRequest{Header: make([]byte, 16), In: []uint32{4096}, Status: 1, Indirect: true})
	if err != nil {
		t.Fatal(err)
	}
	// A notify write that reached user space signals the same eventfd.
	r.write(0, bar0NotifyOff+4, 2, 1)
	if n := eventCount(t, a.Queues[1].Kick); n != 1 {
		t.Fatalf("kick count %d", n)
	}
	c := &virtio.Chain{Descriptors: make([]virtio.Descriptor, 0, 8)}
	if ok, err := a.Queues[1].Queue.Pop(c); !ok || err != nil || c.Head != sub.Head || len(c.Descriptors) != 3 {
		t.Fatalf("Pop = %v, %v, %+v", ok, err, c)
	}
	// Device config through BAR0.
	if got := r.read(0, bar0DeviceOff+4, 4); got != 0x37363534 {
		t.Fatalf("device config read %#x", got)
	}
	r.write(0, bar0DeviceOff+8, 1, 0)
	if r.dev.config[8] != 0 {
		t.Fatal("device config write lost")
	}
	// Writing queue fields after enable changes nothing.
	r.wcc(ccQueueSelect, 2, 0)
	r.wcc(ccQueueDesc, 4, 0x1000)
	if r.cc(ccQueueDesc, 8) != r.drivers[0].QueueConfig().DescTable {
		t.Fatal("queue_desc changed while enabled")
	}
}

func TestMSIXDelivery(t *testing.T) {
	r := newRig(t, 1)
	r.initDevice(0, true)
	a := r.lastActivation()
	q0 := r.plat.routes[0]
	a.Queues[0].Interrupt.Notify()
	if n := eventCount(t, q0.fd); n != 1 {
		t.Fatalf("vector 0 fired %d times", n)
	}
	if q0.addr != 0xfee00000 || q0.data != 0x4020 || q0.sets != 1 {
		t.Fatalf("route 0 = %+v", q0)
	}
	// Masked vector: pending bit, delivered on unmask.
	r.write(2, msixEntryCtrl, 4, 1)
	a.Queues[0].Interrupt.Notify()
	if n := eventCount(t, q0.fd); n != 0 {
		t.Fatal("masked vector fired")
	}
	if pba := r.read(2, r.tr.pbaOff, 8); pba != 1 {
		t.Fatalf("PBA %#x, want bit 0", pba)
	}
	r.write(2, msixEntryCtrl, 4, 0)
	if n := eventCount(t, q0.fd); n != 1 {
		t.Fatal("pending vector not delivered on unmask")
	}
	if pba := r.read(2, r.tr.pbaOff, 8); pba != 0 {
		t.Fatalf("PBA %#x after delivery", pba)
	}
	// Function mask works the same way.
	ctrl := r.cfg16(r.msix + 2)
	r.wcfg16(r.msix+2, ctrl|msixCtrlFuncMask)
	a.Queues[0].Interrupt.Notify()
	if eventCount(t, q0.fd) != 0 {
		t.Fatal("function-masked vector fired")
	}
	r.wcfg16(r.msix+2, ctrl)
	if eventCount(t, q0.fd) != 1 {
		t.Fatal("pending vector not delivered on function unmask")
	}
	// Reprogramming the message re-routes before the next delivery.
	r.write(2, msixEntryData, 4, 0x4099)
	a.Queues[0].Interrupt.Notify()
	if eventCount(t, q0.fd) != 1 || q0.data != 0x4099 {
		t.Fatalf("route after reprogramming: %+v", q0)
	}
	// Config interrupt: its own vector, and config_generation moves.
	gen := r.cc(ccConfigGeneration, 1)
	a.ConfigInterrupt.Notify()
	if eventCount(t, r.plat.routes[1].fd) != 1 {
		t.Fatal("config vector did not fire")
	}
	if r.cc(ccConfigGeneration, 1) == gen {
		t.Fatal("config_generation unchanged")
	}
	// NO_VECTOR: no interrupt at all.
	r.wcc(ccQueueSelect, 2, 0)
	r.wcc(ccQueueMSIXVector, 2, NoVector)
	a.Queues[0].Interrupt.Notify()
	if eventCount(t, q0.fd) != 0 || r.plat.intx {
		t.Fatal("interrupt with VIRTIO_MSI_NO_VECTOR")
	}
	// An out-of-range vector reads back as NO_VECTOR.
	r.wcc(ccQueueMSIXVector, 2, 7)
	if r.cc(ccQueueMSIXVector, 2) != NoVector {
		t.Fatal("out-of-range vector accepted")
	}
}

func TestINTx(t *testing.T) {
	r := newRig(t, 1)
	r.initDevice(0, false)
	a := r.lastActivation()
	a.Queues[0].Interrupt.Notify()
	if !r.plat.intx {
		t.Fatal("INTx not asserted")
	}
	if eventCount(t, r.plat.routes[0].fd) != 0 {
		t.Fatal("MSI fired with MSI-X disabled")
	}
	if isr := r.read(0, bar0ISROff, 1); isr != isrQueue {
		t.Fatalf("ISR %#x", isr)
	}
	if r.plat.intx {
		t.Fatal("INTx still asserted after ISR read")
	}
	if isr := r.read(0, bar0ISROff, 1); isr != 0 {
		t.Fatalf("ISR %#x on second read", isr)
	}
	a.ConfigInterrupt.Notify()
	a.Queues[0].Interrupt.Notify()
	if isr := r.read(0, bar0ISROff, 1); isr != isrQueue|isrConfig {
		t.Fatalf("ISR %#x, want queue|config", isr)
	}
	// Command bit 10 masks the line, not the ISR.
	r.wcfg16(cfgCommand, cmdMemory|cmdBusMaster|cmdINTxDisable)
	a.Queues[0].Interrupt.Notify()
	if r.plat.intx {
		t.Fatal("INTx asserted with INTx disabled")
	}
	r.wcfg16(cfgCommand, cmdMemory|cmdBusMaster)
	if !r.plat.intx {
		t.Fatal("INTx not asserted once re-enabled with ISR set")
	}
	r.read(0, bar0ISROff, 1)
}

// Driver unload/reload: reset stops the device and drops the queues; a
// second init sequence works.
func TestResetAndReinit(t *testing.T) {
	r := newRig(t, 2)
	r.initDevice(0, true)
	r.wcc(ccDeviceStatus, 1, 0)
	if r.dev.resets == 0 {
		t.Fatal("Device.Reset not called")
	}
	if len(r.plat.registered()) != 0 {
		t.Fatalf("ioeventfds left after reset: %v", r.plat.registered())
	}
	if r.status() != 0 || r.cc(ccQueueEnable, 2) != 0 || r.cc(ccQueueSize, 2) != 256 {
		t.Fatal("queue state survived reset")
	}
	r.wcc(ccQueueSelect, 2, 1)
	if r.cc(ccQueueDesc, 8) != 0 || r.cc(ccQueueMSIXVector, 2) != NoVector {
		t.Fatal("queue 1 state survived reset")
	}
	resets := r.dev.resets
	r.initDevice(0, true)
	if len(r.dev.activations) != 2 || r.dev.resets != resets+1 {
		t.Fatalf("%d activations, %d resets", len(r.dev.activations), r.dev.resets)
	}
	if len(r.plat.registered()) != 2 {
		t.Fatalf("ioeventfds after re-init: %v", r.plat.registered())
	}
	if err := r.tr.LastError(); err != nil {
		t.Fatal(err)
	}
	if err := r.tr.Close(); err != nil {
		t.Fatal(err)
	}
	if len(r.plat.registered()) != 0 || !r.plat.routes[0].closed {
		t.Fatal("Close left ioeventfds or routes")
	}
}

func TestFeatureNegotiation(t *testing.T) {
	tests := []struct {
		name     string
		features uint64
		ok       bool
	}{
		{"all offered", virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc | 1<<9, true},
		{"version 1 only", virtio.FeatureVersion1, true},
		{"no VERSION_1", virtio.FeatureEventIdx, false},
		{"packed ring is not offered", virtio.FeatureVersion1 | virtio.FeatureRingPacked, false},
		{"unknown bit", virtio.FeatureVersion1 | 1<<50, false},
	}
	for _, tt := range tests {
		r := newRig(t, 1)
		r.wcc(ccDeviceFeatureSelect, 4, 1)
		if hi := r.cc(ccDeviceFeature, 4); hi&(virtio.FeatureRingPacked>>32) != 0 || hi&1 == 0 {
			t.Fatalf("offered high word %#x", hi)
		}
		r.wcc(ccDeviceStatus, 1, uint64(virtio.StatusAcknowledge|virtio.StatusDriver))
		r.wcc(ccDriverFeatureSelect, 4, 0)
		r.wcc(ccDriverFeature, 4, tt.features&0xffffffff)
		r.wcc(ccDriverFeatureSelect, 4, 1)
		r.wcc(ccDriverFeature, 4, tt.features>>32)
		r.wcc(ccDeviceStatus, 1, uint64(virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK))
		if got := r.status()&virtio.StatusFeaturesOK != 0; got != tt.ok {
			t.Errorf("%s: FEATURES_OK = %v, want %v", tt.name, got, tt.ok)
		}
		// The device learns the accepted features at FEATURES_OK, before
		// the driver reads its configuration, and never rejected ones.
		wantNeg := []uint64(nil)
		if tt.ok {
			wantNeg = []uint64{tt.features}
		}
		if !slices.Equal(r.dev.negotiated, wantNeg) {
			t.Errorf("%s: NegotiateFeatures calls %#x, want %#x", tt.name, r.dev.negotiated, wantNeg)
		}
		// DRIVER_OK without FEATURES_OK must not activate the device.
		r.wcc(ccDeviceStatus, 1, uint64(r.status()|virtio.StatusDriverOK))
		if activated := len(r.dev.activations) > 0; activated != tt.ok {
			t.Errorf("%s: activated = %v", tt.name, activated)
		}
	}
}

func TestActivationFailure(t *testing.T) {
	r := newRig(t, 1)
	// A ring outside guest memory.
	r.drivers[0] = mustDriverAt(t, r.mem)
	r.wcc(ccDeviceStatus, 1, 0)
	r.wcc(ccDeviceStatus, 1, uint64(virtio.StatusAcknowledge|virtio.StatusDriver))
	r.wcc(ccDriverFeatureSelect, 4, 1)
	r.wcc(ccDriverFeature, 4, 1)
	r.wcc(ccDeviceStatus, 1, uint64(virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK))
	r.wcc(ccQueueSelect, 2, 0)
	r.wcc(ccQueueDesc, 8, 0x10_0000_0000)
	r.wcc(ccQueueEnable, 2, 1)
	r.wcc(ccDeviceStatus, 1, uint64(virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK))
	if r.status()&virtio.StatusDeviceNeedsReset == 0 || len(r.dev.activations) != 0 {
		t.Fatalf("status %#x, %d activations", r.status(), len(r.dev.activations))
	}
	if err := r.tr.LastError(); !errors.Is(err, ErrActivate) || !errors.Is(err, virtio.ErrQueueConfig) {
		t.Fatalf("LastError = %v", err)
	}
	// Reset clears NEEDS_RESET; a good init then works.
	r.drivers[0] = mustDriverAt(t, r.mem)
	r.initDevice(0, false)
}

func mustDriverAt(t *testing.T, mem *guestmem.Memory) *virtio.MockDriver {
	d, err := virtio.NewMockDriver(virtio.MockConfig{Size: 64, Memory: mem, ArenaStart: 0x100000, ArenaEnd: 0x200000, NoKickFD: true})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Linux's __pci_read_base: decode off, write all ones, read the size,
// restore; then the guest moves BAR0 and the ioeventfds follow.
func TestBARSizingAndMove(t *testing.T) {
	r := newRig(t, 2)
	r.initDevice(0, true)
	cmd := r.cfg16(cfgCommand)
	r.wcfg16(cfgCommand, cmd&^cmdMemory)
	if r.tr.BARs() != nil {
		t.Fatal("BARs listed with memory decoding off")
	}
	if len(r.plat.registered()) != 0 {
		t.Fatal("ioeventfds left registered with memory decoding off")
	}
	for _, b := range []struct {
		reg  uint32
		size uint64
	}{{cfgBAR0, bar0Size}, {cfgBAR2, 0x1000}} {
		lo, hi := r.cfg32(b.reg), r.cfg32(b.reg+4)
		r.wcfg32(b.reg, 0xffffffff)
		r.wcfg32(b.reg+4, 0xffffffff)
		slo, shi := r.cfg32(b.reg), r.cfg32(b.reg+4)
		size := ^(uint64(shi)<<32 | uint64(slo&^0xf)) + 1
		if size != b.size || slo&0xf != lo&0xf {
			t.Errorf("BAR at %#x: sized %#x (flags %#x), want %#x", b.reg, size, slo&0xf, b.size)
		}
		r.wcfg32(b.reg, lo)
		r.wcfg32(b.reg+4, hi)
	}
	const moved = 0x1_2000_0000
	r.wcfg32(cfgBAR0, uint32(moved&0xffffffff))
	r.wcfg32(cfgBAR0+4, uint32(moved>>32))
	r.wcfg16(cfgCommand, cmd)
	bars := r.tr.BARs()
	if len(bars) != 2 || bars[0] != (BAR{0, moved, bar0Size}) || bars[1] != (BAR{2, testBAR2, 0x1000}) {
		t.Fatalf("BARs = %+v", bars)
	}
	var nq [2]byte
	if !r.tr.HandleMMIO(moved+ccNumQueues, nq[:], false) || nq[0] != 2 {
		t.Fatalf("HandleMMIO at the moved BAR0: %v", nq)
	}
	if r.tr.HandleMMIO(testBAR0+ccNumQueues, nq[:], false) {
		t.Fatal("HandleMMIO served the old BAR0 address")
	}
	reg := r.plat.registered()
	a := r.lastActivation()
	for q := range 2 {
		if reg[moved+bar0NotifyOff+4*uint64(q)] != a.Queues[q].Kick {
			t.Fatalf("queue %d ioeventfd not moved: %v", q, reg)
		}
	}
	// Moving with decoding on re-registers at once.
	r.wcfg32(cfgBAR0, uint32(testBAR0))
	r.wcfg32(cfgBAR0+4, 0)
	if reg := r.plat.registered(); reg[testBAR0+bar0NotifyOff] != a.Queues[0].Kick || len(reg) != 2 {
		t.Fatalf("ioeventfds after move back: %v", reg)
	}
}

// HandleMMIO dispatches by address, honours the command register, and
// allocates nothing on the exit path.
func TestHandleMMIO(t *testing.T) {
	r := newRig(t, 2)
	r.initDevice(0, true)
	var b [4]byte
	if !r.tr.HandleMMIO(testBAR2+msixEntryData, b[:], false) || binary.LittleEndian.Uint32(b[:]) != 0x4020 {
		t.Fatalf("MSI-X table through HandleMMIO: %v", b)
	}
	if r.tr.HandleMMIO(testBAR2+0x1000, b[:], false) || r.tr.HandleMMIO(testBAR0-1, b[:], true) {
		t.Fatal("HandleMMIO claimed an address outside the BARs")
	}
	kick := r.lastActivation().Queues[1].Kick
	binary.LittleEndian.PutUint16(b[:], 1)
	if !r.tr.HandleMMIO(testBAR0+bar0NotifyOff+4, b[:2], true) || eventCount(t, kick) != 1 {
		t.Fatal("notify through HandleMMIO did not kick")
	}
	allocs := testing.AllocsPerRun(100, func() {
		r.tr.HandleMMIO(testBAR0+bar0ISROff, b[:1], false)
		r.tr.HandleMMIO(testBAR0+ccQueueSelect, b[:2], true)
		r.tr.HandleMMIO(testBAR0+bar0DeviceOff, b[:4], false)
	})
	if allocs != 0 {
		t.Errorf("HandleMMIO: %v allocations per access", allocs)
	}
	r.wcfg16(cfgCommand, 0)
	if r.tr.HandleMMIO(testBAR0, b[:], false) {
		t.Fatal("HandleMMIO with memory decoding off")
	}
}

// VIRTIO_PCI_CAP_PCI_CFG gives BAR access through configuration space.
func TestPCICfgWindow(t *testing.T) {
	r := newRig(t, 3)
	p := r.caps[capPCICfg]
	r.tr.WriteConfig(p+4, []byte{0})
	r.wcfg32(p+8, ccNumQueues)
	r.wcfg32(p+12, 2)
	if got := r.cfg16(p + 16); got != 3 {
		t.Fatalf("num_queues through the window = %d", got)
	}
	r.wcfg32(p+8, ccQueueSelect)
	r.wcfg16(p+16, 2)
	if r.cc(ccQueueSelect, 2) != 2 {
		t.Fatal("write through the window lost")
	}
}

// No guest access, at any offset or width, panics or escapes.
func TestGuestAccessSweep(t *testing.T) {
	r := newRig(t, 2)
	r.initDevice(0, true)
	buf := make([]byte, 8)
	for _, n := range []int{1, 2, 3, 4, 8, 9} {
		for off := uint64(0); off < bar0Size+0x100; off += 1 {
			r.tr.ReadBAR(0, off, buf[:min(n, 8)])
			r.tr.ReadBAR(2, off, buf[:min(n, 8)])
			r.tr.ReadBAR(1, off, buf[:min(n, 8)])
		}
		for off := uint32(0); off < 300; off++ {
			r.tr.ReadConfig(off, buf[:min(n, 8)])
		}
	}
	for i := range buf {
		buf[i] = 0xff
	}
	for off := uint64(0); off < bar0Size+0x100; off += 2 {
		r.tr.WriteBAR(0, off, buf[:2])
		r.tr.WriteBAR(2, off, buf[:4])
	}
	for off := uint32(0); off < 300; off++ {
		r.tr.WriteConfig(off, buf[:1])
	}
	r.tr.ReadBAR(0, ^uint64(0)-2, buf[:4])
	r.tr.WriteBAR(0, ^uint64(0)-2, buf[:4])
	r.tr.WriteConfig(^uint32(0)-1, buf[:4])
}

// spinDevice raises its queue interrupt from its own goroutine, as a
// device completing requests does, until Reset.
type spinDevice struct {
	fakeDevice
	stop chan struct{}
	done chan struct{}
}

func (d *spinDevice) Activate(a virtio.Activation) error {
	d.stop, d.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(d.done)
		for {
			select {
			case <-d.stop:
				return
			default:
			}
			a.Queues[0].Interrupt.Notify()
			a.ConfigInterrupt.Notify()
		}
	}()
	return d.fakeDevice.Activate(a)
}

func (d *spinDevice) Reset() {
	if d.stop != nil {
		close(d.stop)
		<-d.done
		d.stop = nil
	}
	d.fakeDevice.Reset()
}

// Interrupts raised by device goroutines race with mask changes, ISR reads
// and resets from vCPUs: no deadlock (Reset runs under the transport lock
// while the device is still notifying), no data race (run with -race).
func TestInterruptsRaceWithGuest(t *testing.T) {
	r := newRig(t, 1)
	dev := &spinDevice{fakeDevice: fakeDevice{nq: 1}}
	tr, err := New(dev, r.plat, testBAR0+0x10_0000, testBAR2+0x10_0000)
	if err != nil {
		t.Fatal(err)
	}
	tr.SetMemory(r.mem)
	r.tr, r.dev = tr, &dev.fakeDevice
	defer tr.Close()
	for round := range 6 {
		msix := round%2 == 0
		r.initDevice(0, msix)
		for i := range 200 {
			r.write(2, msixEntryCtrl, 4, uint64(i%2))
			r.read(0, bar0ISROff, 1)
			r.read(2, r.tr.pbaOff, 8)
		}
		r.wcc(ccDeviceStatus, 1, 0)
		if msix {
			// Leave MSI-X off for the INTx round, as a driver reload
			// without MSI-X would.
			r.wcfg16(r.msix+2, 0)
		}
	}
	if len(dev.activations) != 6 {
		t.Fatalf("%d activations", len(dev.activations))
	}
}
