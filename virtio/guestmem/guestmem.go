// Package guestmem is guest physical memory as the host sees it: a set of
// host mappings, each standing for one range of guest physical addresses.
//
// It is the only place in flushvm where a guest address becomes a host
// pointer. Every accessor checks that the whole range lies inside one mapped
// region and returns ErrOutOfRange otherwise; it must never hand out memory
// the guest does not own, and never panic on a guest-supplied address.
//
// Memory that another process shares with us (a vhost-user frontend's
// memfd) can lose its backing under the mapping, which no bounds check
// prevents. Every accessor here turns the resulting SIGBUS into an error
// wrapping ErrFault instead of a dead process; bytes from Slice are
// touched by the caller, so goroutines that use them run under Guard.
package guestmem

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"sort"
)

// ErrOutOfRange reports a guest address range that is not wholly inside one
// region of guest memory. It is a guest fault, not a host fault.
var ErrOutOfRange = errors.New("guest address range outside guest memory")

// Region is one contiguous range of guest physical memory and its host
// mapping. Host must stay mapped for as long as the Memory is in use.
type Region struct {
	// GuestAddr is the guest physical address of Host[0].
	GuestAddr uint64
	// Host is the host mapping of the region; len(Host) is its size.
	Host []byte
}

// End returns the first guest physical address after the region.
func (r Region) End() uint64 { return r.GuestAddr + uint64(len(r.Host)) }

// Memory is guest physical memory: non-overlapping regions sorted by guest
// address. It is safe for concurrent use; it never changes after New.
type Memory struct {
	regions []Region
	// onFault, when set, hears of every fault Guard recovers.
	onFault func(error)
}

// New returns the memory made of regions. Regions must be non-empty and must
// not overlap or wrap around the 64-bit address space.
func New(regions ...Region) (*Memory, error) {
	rs := append([]Region(nil), regions...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].GuestAddr < rs[j].GuestAddr })
	for i, r := range rs {
		if len(r.Host) == 0 {
			return nil, fmt.Errorf("guestmem: region at %#x is empty", r.GuestAddr)
		}
		if r.End() < r.GuestAddr {
			return nil, fmt.Errorf("guestmem: region at %#x wraps the address space", r.GuestAddr)
		}
		if i > 0 && rs[i-1].End() > r.GuestAddr {
			return nil, fmt.Errorf("guestmem: regions at %#x and %#x overlap", rs[i-1].GuestAddr, r.GuestAddr)
		}
	}
	return &Memory{regions: rs}, nil
}

// Regions returns a copy of the region list, sorted by guest address.
func (m *Memory) Regions() []Region { return append([]Region(nil), m.regions...) }

// Size returns the total number of bytes of guest memory.
func (m *Memory) Size() uint64 {
	var n uint64
	for _, r := range m.regions {
		n += uint64(len(r.Host))
	}
	return n
}

// Slice returns the host bytes backing guest range [addr, addr+length). The
// range must lie inside a single region. The result aliases guest memory (no
// copy) and its capacity is clipped to length, so appending to it cannot
// reach memory past the range.
func (m *Memory) Slice(addr, length uint64) ([]byte, error) {
	end := addr + length
	if end < addr {
		return nil, fmt.Errorf("%w: [%#x, +%#x) wraps", ErrOutOfRange, addr, length)
	}
	// Binary search: the last region starting at or before addr.
	i := sort.Search(len(m.regions), func(i int) bool { return m.regions[i].GuestAddr > addr }) - 1
	if i < 0 {
		return nil, fmt.Errorf("%w: [%#x, +%#x)", ErrOutOfRange, addr, length)
	}
	r := m.regions[i]
	if end > r.End() {
		return nil, fmt.Errorf("%w: [%#x, +%#x)", ErrOutOfRange, addr, length)
	}
	off := addr - r.GuestAddr
	return r.Host[off : off+length : off+length], nil
}

// ReadAt copies len(p) bytes of guest memory at addr into p.
func (m *Memory) ReadAt(p []byte, addr uint64) (err error) {
	b, err := m.Slice(addr, uint64(len(p)))
	if err != nil {
		return err
	}
	defer m.recoverFault(debug.SetPanicOnFault(true), &err)
	copy(p, b)
	return nil
}

// WriteAt copies p into guest memory at addr.
func (m *Memory) WriteAt(p []byte, addr uint64) (err error) {
	b, err := m.Slice(addr, uint64(len(p)))
	if err != nil {
		return err
	}
	defer m.recoverFault(debug.SetPanicOnFault(true), &err)
	copy(b, p)
	return nil
}

// Uint16 reads a little-endian uint16 at addr (no ordering guarantee).
func (m *Memory) Uint16(addr uint64) (v uint16, err error) {
	b, err := m.Slice(addr, 2)
	if err != nil {
		return 0, err
	}
	defer m.recoverFault(debug.SetPanicOnFault(true), &err)
	return binary.LittleEndian.Uint16(b), nil
}

// Uint32 reads a little-endian uint32 at addr (no ordering guarantee).
func (m *Memory) Uint32(addr uint64) (v uint32, err error) {
	b, err := m.Slice(addr, 4)
	if err != nil {
		return 0, err
	}
	defer m.recoverFault(debug.SetPanicOnFault(true), &err)
	return binary.LittleEndian.Uint32(b), nil
}

// Uint64 reads a little-endian uint64 at addr (no ordering guarantee).
func (m *Memory) Uint64(addr uint64) (v uint64, err error) {
	b, err := m.Slice(addr, 8)
	if err != nil {
		return 0, err
	}
	defer m.recoverFault(debug.SetPanicOnFault(true), &err)
	return binary.LittleEndian.Uint64(b), nil
}

// PutUint16 writes v little-endian at addr (no ordering guarantee).
func (m *Memory) PutUint16(addr uint64, v uint16) (err error) {
	b, err := m.Slice(addr, 2)
	if err != nil {
		return err
	}
	defer m.recoverFault(debug.SetPanicOnFault(true), &err)
	binary.LittleEndian.PutUint16(b, v)
	return nil
}

// PutUint32 writes v little-endian at addr (no ordering guarantee).
func (m *Memory) PutUint32(addr uint64, v uint32) (err error) {
	b, err := m.Slice(addr, 4)
	if err != nil {
		return err
	}
	defer m.recoverFault(debug.SetPanicOnFault(true), &err)
	binary.LittleEndian.PutUint32(b, v)
	return nil
}

// PutUint64 writes v little-endian at addr (no ordering guarantee).
func (m *Memory) PutUint64(addr uint64, v uint64) (err error) {
	b, err := m.Slice(addr, 8)
	if err != nil {
		return err
	}
	defer m.recoverFault(debug.SetPanicOnFault(true), &err)
	binary.LittleEndian.PutUint64(b, v)
	return nil
}
