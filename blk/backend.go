package blk

import (
	"errors"

	"golang.org/x/sys/unix"
)

// Backend is where a disk's bytes live: a host file, a block device, or a
// layer over one (the power-cut model's volatile cache, a test double).
//
// # Durability contract
//
// The device builds every guarantee it gives the guest out of these calls,
// and a wrapper may rely on exactly this, nothing more:
//
//   - ReadAt, WriteAt, Discard and WriteZeroes are "complete" when they return
//     nil. A completed write is visible to every later ReadAt, but it is not
//     durable: it may still be lost by a power cut.
//   - Sync makes durable every write (WriteAt, Discard, WriteZeroes) that
//     completed before Sync was called. Writes that complete while a Sync is
//     in progress may or may not be covered by it; the device never counts on
//     them. Sync returning an error means some of those writes may be lost.
//   - There is no hidden write-through. A cache mode that needs a write to be
//     durable before the guest sees it complete (cache=writethrough,
//     cache=directsync, or the guest turning its write cache off) calls Sync
//     after the write completes and completes the request only after that
//     Sync returns; a wrapper therefore sees every durability point as a
//     Sync call. (O_DIRECT, used by cache=none and directsync, bypasses the
//     host page cache but does not flush the disk's own cache, so it is not
//     durability either: cache=directsync calls Sync after each write too,
//     and cache=none syncs on FLUSH like cache=writeback.)
//   - The device may issue calls concurrently, from several goroutines,
//     including Sync concurrently with reads and writes. It never issues two
//     writes to overlapping ranges concurrently unless the guest did, in which
//     case the result is whichever the backend applied last.
//   - Buffers in a Vec alias guest memory. A backend must not keep them after
//     the call returns (copy the bytes if it must remember them), and must not
//     write into a WriteAt Vec.
//
// Offsets and lengths are in bytes and are multiples of 512 (the virtio-blk
// sector); the device never asks for bytes at or past Size.
type Backend interface {
	// Size is the disk size in bytes. It does not change while the device
	// is open.
	Size() int64
	// ReadAt fills the buffers of v, in order, from the disk starting at
	// off. It reads all of v.Len() bytes or returns an error.
	ReadAt(v *Vec, off int64) error
	// WriteAt writes the buffers of v, in order, to the disk starting at
	// off. It writes all of v.Len() bytes or returns an error.
	WriteAt(v *Vec, off int64) error
	// Sync makes durable every write completed before it was called.
	Sync() error
	// Discard tells the disk that [off, off+n) is no longer needed. What it
	// reads afterwards is unspecified (old data or zeroes); a backend that
	// cannot discard returns nil (a discard is a hint).
	Discard(off, n int64) error
	// WriteZeroes makes [off, off+n) read as zeroes. With unmap the backend
	// may deallocate the range as well (punch a hole).
	WriteZeroes(off, n int64, unmap bool) error
	// Close releases the backend. It does not Sync.
	Close() error
}

// ErrVecFull reports an Append to a Vec that already holds its maximum
// number of buffers.
var ErrVecFull = errors.New("blk: scatter/gather list full")

// Vec is a scatter/gather list: the buffers of one request, in order, usually
// aliasing guest memory. A Vec is made once with a fixed maximum number of
// buffers and reused for request after request, so filling it allocates
// nothing; the host iovec array the file backend hands to preadv/pwritev is
// preallocated alongside.
type Vec struct {
	// Bufs are the buffers. Backends read them; only the owner of the Vec
	// changes the list (Reset, Append).
	Bufs [][]byte
	n    int64
	// iov is scratch space for FileBackend, cap(iov) == cap(Bufs).
	iov []unix.Iovec
}

// NewVec returns an empty Vec that can hold up to maxBufs buffers.
func NewVec(maxBufs int) *Vec {
	if maxBufs < 1 {
		maxBufs = 1
	}
	return &Vec{Bufs: make([][]byte, 0, maxBufs), iov: make([]unix.Iovec, 0, maxBufs)}
}

// Reset empties v, keeping its capacity.
func (v *Vec) Reset() {
	clear(v.Bufs) // drop references to guest memory
	v.Bufs = v.Bufs[:0]
	v.n = 0
}

// Append adds b to the end of v. Empty buffers are skipped.
func (v *Vec) Append(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if len(v.Bufs) == cap(v.Bufs) {
		return ErrVecFull
	}
	v.Bufs = append(v.Bufs, b)
	v.n += int64(len(b))
	return nil
}

// Len returns the total number of bytes in v.
func (v *Vec) Len() int64 { return v.n }

// Cap returns the maximum number of buffers v can hold.
func (v *Vec) Cap() int { return cap(v.Bufs) }

// CopyIn copies src into v's bytes starting at byte at of v (the buffers
// taken end to end) and returns the number of bytes copied, fewer than
// len(src) when v ends first.
func (v *Vec) CopyIn(at int64, src []byte) int {
	bi, bo, ok := v.locate(at)
	if !ok {
		return 0
	}
	n := int(min(int64(len(src)), v.n-at))
	scatter(v.Bufs, bi, bo, src[:n])
	return n
}

// CopyOut copies v's bytes starting at byte at of v into dst and returns
// the number of bytes copied, fewer than len(dst) when v ends first.
func (v *Vec) CopyOut(dst []byte, at int64) int {
	bi, bo, ok := v.locate(at)
	if !ok {
		return 0
	}
	n := 0
	for ; n < len(dst) && bi < len(v.Bufs); bi, bo = bi+1, 0 {
		n += copy(dst[n:], v.Bufs[bi][bo:])
	}
	return n
}

// locate returns the buffer holding byte at of v and the byte's offset in
// it.
func (v *Vec) locate(at int64) (bi, bo int, ok bool) {
	if at < 0 || at >= v.n {
		return 0, 0, false
	}
	for i, b := range v.Bufs {
		if at < int64(len(b)) {
			return i, int(at), true
		}
		at -= int64(len(b))
	}
	return 0, 0, false
}
