package uring

// This file holds every use of package unsafe in the package: the
// io_uring_setup call (which takes a pointer to the params struct), the
// layout assertions for the structs shared with the kernel, and the views
// of the mmapped ring memory as typed Go values. The mappings are not Go
// heap memory, so the garbage collector never moves or frees them; they
// live until Close unmaps them.

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Compile-time layout checks: each index is the constant 0 only when the
// struct has the kernel's size; any other size is a compile error (out of
// range index, or a constant that overflows uintptr when too small).
var (
	_ = [1]struct{}{}[unsafe.Sizeof(sqe{})-64]           // struct io_uring_sqe
	_ = [1]struct{}{}[unsafe.Sizeof(CQE{})-16]           // struct io_uring_cqe
	_ = [1]struct{}{}[unsafe.Sizeof(sqringOffsets{})-40] // struct io_sqring_offsets
	_ = [1]struct{}{}[unsafe.Sizeof(cqringOffsets{})-40] // struct io_cqring_offsets
	_ = [1]struct{}{}[unsafe.Sizeof(params{})-120]       // struct io_uring_params
)

// setup calls io_uring_setup(entries, p) and returns the ring fd.
func setup(entries uint32, p *params) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// registerFD calls io_uring_register(ringFD, op, &fd, 1): the operations
// that take one int32 argument.
func registerFD(ringFD int, op uintptr, fd int) error {
	arg := int32(fd)
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(ringFD), op, uintptr(unsafe.Pointer(&arg)), 1, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// u32At returns a pointer to the uint32 at byte offset off of m.
func u32At(m []byte, off uint32) *uint32 {
	return (*uint32)(unsafe.Pointer(&m[off]))
}

// u32sAt returns the n uint32s starting at byte offset off of m.
func u32sAt(m []byte, off, n uint32) []uint32 {
	_ = m[uint64(off)+uint64(n)*4-1] // bounds check
	return unsafe.Slice((*uint32)(unsafe.Pointer(&m[off])), n)
}

// sqesAt returns the n SQEs that make up m.
func sqesAt(m []byte, n uint32) []sqe {
	_ = m[uint64(n)*uint64(unsafe.Sizeof(sqe{}))-1] // bounds check
	return unsafe.Slice((*sqe)(unsafe.Pointer(&m[0])), n)
}

// cqesAt returns the n CQEs starting at byte offset off of m.
func cqesAt(m []byte, off, n uint32) []CQE {
	_ = m[uint64(off)+uint64(n)*uint64(unsafe.Sizeof(CQE{}))-1] // bounds check
	return unsafe.Slice((*CQE)(unsafe.Pointer(&m[off])), n)
}

// iovAddr returns the address of iov's first element, or 0 when empty.
// The caller keeps iov reachable (Ring.keep) so that it stays on the heap
// and alive until the kernel has consumed it.
func iovAddr(iov []unix.Iovec) uint64 {
	if len(iov) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&iov[0])))
}
