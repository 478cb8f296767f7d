package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/virtio"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// ErrActivate reports that DRIVER_OK could not start the device (a bad
// queue configuration, no guest memory, the device refused). The function
// then shows DEVICE_NEEDS_RESET; LastError returns the details.
var ErrActivate = errors.New("virtio-pci: activating the device failed")

// struct virtio_pci_common_cfg (virtio 1.2, 4.1.4.3).
const (
	ccDeviceFeatureSelect = 0x00
	ccDeviceFeature       = 0x04
	ccDriverFeatureSelect = 0x08
	ccDriverFeature       = 0x0c
	ccConfigMSIXVector    = 0x10
	ccNumQueues           = 0x12
	ccDeviceStatus        = 0x14
	ccConfigGeneration    = 0x15
	ccQueueSelect         = 0x16
	ccQueueSize           = 0x18
	ccQueueMSIXVector     = 0x1a
	ccQueueEnable         = 0x1c
	ccQueueNotifyOff      = 0x1e
	ccQueueDesc           = 0x20
	ccQueueDriver         = 0x28
	ccQueueDevice         = 0x30
	ccQueueNotifyData     = 0x38
	ccQueueReset          = 0x3a
	commonLen             = 0x3c
)

// commonFields lists the fields in offset order, for writes of any width.
var commonFields = [...]struct{ off, size uint64 }{
	{ccDeviceFeatureSelect, 4}, {ccDeviceFeature, 4}, {ccDriverFeatureSelect, 4}, {ccDriverFeature, 4},
	{ccConfigMSIXVector, 2}, {ccNumQueues, 2}, {ccDeviceStatus, 1}, {ccConfigGeneration, 1},
	{ccQueueSelect, 2}, {ccQueueSize, 2}, {ccQueueMSIXVector, 2}, {ccQueueEnable, 2},
	{ccQueueNotifyOff, 2}, {ccQueueDesc, 8}, {ccQueueDriver, 8}, {ccQueueDevice, 8},
	{ccQueueNotifyData, 2}, {ccQueueReset, 2},
}

type queueState struct {
	size                 uint16
	enabled              bool
	desc, driver, device uint64
}

// Transport is one modern virtio-pci function in front of a virtio.Device.
// Its methods are safe for concurrent use by several vCPUs; the device's
// goroutines raise interrupts through the notifiers concurrently as well.
type Transport struct {
	dev       virtio.Device
	plat      Platform
	nq        int
	nvec      int // MSI-X vectors: one per queue plus config
	maxSize   uint16
	cfgSize   uint32
	offered   uint64
	bar2Size  uint64
	pbaOff    uint64
	caps      capLayout
	irq       irqState
	notifiers []notifier // per queue, then config

	generation atomic.Uint32

	mu     sync.Mutex // everything below; never held by interrupt delivery
	mem    *guestmem.Memory
	cfg    [cfgSpaceSize]byte
	wmask  [cfgSpaceSize]byte
	bar    [2]uint64 // current BAR0 and BAR2 addresses
	closed bool

	devFeatureSel, drvFeatureSel uint32
	drvFeatures                  uint64
	status                       uint8
	queueSel                     uint16
	queues                       []queueState
	active                       bool
	kicks                        []int
	regAddr                      []uint64 // where kicks[q] is registered, if regd[q]
	regd                         []bool
	err                          error
}

// New makes a virtio-pci function for dev with its BARs at bar0 (16 KiB:
// common, ISR, device and notify structures) and bar2 (MSI-X table and
// PBA). It allocates one MSI route per vector and one kick eventfd per
// queue. Call SetMemory before the guest runs.
func New(dev virtio.Device, p Platform, bar0, bar2 uint64) (*Transport, error) {
	nq := dev.NumQueues()
	if nq < 1 || nq*NotifyOffMultiplier > bar0Size-bar0NotifyOff {
		return nil, fmt.Errorf("virtio-pci: %d queues not supported", nq)
	}
	maxSize := dev.MaxQueueSize()
	if maxSize == 0 || maxSize&(maxSize-1) != 0 || maxSize > virtio.MaxQueueSize {
		return nil, fmt.Errorf("virtio-pci: max queue size %d is not a power of two up to %d", maxSize, virtio.MaxQueueSize)
	}
	if dev.ConfigSize() > bar0NotifyOff-bar0DeviceOff {
		return nil, fmt.Errorf("virtio-pci: device config of %d bytes too large", dev.ConfigSize())
	}
	t := &Transport{
		dev: dev, plat: p, nq: nq, nvec: nq + 1, maxSize: maxSize,
		cfgSize: dev.ConfigSize(), offered: deviceFeatures(dev),
		queues: make([]queueState, nq), kicks: make([]int, nq),
		regAddr: make([]uint64, nq), regd: make([]bool, nq),
	}
	tableLen := uint64(t.nvec) * msixEntrySize
	t.pbaOff = (tableLen + 7) &^ 7
	end := t.pbaOff + uint64(t.nvec+63)/64*8
	t.bar2Size = 0x1000
	for t.bar2Size < end {
		t.bar2Size <<= 1
	}
	if bar0%bar0Size != 0 || bar2%t.bar2Size != 0 {
		return nil, fmt.Errorf("virtio-pci: BARs at %#x and %#x are not aligned to their sizes %#x and %#x", bar0, bar2, bar0Size, t.bar2Size)
	}
	t.bar = [2]uint64{bar0, bar2}
	for i := range t.kicks {
		t.kicks[i] = -1
	}
	for i := range t.kicks {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.closeFDs()
			return nil, fmt.Errorf("virtio-pci: kick eventfd: %w", err)
		}
		t.kicks[i] = fd
	}
	if err := t.irq.init(p, t.nvec, nq+1); err != nil {
		t.closeFDs()
		return nil, err
	}
	t.notifiers = make([]notifier, nq+1)
	for i := range t.notifiers {
		t.notifiers[i] = notifier{t: t, slot: i, isrBit: isrQueue}
	}
	t.notifiers[nq].isrBit = isrConfig
	t.buildConfig()
	t.resetQueues()
	return t, nil
}

// SetMemory sets the guest memory handed to the device at activation.
func (t *Transport) SetMemory(m *guestmem.Memory) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.mem = m
}

// LastError returns the last host-side or activation failure, or nil.
// Guest accesses cannot return errors, so they are kept here for the VMM to
// report.
func (t *Transport) LastError() error {
	t.mu.Lock()
	err := t.err
	t.mu.Unlock()
	if err != nil {
		return err
	}
	t.irq.mu.Lock()
	defer t.irq.mu.Unlock()
	return t.irq.err
}

// Close resets the device and releases the eventfds and MSI routes.
func (t *Transport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.resetLocked()
	t.closed = true
	t.syncIOEventFDs()
	err := t.err
	t.closeFDs()
	if e := t.irq.close(); err == nil {
		err = e
	}
	return err
}

func (t *Transport) closeFDs() {
	for i, fd := range t.kicks {
		if fd >= 0 {
			unix.Close(fd)
			t.kicks[i] = -1
		}
	}
}

func (t *Transport) resetQueues() {
	for i := range t.queues {
		t.queues[i] = queueState{size: t.maxSize}
	}
}

// resetLocked is a virtio device reset (device_status written 0).
func (t *Transport) resetLocked() {
	t.dev.Reset()
	t.active = false
	t.resetQueues()
	t.syncIOEventFDs()
	var buf [8]byte
	for _, fd := range t.kicks {
		unix.Read(fd, buf[:]) // drain kicks the next driver must not see
	}
	t.status = 0
	t.devFeatureSel, t.drvFeatureSel, t.drvFeatures, t.queueSel = 0, 0, 0, 0
	t.irq.reset()
}

// syncIOEventFDs registers each enabled queue's kick eventfd at its notify
// address while memory decoding is on, following BAR moves.
func (t *Transport) syncIOEventFDs() {
	on := t.command()&cmdMemory != 0 && !t.closed
	for q := range t.queues {
		want := on && t.queues[q].enabled
		addr := t.bar[0] + bar0NotifyOff + uint64(q)*NotifyOffMultiplier
		if t.regd[q] && (!want || t.regAddr[q] != addr) {
			if err := t.plat.UnregisterIOEventFD(t.regAddr[q], t.kicks[q]); err != nil {
				t.err = fmt.Errorf("virtio-pci: queue %d: unregister ioeventfd: %w", q, err)
			}
			t.regd[q] = false
		}
		if want && !t.regd[q] {
			// On failure kicks still arrive, through WriteBAR.
			if err := t.plat.RegisterIOEventFD(addr, t.kicks[q]); err != nil {
				t.err = fmt.Errorf("virtio-pci: queue %d: register ioeventfd at %#x: %w", q, addr, err)
				continue
			}
			t.regAddr[q], t.regd[q] = addr, true
		}
	}
}

// ReadBAR handles a guest read of data at offset in BAR bar (0 or 2).
func (t *Transport) ReadBAR(bar int, offset uint64, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.readBAR(bar, offset, data)
}

// WriteBAR handles a guest write of data at offset in BAR bar (0 or 2).
func (t *Transport) WriteBAR(bar int, offset uint64, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.writeBAR(bar, offset, data)
}

// HandleMMIO serves a guest access at guest physical address addr if it
// falls inside one of the BARs (with memory decoding on) and reports whether
// it did. It allocates nothing, so a bus can call it on every MMIO exit
// instead of caching BARs.
func (t *Transport) HandleMMIO(addr uint64, data []byte, write bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || t.command()&cmdMemory == 0 {
		return false
	}
	for i, size := range [2]uint64{bar0Size, t.bar2Size} {
		base := t.bar[i]
		if addr < base || addr-base >= size {
			continue
		}
		if write {
			t.writeBAR(2*i, addr-base, data)
		} else {
			t.readBAR(2*i, addr-base, data)
		}
		return true
	}
	return false
}

// inBAR reports whether an access of n (1 to 8) bytes at off lies inside
// BAR bar; everything else is dropped (reads return zeros).
func (t *Transport) inBAR(bar int, off, n uint64) bool {
	var size uint64
	switch bar {
	case 0:
		size = bar0Size
	case 2:
		size = t.bar2Size
	default:
		return false
	}
	return n >= 1 && n <= 8 && off < size && n <= size-off
}

func (t *Transport) readBAR(bar int, off uint64, data []byte) {
	clear(data)
	n := uint64(len(data))
	if t.closed || !t.inBAR(bar, off, n) {
		return
	}
	switch {
	case bar == 2:
		t.irq.readBAR2(off, data, t.pbaOff)
	case off+n <= bar0CommonOff+commonLen:
		var img [commonLen]byte
		t.commonImage(&img)
		copy(data, img[off:])
	case off == bar0ISROff:
		data[0] = t.irq.readISR()
	case off >= bar0DeviceOff && off+n <= bar0DeviceOff+uint64(t.cfgSize):
		t.dev.ReadConfig(uint32(off-bar0DeviceOff), data)
	}
}

func (t *Transport) writeBAR(bar int, off uint64, data []byte) {
	n := uint64(len(data))
	if t.closed || !t.inBAR(bar, off, n) {
		return
	}
	switch {
	case bar == 2:
		t.irq.writeBAR2(off, data)
	case off+n <= bar0CommonOff+commonLen:
		t.writeCommon(off, data)
	case off >= bar0DeviceOff && off+n <= bar0DeviceOff+uint64(t.cfgSize):
		t.dev.WriteConfig(uint32(off-bar0DeviceOff), data)
	case off >= bar0NotifyOff && off < bar0NotifyOff+uint64(t.nq)*NotifyOffMultiplier:
		// A notify that was not caught by an ioeventfd: signal the same fd.
		q := (off - bar0NotifyOff) / NotifyOffMultiplier
		if _, err := unix.Write(t.kicks[q], eventOne[:]); err != nil {
			t.err = fmt.Errorf("virtio-pci: queue %d: kick: %w", q, err)
		}
	}
}

// commonImage renders the common configuration structure.
func (t *Transport) commonImage(b *[commonLen]byte) {
	le := binary.LittleEndian
	le.PutUint32(b[ccDeviceFeatureSelect:], t.devFeatureSel)
	if t.devFeatureSel < 2 {
		le.PutUint32(b[ccDeviceFeature:], uint32(t.offered>>(32*t.devFeatureSel)))
	}
	le.PutUint32(b[ccDriverFeatureSelect:], t.drvFeatureSel)
	if t.drvFeatureSel < 2 {
		le.PutUint32(b[ccDriverFeature:], uint32(t.drvFeatures>>(32*t.drvFeatureSel)))
	}
	le.PutUint16(b[ccConfigMSIXVector:], t.irq.vector(t.nq))
	le.PutUint16(b[ccNumQueues:], uint16(t.nq))
	b[ccDeviceStatus] = t.status
	b[ccConfigGeneration] = byte(t.generation.Load())
	le.PutUint16(b[ccQueueSelect:], t.queueSel)
	if q := int(t.queueSel); q < t.nq {
		s := &t.queues[q]
		le.PutUint16(b[ccQueueSize:], s.size)
		le.PutUint16(b[ccQueueMSIXVector:], t.irq.vector(q))
		if s.enabled {
			le.PutUint16(b[ccQueueEnable:], 1)
		}
		le.PutUint16(b[ccQueueNotifyOff:], uint16(q))
		le.PutUint64(b[ccQueueDesc:], s.desc)
		le.PutUint64(b[ccQueueDriver:], s.driver)
		le.PutUint64(b[ccQueueDevice:], s.device)
	} else {
		le.PutUint16(b[ccQueueMSIXVector:], NoVector)
	}
}

// writeCommon merges a write of any width into the common configuration
// and applies each field it touched.
func (t *Transport) writeCommon(off uint64, data []byte) {
	var img [commonLen]byte
	t.commonImage(&img)
	end := off + uint64(len(data))
	copy(img[off:end], data)
	le := binary.LittleEndian
	for _, f := range commonFields {
		if f.off >= end || off >= f.off+f.size {
			continue
		}
		b := img[f.off:]
		switch f.off {
		case ccDeviceFeatureSelect:
			t.devFeatureSel = le.Uint32(b)
		case ccDriverFeatureSelect:
			t.drvFeatureSel = le.Uint32(b)
		case ccDriverFeature:
			if t.status&virtio.StatusFeaturesOK == 0 && t.drvFeatureSel < 2 {
				shift := 32 * t.drvFeatureSel
				t.drvFeatures = t.drvFeatures&^(0xffffffff<<shift) | uint64(le.Uint32(b))<<shift
			}
		case ccConfigMSIXVector:
			t.irq.setVector(t.nq, le.Uint16(b))
		case ccDeviceStatus:
			t.setStatus(b[0])
		case ccQueueSelect:
			t.queueSel = le.Uint16(b)
		case ccQueueSize, ccQueueMSIXVector, ccQueueEnable, ccQueueDesc, ccQueueDriver, ccQueueDevice:
			t.writeQueueField(f.off, b)
		}
	}
}

// writeQueueField sets a field of the selected queue. Once a queue is
// enabled its configuration is fixed until reset (virtio 1.2, 4.1.4.3.2).
func (t *Transport) writeQueueField(field uint64, b []byte) {
	q := int(t.queueSel)
	if q >= t.nq {
		return
	}
	le := binary.LittleEndian
	s := &t.queues[q]
	if field == ccQueueMSIXVector {
		t.irq.setVector(q, le.Uint16(b))
		return
	}
	if s.enabled {
		return
	}
	switch field {
	case ccQueueSize:
		s.size = le.Uint16(b)
	case ccQueueDesc:
		s.desc = le.Uint64(b)
	case ccQueueDriver:
		s.driver = le.Uint64(b)
	case ccQueueDevice:
		s.device = le.Uint64(b)
	case ccQueueEnable:
		if le.Uint16(b) == 1 {
			s.enabled = true
			t.syncIOEventFDs()
		}
	}
}

// setStatus applies a device_status write.
func (t *Transport) setStatus(v uint8) {
	if v == 0 {
		t.resetLocked()
		return
	}
	old := t.status
	if v&virtio.StatusFeaturesOK != 0 && old&virtio.StatusFeaturesOK == 0 {
		// FEATURES_OK sticks only for a subset of what was offered that
		// includes VERSION_1; the driver reads it back to find out.
		if t.drvFeatures&^t.offered != 0 || t.drvFeatures&virtio.FeatureVersion1 == 0 {
			v &^= virtio.StatusFeaturesOK
		} else if n, ok := t.dev.(virtio.FeatureNegotiator); ok {
			// Drivers read device configuration between FEATURES_OK and
			// DRIVER_OK; it must already reflect the negotiated features.
			n.NegotiateFeatures(t.drvFeatures)
		}
	}
	t.status = v | old&virtio.StatusDeviceNeedsReset
	if v&virtio.StatusDriverOK != 0 && old&virtio.StatusDriverOK == 0 && !t.active {
		if err := t.activate(); err != nil {
			t.err = err
			t.status |= virtio.StatusDeviceNeedsReset
			t.notifiers[t.nq].Notify()
		}
	}
}

// activate hands the enabled queues to the device after DRIVER_OK.
func (t *Transport) activate() error {
	if t.status&virtio.StatusFeaturesOK == 0 {
		return fmt.Errorf("%w: DRIVER_OK without FEATURES_OK", ErrActivate)
	}
	if t.mem == nil {
		return fmt.Errorf("%w: no guest memory (SetMemory was not called)", ErrActivate)
	}
	a := virtio.Activation{
		Memory:          t.mem,
		Features:        t.drvFeatures,
		Queues:          make([]virtio.QueueBinding, t.nq),
		ConfigInterrupt: &t.notifiers[t.nq],
	}
	for i, s := range t.queues {
		a.Queues[i].Kick = -1
		if !s.enabled {
			continue
		}
		if s.size > t.maxSize {
			return fmt.Errorf("%w: queue %d: size %d above the maximum %d", ErrActivate, i, s.size, t.maxSize)
		}
		q, err := virtio.NewQueue(t.mem, virtio.QueueConfig{
			Size: s.size, DescTable: s.desc, AvailRing: s.driver, UsedRing: s.device,
			EventIdx:     t.drvFeatures&virtio.FeatureEventIdx != 0,
			IndirectDesc: t.drvFeatures&virtio.FeatureIndirectDesc != 0,
		})
		if err != nil {
			return fmt.Errorf("%w: queue %d: %w", ErrActivate, i, err)
		}
		a.Queues[i] = virtio.QueueBinding{Queue: q, Kick: t.kicks[i], Interrupt: &t.notifiers[i]}
	}
	if err := t.dev.Activate(a); err != nil {
		return fmt.Errorf("%w: %w", ErrActivate, err)
	}
	t.active = true
	return nil
}
