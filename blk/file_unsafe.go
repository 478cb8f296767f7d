package blk

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds the FileBackend code that needs unsafe: raw vectored
// syscalls on caller-provided iovec arrays (x/sys's unix.Preadv builds a new
// iovec slice per call, which would allocate on the hot path) and the
// block-device ioctls that take pointers.

// preadv is preadv(2) on a prepared iovec array. On 64-bit Linux the offset
// goes whole in pos_l; pos_h is ignored.
func preadv(fd int, iov []unix.Iovec, off int64) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_PREADV, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(iov))), uintptr(len(iov)), uintptr(off), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// pwritev is pwritev(2) on a prepared iovec array.
func pwritev(fd int, iov []unix.Iovec, off int64) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_PWRITEV, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(iov))), uintptr(len(iov)), uintptr(off), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// bufAddr returns the address of b's first byte, for alignment checks.
func bufAddr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// advance returns p moved n bytes forward. p points into a buffer at least n
// bytes long (an iovec base after a short transfer).
func advance(p *byte, n int) *byte { return (*byte)(unsafe.Add(unsafe.Pointer(p), n)) }

// alignedBuffer returns a size-byte slice whose first byte is align-aligned.
func alignedBuffer(size, align int) []byte {
	raw := make([]byte, size+align)
	skip := (align - int(bufAddr(raw)%uintptr(align))) % align
	return raw[skip : skip+size : skip+size]
}

// blockDeviceSize is ioctl(BLKGETSIZE64).
func blockDeviceSize(fd int) (uint64, error) {
	var n uint64
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&n)))
	if e != 0 {
		return 0, e
	}
	return n, nil
}

// blockDiscard is ioctl(BLKDISCARD) on [off, off+n).
func blockDiscard(fd int, off, n uint64) error {
	r := [2]uint64{off, n}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKDISCARD, uintptr(unsafe.Pointer(&r)))
	if e != 0 {
		return e
	}
	return nil
}
