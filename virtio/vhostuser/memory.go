package vhostuser

import (
	"fmt"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/virtio/guestmem"
)

// mapping is one frontend memory region mapped into this process.
type mapping struct {
	memRegion
	// whole is the mmap of the fd from offset 0 to MmapOffset+Size (the
	// offset need not be page aligned, so the map starts at 0).
	whole []byte
	// sealed records whether the frontend sealed the fd against shrinking;
	// without the seal a frontend could truncate it under us.
	sealed bool
}

// memoryTable is the frontend's memory as the backend sees it: guest
// physical memory (for descriptor buffers) plus the frontend's virtual
// addresses of the same regions (for ring addresses).
type memoryTable struct {
	maps []mapping // sorted by UserAddr
	mem  *guestmem.Memory
}

// mapMemory validates regions against their descriptors and maps them. It
// takes ownership of fds (closing them all, mapped or not).
func mapMemory(regions []memRegion, fds []int) (*memoryTable, error) {
	defer closeFDs(fds)
	if len(fds) != len(regions) {
		return nil, fmt.Errorf("%w: %d regions but %d descriptors", ErrBadFD, len(regions), len(fds))
	}
	t := &memoryTable{}
	ok := false
	defer func() {
		if !ok {
			t.unmap()
		}
	}()
	for i, r := range regions {
		if r.Size == 0 {
			return nil, fmt.Errorf("%w: region %d is empty", ErrBadMemory, i)
		}
		if r.GuestAddr+r.Size < r.GuestAddr || r.UserAddr+r.Size < r.UserAddr || r.MmapOffset+r.Size < r.MmapOffset {
			return nil, fmt.Errorf("%w: region %d (gpa %#x uva %#x offset %#x size %#x) wraps", ErrBadMemory, i, r.GuestAddr, r.UserAddr, r.MmapOffset, r.Size)
		}
		length := r.MmapOffset + r.Size
		if length > 1<<46 {
			return nil, fmt.Errorf("%w: region %d maps %#x bytes", ErrBadMemory, i, length)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fds[i], &st); err != nil {
			return nil, fmt.Errorf("%w: region %d: fstat: %v", ErrBadFD, i, err)
		}
		// Touching a shared mapping past the end of its file raises SIGBUS,
		// which would kill the process, so the file must cover the range.
		// Only regular files (memfd, tmpfs, hugetlbfs) back guest memory.
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil, fmt.Errorf("%w: region %d: descriptor is not a regular file or memfd (mode %#o)", ErrBadMemory, i, st.Mode)
		}
		if uint64(st.Size) < length {
			return nil, fmt.Errorf("%w: region %d needs %#x bytes of its file, which has %#x", ErrBadMemory, i, length, st.Size)
		}
		b, err := unix.Mmap(fds[i], 0, int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return nil, fmt.Errorf("%w: region %d: mmap %#x bytes: %v", ErrBadMemory, i, length, err)
		}
		seals, err := unix.FcntlInt(uintptr(fds[i]), unix.F_GET_SEALS, 0)
		t.maps = append(t.maps, mapping{memRegion: r, whole: b, sealed: err == nil && seals&unix.F_SEAL_SHRINK != 0})
	}
	sort.Slice(t.maps, func(i, j int) bool { return t.maps[i].UserAddr < t.maps[j].UserAddr })
	for i := 1; i < len(t.maps); i++ {
		if p := t.maps[i-1]; p.UserAddr+p.Size > t.maps[i].UserAddr {
			return nil, fmt.Errorf("%w: regions at frontend addresses %#x and %#x overlap", ErrBadMemory, p.UserAddr, t.maps[i].UserAddr)
		}
	}
	gr := make([]guestmem.Region, len(t.maps))
	for i, m := range t.maps {
		gr[i] = guestmem.Region{GuestAddr: m.GuestAddr, Host: m.whole[m.MmapOffset:m.end()]}
	}
	mem, err := guestmem.New(gr...)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadMemory, err)
	}
	t.mem = mem
	ok = true
	return t, nil
}

// end is the offset in whole just past the region.
func (m mapping) end() uint64 { return m.MmapOffset + m.Size }

// unsealed reports how many regions a frontend could shrink under us.
func (t *memoryTable) unsealed() int {
	n := 0
	for _, m := range t.maps {
		if !m.sealed {
			n++
		}
	}
	return n
}

// translate turns a frontend virtual address into a guest physical one,
// checking that [uva, uva+size) lies in one region.
func (t *memoryTable) translate(uva, size uint64) (uint64, error) {
	i := sort.Search(len(t.maps), func(i int) bool { return t.maps[i].UserAddr > uva }) - 1
	if i < 0 {
		return 0, fmt.Errorf("%w: frontend address %#x is in no memory region", ErrBadRing, uva)
	}
	m := t.maps[i]
	off := uva - m.UserAddr
	if off >= m.Size || size > m.Size-off {
		return 0, fmt.Errorf("%w: frontend range [%#x, +%#x) is not inside one memory region", ErrBadRing, uva, size)
	}
	return m.GuestAddr + off, nil
}

// unmap releases every mapping. The device must no longer touch them.
func (t *memoryTable) unmap() {
	for _, m := range t.maps {
		unix.Munmap(m.whole)
	}
	t.maps, t.mem = nil, nil
}
