package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues an ioctl whose argument is an integer (or nothing).
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if errno == unix.EINTR && req != kvmRun {
			continue
		}
		if errno != 0 {
			return r, errno
		}
		return r, nil
	}
}

// ioctlPtr issues an ioctl whose argument is a pointer to p. The pointer is
// passed directly in the syscall expression, so the object stays alive and
// unmoved for the call.
func ioctlPtr[T any](fd int, req uintptr, p *T) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(p)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// ioctlBuf issues an ioctl whose argument is a variable-length kernel
// structure (a header followed by entries) held in b.
func ioctlBuf(fd int, req uintptr, b []byte) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(unsafe.SliceData(b))))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// hostAddr is the host virtual address of mem, which must be a mapping that
// outlives its registration with KVM (an mmap, never Go heap memory).
func hostAddr(mem []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem))))
}

// bytesOf views the array of entries as raw bytes for a variable-length
// ioctl structure.
func bytesOf[T any](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	var zero T
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s)*int(unsafe.Sizeof(zero)))
}

// entriesOf views raw bytes as n entries of T; b must be at least that long
// and suitably aligned (it comes from makeVarStruct).
func entriesOf[T any](b []byte, n int) []T {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(b))), n)
}

// makeVarStruct allocates an 8-byte aligned buffer for a header of 8 bytes
// followed by n entries of entrySize bytes.
func makeVarStruct(n, entrySize int) []byte {
	words := make([]uint64, (8+n*entrySize+7)/8)
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(words))), len(words)*8)
}

// ioctlPtrResult is ioctlPtr for ioctls whose non-negative result matters.
func ioctlPtrResult[T any](fd int, req uintptr, p *T) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(p)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return r, errno
		}
		return r, nil
	}
}

// ioctlBufResult is ioctlBuf for ioctls whose non-negative result matters.
func ioctlBufResult(fd int, req uintptr, b []byte) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(unsafe.SliceData(b))))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return r, errno
		}
		return r, nil
	}
}
