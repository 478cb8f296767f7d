package guestmem

import (
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"unsafe"
)

// Go has no 16-bit atomics, yet virtqueue indices are 16 bits wide and shared
// with a guest running on other CPUs. We therefore operate on the naturally
// aligned 32-bit word that contains the 16-bit field:
//
//   - LoadUint16Acquire is an atomic 32-bit load of that word. Go's atomics are
//     sequentially consistent, so no later memory access (for example reading
//     the descriptors the new index publishes) is moved before it, by the
//     compiler or the CPU.
//   - StoreUint16Release is a compare-and-swap loop on that word that changes
//     only our 16 bits. Every earlier write (used elements) is visible before
//     it, and the other half-word, which may belong to the guest, is never
//     overwritten with a stale value. On amd64 the CAS is a LOCK CMPXCHG, a
//     full barrier, which is also the store-load fence that event-index
//     notification suppression needs between publishing used->idx and reading
//     used_event.
//
// The 32-bit word must lie inside the same region as the field; virtqueue
// rings are at least 2-byte aligned and regions are page-aligned in practice,
// but the check is made anyway and fails with ErrOutOfRange.

func (m *Memory) word32(addr uint64) (*uint32, uint, error) {
	if addr%2 != 0 {
		return nil, 0, fmt.Errorf("%w: unaligned 16-bit field at %#x", ErrOutOfRange, addr)
	}
	b, err := m.Slice(addr&^3, 4)
	if err != nil {
		return nil, 0, err
	}
	p := unsafe.Pointer(unsafe.SliceData(b))
	if uintptr(p)%4 != 0 {
		return nil, 0, fmt.Errorf("guestmem: host mapping of %#x is not 4-byte aligned", addr)
	}
	// Little-endian: the field at byte offset 2 is the high half.
	return (*uint32)(p), uint(addr&2) * 8, nil
}

// LoadUint16Acquire atomically reads the little-endian uint16 at addr (which
// must be 2-byte aligned) with acquire ordering.
func (m *Memory) LoadUint16Acquire(addr uint64) (v uint16, err error) {
	w, shift, err := m.word32(addr)
	if err != nil {
		return 0, err
	}
	defer m.recoverFault(debug.SetPanicOnFault(true), &err)
	return uint16(atomic.LoadUint32(w) >> shift), nil
}

// StoreUint16Release atomically writes the little-endian uint16 at addr (which
// must be 2-byte aligned) with release ordering, leaving the neighbouring
// 16 bits untouched. It is also a full memory barrier.
func (m *Memory) StoreUint16Release(addr uint64, v uint16) (err error) {
	w, shift, err := m.word32(addr)
	if err != nil {
		return err
	}
	defer m.recoverFault(debug.SetPanicOnFault(true), &err)
	mask := uint32(0xffff) << shift
	for {
		old := atomic.LoadUint32(w)
		nw := old&^mask | uint32(v)<<shift
		if atomic.CompareAndSwapUint32(w, old, nw) {
			return nil
		}
	}
}

// Fence is a full memory barrier (store-load included).
func Fence() {
	atomic.AddUint32(&fenceWord, 0)
}

var fenceWord uint32
