package pci

import (
	"encoding/binary"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// NoVector is VIRTIO_MSI_NO_VECTOR: no MSI-X vector assigned.
const NoVector = 0xffff

// ISR status bits (virtio 1.2, 4.1.4.5).
const (
	isrQueue  = 1
	isrConfig = 2
)

// MSI-X table entry layout (PCI 3.0, 6.8.2.6).
const (
	msixEntrySize   = 16
	msixTableOff    = 0
	msixVectorMask  = 1
	msixEntryAddrLo = 0
	msixEntryAddrHi = 4
	msixEntryData   = 8
	msixEntryCtrl   = 12
)

type msixEntry struct {
	addr  uint64
	data  uint32
	ctrl  uint32
	dirty bool // addr/data changed since the route was last Set
}

// irqState is the function's interrupt machinery: the MSI-X table and PBA,
// the per-queue vector assignment, the ISR and the INTx line. It has its own
// lock because device goroutines raise interrupts while vCPUs access the
// function; nothing holding it calls into the device.
type irqState struct {
	mu      sync.Mutex
	plat    Platform
	routes  []MSIRoute
	table   []msixEntry
	pending []bool
	// vectors[q] is queue q's vector; vectors[len-1] is the config vector.
	vectors      []uint16
	enabled      bool
	funcMask     bool
	isr          uint8
	intxDisabled bool
	intxAsserted bool
	err          error // last host fault while delivering
}

var eventOne = [8]byte{1}

func (s *irqState) init(p Platform, nvec, nslots int) error {
	s.plat = p
	s.table = make([]msixEntry, nvec)
	s.pending = make([]bool, nvec)
	s.vectors = make([]uint16, nslots)
	for i := range s.table {
		// Masked, and routed on first use even if never programmed.
		s.table[i] = msixEntry{ctrl: msixVectorMask, dirty: true}
	}
	for i := range s.vectors {
		s.vectors[i] = NoVector
	}
	for range nvec {
		r, err := p.NewMSIRoute()
		if err != nil {
			s.close()
			return fmt.Errorf("virtio-pci: MSI route: %w", err)
		}
		s.routes = append(s.routes, r)
	}
	return nil
}

func (s *irqState) close() error {
	var first error
	for _, r := range s.routes {
		if err := r.Close(); err != nil && first == nil {
			first = err
		}
	}
	s.routes = nil
	return first
}

// raise signals slot's vector, or the ISR bit and INTx without MSI-X.
func (s *irqState) raise(slot int, isrBit uint8) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.enabled {
		v := int(s.vectors[slot])
		if v >= len(s.table) || v >= len(s.routes) {
			return nil // VIRTIO_MSI_NO_VECTOR: the driver wants no interrupt
		}
		if s.funcMask || s.table[v].ctrl&msixVectorMask != 0 {
			s.pending[v] = true
			return nil
		}
		return s.fire(v)
	}
	s.isr |= isrBit
	return s.updateINTx()
}

// fire injects vector v. Caller holds mu.
func (s *irqState) fire(v int) error {
	e := &s.table[v]
	r := s.routes[v]
	if e.dirty {
		if err := r.Set(e.addr, e.data); err != nil {
			s.err = fmt.Errorf("virtio-pci: MSI-X vector %d: %w", v, err)
			return s.err
		}
		e.dirty = false
	}
	if _, err := unix.Write(r.EventFD(), eventOne[:]); err != nil {
		s.err = fmt.Errorf("virtio-pci: MSI-X vector %d irqfd: %w", v, err)
		return s.err
	}
	return nil
}

// deliverPending fires every pending vector that is no longer masked.
// Caller holds mu.
func (s *irqState) deliverPending() {
	if !s.enabled || s.funcMask {
		return
	}
	for v, p := range s.pending {
		if p && s.table[v].ctrl&msixVectorMask == 0 {
			s.pending[v] = false
			s.fire(v) // a failure is recorded in s.err
		}
	}
}

func (s *irqState) updateINTx() error {
	want := s.isr != 0 && !s.intxDisabled && !s.enabled
	if want == s.intxAsserted {
		return nil
	}
	if err := s.plat.SetINTx(want); err != nil {
		s.err = fmt.Errorf("virtio-pci: INTx: %w", err)
		return s.err
	}
	s.intxAsserted = want
	return nil
}

// setControl applies the MSI-X capability's enable and function-mask bits.
func (s *irqState) setControl(enabled, funcMask bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.enabled, s.funcMask = enabled, funcMask
	s.updateINTx()
	s.deliverPending()
}

func (s *irqState) setINTxDisabled(d bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.intxDisabled = d
	s.updateINTx()
}

// readISR returns the ISR and clears it, deasserting INTx.
func (s *irqState) readISR() uint8 {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.isr
	s.isr = 0
	s.updateINTx()
	return v
}

// setVector assigns vector v to slot, or NoVector if v is out of range; it
// returns what was stored, which the driver reads back to check.
func (s *irqState) setVector(slot int, v uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if int(v) >= len(s.table) {
		v = NoVector
	}
	s.vectors[slot] = v
}

func (s *irqState) vector(slot int) uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vectors[slot]
}

// reset is the virtio device reset's share: vectors unassigned, ISR clear.
// The MSI-X table is PCI state and survives.
func (s *irqState) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.vectors {
		s.vectors[i] = NoVector
	}
	s.isr = 0
	s.updateINTx()
}

// readBAR2 reads the MSI-X table or PBA.
func (s *irqState) readBAR2(off uint64, data []byte, pbaOff uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range data {
		data[i] = s.bar2Byte(off+uint64(i), pbaOff)
	}
}

func (s *irqState) bar2Byte(off, pbaOff uint64) byte {
	tableEnd := uint64(len(s.table)) * msixEntrySize
	switch {
	case off < tableEnd:
		var b [msixEntrySize]byte
		s.entryBytes(int(off/msixEntrySize), &b)
		return b[off%msixEntrySize]
	case off >= pbaOff && off < pbaOff+uint64(len(s.pending)+7)/8:
		var v byte
		base := int(off-pbaOff) * 8
		for bit := range 8 {
			if base+bit < len(s.pending) && s.pending[base+bit] {
				v |= 1 << bit
			}
		}
		return v
	}
	return 0
}

func (s *irqState) entryBytes(i int, b *[msixEntrySize]byte) {
	e := &s.table[i]
	binary.LittleEndian.PutUint64(b[msixEntryAddrLo:], e.addr)
	binary.LittleEndian.PutUint32(b[msixEntryData:], e.data)
	binary.LittleEndian.PutUint32(b[msixEntryCtrl:], e.ctrl)
}

// writeBAR2 writes the MSI-X table (the PBA is read-only).
func (s *irqState) writeBAR2(off uint64, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tableEnd := uint64(len(s.table)) * msixEntrySize
	for len(data) > 0 && off < tableEnd {
		i := int(off / msixEntrySize)
		o := off % msixEntrySize
		n := min(uint64(len(data)), msixEntrySize-o)
		var b [msixEntrySize]byte
		s.entryBytes(i, &b)
		copy(b[o:o+n], data[:n])
		e := &s.table[i]
		addr := binary.LittleEndian.Uint64(b[msixEntryAddrLo:])
		dat := binary.LittleEndian.Uint32(b[msixEntryData:])
		if addr != e.addr || dat != e.data {
			e.addr, e.data, e.dirty = addr, dat, true
		}
		// Only the mask bit of vector control is writable.
		e.ctrl = binary.LittleEndian.Uint32(b[msixEntryCtrl:]) & msixVectorMask
		off += n
		data = data[n:]
	}
	s.deliverPending()
}

// notifier is the virtio.Notifier of one queue (or of the configuration).
type notifier struct {
	t      *Transport
	slot   int
	isrBit uint8
}

// Notify raises the queue's (or configuration's) interrupt.
func (n *notifier) Notify() error {
	if n.isrBit == isrConfig {
		n.t.generation.Add(1)
	}
	return n.t.irq.raise(n.slot, n.isrBit)
}
