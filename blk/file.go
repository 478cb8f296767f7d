package blk

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrNoDirectIO reports that the file system holding a disk does not support
// O_DIRECT, which cache=none and cache=directsync need.
var ErrNoDirectIO = errors.New("file system does not support O_DIRECT")

// FileOptions say how OpenFile opens a disk.
type FileOptions struct {
	// ReadOnly opens the file O_RDONLY; writes then fail with EBADF (the
	// device refuses them before they get here).
	ReadOnly bool
	// Direct opens the file O_DIRECT, bypassing the host page cache.
	// Requests whose guest buffers are not aligned for direct I/O go
	// through an aligned bounce buffer; requests whose offset or length is
	// not aligned go through a second, buffered descriptor of the same file
	// (the kernel keeps the two coherent: direct I/O writes back and
	// invalidates the page cache range it touches).
	Direct bool
	// NoLock skips the image lock (SPEC locking=off). By default the file
	// gets an OFD lock for as long as it is open, shared when ReadOnly and
	// exclusive otherwise, like QEMU's image locking: a second flushvm or
	// a QEMU that would write the same image is refused (ErrLocked).
	NoLock bool
}

// ErrLocked reports a disk image another open file holds a conflicting
// lock on.
var ErrLocked = errors.New("in use: another process (a flushvm or QEMU) holds a lock on it; stop it, or add locking=off to the SPEC to share it anyway")

// lockImage takes the image lock of FileOptions.NoLock on fd.
func lockImage(fd int, readOnly bool) error {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if readOnly {
		lk.Type = unix.F_RDLCK
	}
	for {
		err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN || err == unix.EACCES:
			return ErrLocked
		}
		return err
	}
}

// FileBackend is a Backend on a regular file or a block device, doing
// vectored I/O straight to and from the caller's buffers with
// preadv/pwritev. Its Sync is fdatasync.
type FileBackend struct {
	path    string
	fd      int
	bufFd   int // buffered descriptor for unaligned direct I/O, or -1
	size    int64
	isBlock bool
	direct  bool
	// memAlign and offAlign are the direct I/O alignment rules of the file
	// (statx STATX_DIOALIGN), 1 when not direct.
	memAlign, offAlign int64

	closeOnce sync.Once
	closeErr  error
}

// bounceSize is the size of one direct-I/O bounce buffer.
const bounceSize = 256 << 10

// bouncePool holds aligned bounce buffers (*[]byte, bounceSize bytes).
var bouncePool = sync.Pool{New: func() any {
	b := alignedBuffer(bounceSize, 4096)
	return &b
}}

// OpenFile opens the regular file or block device at path as a Backend.
func OpenFile(path string, o FileOptions) (*FileBackend, error) {
	flags := unix.O_CLOEXEC | unix.O_RDWR
	if o.ReadOnly {
		flags = unix.O_CLOEXEC | unix.O_RDONLY
	}
	openFlags := flags
	if o.Direct {
		openFlags |= unix.O_DIRECT
	}
	fd, err := openRetry(path, openFlags)
	if err != nil {
		if o.Direct && errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("blk: open disk %s for cache with O_DIRECT: %w", path, ErrNoDirectIO)
		}
		return nil, fmt.Errorf("blk: open disk %s: %w", path, err)
	}
	if !o.NoLock {
		if err := lockImage(fd, o.ReadOnly); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("blk: disk %s: %w", path, err)
		}
	}
	b := &FileBackend{path: path, fd: fd, bufFd: -1, direct: o.Direct, memAlign: 1, offAlign: 1}
	if err := b.init(flags); err != nil {
		unix.Close(fd)
		if b.bufFd >= 0 {
			unix.Close(b.bufFd)
		}
		return nil, err
	}
	return b, nil
}

func openRetry(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags, 0)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

func (b *FileBackend) init(bufFlags int) error {
	var st unix.Stat_t
	if err := unix.Fstat(b.fd, &st); err != nil {
		return fmt.Errorf("blk: stat disk %s: %w", b.path, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		b.size = st.Size
	case unix.S_IFBLK:
		b.isBlock = true
		n, err := blockDeviceSize(b.fd)
		if err != nil {
			return fmt.Errorf("blk: disk %s: BLKGETSIZE64: %w", b.path, err)
		}
		b.size = int64(n)
	default:
		return fmt.Errorf("blk: disk %s: not a regular file or block device (mode %#o)", b.path, st.Mode&unix.S_IFMT)
	}
	if !b.direct {
		return nil
	}
	b.memAlign, b.offAlign = 4096, 4096 // safe when statx cannot tell
	var sx unix.Statx_t
	if err := unix.Statx(b.fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &sx); err == nil &&
		sx.Mask&unix.STATX_DIOALIGN != 0 && sx.Dio_mem_align != 0 && sx.Dio_offset_align != 0 {
		b.memAlign, b.offAlign = int64(sx.Dio_mem_align), int64(sx.Dio_offset_align)
	}
	fd, err := openRetry(b.path, bufFlags)
	if err != nil {
		return fmt.Errorf("blk: open disk %s (buffered descriptor): %w", b.path, err)
	}
	b.bufFd = fd
	return nil
}

// Path returns the path the backend was opened from.
func (b *FileBackend) Path() string { return b.path }

// Size returns the size of the file or block device in bytes.
func (b *FileBackend) Size() int64 { return b.size }

// IsBlockDevice reports whether the backend is a block device.
func (b *FileBackend) IsBlockDevice() bool { return b.isBlock }

// DirectAlignment returns the offset alignment direct I/O needs (1 when the
// file is not open O_DIRECT).
func (b *FileBackend) DirectAlignment() int64 { return b.offAlign }

// aligned reports whether a request can go to the O_DIRECT descriptor as is.
func (b *FileBackend) aligned(v *Vec, off int64) bool {
	if off%b.offAlign != 0 || v.n%b.offAlign != 0 {
		return false
	}
	for _, buf := range v.Bufs {
		if int64(len(buf))%b.memAlign != 0 || int64(bufAddr(buf))%b.memAlign != 0 {
			return false
		}
	}
	return true
}

// ioPath is how FileBackend carries out one request.
type ioPath int

const (
	pathVectored ioPath = iota // preadv/pwritev on the main descriptor
	pathBounce                 // O_DIRECT through an aligned bounce buffer
	pathBuffered               // preadv/pwritev on the buffered descriptor
)

// pathFor picks the path for v at off.
func (b *FileBackend) pathFor(v *Vec, off int64) ioPath {
	switch {
	case !b.direct || b.aligned(v, off):
		return pathVectored
	case off%b.offAlign == 0 && v.n%b.offAlign == 0:
		return pathBounce
	default:
		return pathBuffered
	}
}

// ReadAt reads v.Len() bytes at off into v's buffers with preadv.
func (b *FileBackend) ReadAt(v *Vec, off int64) error {
	switch b.pathFor(v, off) {
	case pathBounce:
		return b.bounce(v, off, false)
	case pathBuffered:
		return b.vecIO(b.bufFd, v, off, false)
	}
	return b.vecIO(b.fd, v, off, false)
}

// WriteAt writes v's buffers at off with pwritev.
func (b *FileBackend) WriteAt(v *Vec, off int64) error {
	switch b.pathFor(v, off) {
	case pathBounce:
		return b.bounce(v, off, true)
	case pathBuffered:
		return b.vecIO(b.bufFd, v, off, true)
	}
	return b.vecIO(b.fd, v, off, true)
}

// iovecs fills v's preallocated iovec array with v's buffers and returns
// it; the caller clears it once the transfer is done, so that no pointer
// into guest memory stays behind.
func (v *Vec) iovecs() []unix.Iovec {
	iov := v.iov[:0]
	for _, buf := range v.Bufs {
		var e unix.Iovec
		e.Base = &buf[0]
		e.SetLen(len(buf))
		iov = append(iov, e)
	}
	return iov
}

// maxIov is IOV_MAX on Linux: the most iovecs one preadv/pwritev takes.
const maxIov = 1024

// vecIO does the whole transfer of v at off, resuming after short transfers
// and EINTR. It uses v's preallocated iovec array, so it allocates nothing.
func (b *FileBackend) vecIO(fd int, v *Vec, off int64, write bool) error {
	iov := v.iovecs()
	// Do not keep pointers into guest memory in the scratch array.
	defer clear(v.iov[:len(v.Bufs)])
	for len(iov) > 0 {
		batch := iov
		if len(batch) > maxIov {
			batch = batch[:maxIov]
		}
		var n int
		var err error
		if write {
			n, err = pwritev(fd, batch, off)
		} else {
			n, err = preadv(fd, batch, off)
		}
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			op := "preadv"
			if write {
				op = "pwritev"
			}
			return fmt.Errorf("blk: %s %s at %d: %w", op, b.path, off, err)
		}
		if n == 0 {
			return fmt.Errorf("blk: %s at %d: %w", b.path, off, io.ErrUnexpectedEOF)
		}
		off += int64(n)
		// Drop the iovecs done, trim a partly done one.
		for n > 0 && len(iov) > 0 {
			l := int(iov[0].Len)
			if n < l {
				iov[0].Base = advance(iov[0].Base, n)
				iov[0].SetLen(l - n)
				n = 0
				break
			}
			n -= l
			iov = iov[1:]
		}
	}
	return nil
}

// bounce does direct I/O for a request whose offset and length are aligned
// but whose buffers are not, through an aligned bounce buffer.
func (b *FileBackend) bounce(v *Vec, off int64, write bool) error {
	bp := bouncePool.Get().(*[]byte)
	defer bouncePool.Put(bp)
	bb := *bp
	var bi, bo int // position in v: buffer index and offset inside it
	remaining := v.n
	for remaining > 0 {
		chunk := int64(len(bb))
		if chunk > remaining {
			chunk = remaining
		}
		part := bb[:chunk]
		if write {
			bi, bo = gather(part, v.Bufs, bi, bo)
			if err := rawFull(b.fd, b.path, part, off, true); err != nil {
				return err
			}
		} else {
			if err := rawFull(b.fd, b.path, part, off, false); err != nil {
				return err
			}
			bi, bo = scatter(v.Bufs, bi, bo, part)
		}
		off += chunk
		remaining -= chunk
	}
	return nil
}

// rawFull transfers all of p at off on fd.
func rawFull(fd int, path string, p []byte, off int64, write bool) error {
	for len(p) > 0 {
		var n int
		var err error
		if write {
			n, err = unix.Pwrite(fd, p, off)
		} else {
			n, err = unix.Pread(fd, p, off)
		}
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return fmt.Errorf("blk: I/O on %s at %d: %w", path, off, err)
		}
		if n == 0 {
			return fmt.Errorf("blk: %s at %d: %w", path, off, io.ErrUnexpectedEOF)
		}
		p = p[n:]
		off += int64(n)
	}
	return nil
}

// gather copies from bufs, starting at buffer bi offset bo, into dst and
// returns the new position.
func gather(dst []byte, bufs [][]byte, bi, bo int) (int, int) {
	for len(dst) > 0 && bi < len(bufs) {
		n := copy(dst, bufs[bi][bo:])
		dst = dst[n:]
		bo += n
		if bo == len(bufs[bi]) {
			bi, bo = bi+1, 0
		}
	}
	return bi, bo
}

// scatter copies src into bufs starting at buffer bi offset bo and returns
// the new position.
func scatter(bufs [][]byte, bi, bo int, src []byte) (int, int) {
	for len(src) > 0 && bi < len(bufs) {
		n := copy(bufs[bi][bo:], src)
		src = src[n:]
		bo += n
		if bo == len(bufs[bi]) {
			bi, bo = bi+1, 0
		}
	}
	return bi, bo
}

// Sync is fdatasync on the file.
func (b *FileBackend) Sync() error {
	for {
		err := unix.Fdatasync(b.fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("blk: fdatasync %s: %w", b.path, err)
		}
		return nil
	}
}

// Discard punches a hole (regular file) or issues BLKDISCARD (block
// device). A file system that cannot punch holes makes it a no-op.
func (b *FileBackend) Discard(off, n int64) error {
	var err error
	if b.isBlock {
		err = blockDiscard(b.fd, uint64(off), uint64(n))
	} else {
		err = fallocate(b.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) {
		return nil // a discard is a hint
	}
	if err != nil {
		return fmt.Errorf("blk: discard %s [%d, +%d): %w", b.path, off, n, err)
	}
	return nil
}

// WriteZeroes zeroes [off, off+n): fallocate ZERO_RANGE, or PUNCH_HOLE when
// unmap is allowed, falling back to writing zeroes when the file system
// supports neither.
func (b *FileBackend) WriteZeroes(off, n int64, unmap bool) error {
	mode := uint32(unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE)
	if unmap {
		mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	err := fallocate(b.fd, mode, off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("blk: write zeroes %s [%d, +%d): %w", b.path, off, n, err)
	}
	bp := bouncePool.Get().(*[]byte)
	defer bouncePool.Put(bp)
	z := *bp
	clear(z)
	zfd := b.fd
	if b.direct {
		zfd = b.bufFd // off and n need only be sector-aligned
	}
	for n > 0 {
		c := int64(len(z))
		if c > n {
			c = n
		}
		if err := rawFull(zfd, b.path, z[:c], off, true); err != nil {
			return fmt.Errorf("blk: write zeroes: %w", err)
		}
		off += c
		n -= c
	}
	return nil
}

func fallocate(fd int, mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(fd, mode, off, n)
		if err == unix.EINTR {
			continue
		}
		return err
	}
}

// Close closes the file descriptors. It does not sync.
func (b *FileBackend) Close() error {
	b.closeOnce.Do(func() {
		if b.bufFd >= 0 {
			if err := unix.Close(b.bufFd); err != nil {
				b.closeErr = fmt.Errorf("blk: close %s: %w", b.path, err)
			}
		}
		if err := unix.Close(b.fd); err != nil && b.closeErr == nil {
			b.closeErr = fmt.Errorf("blk: close %s: %w", b.path, err)
		}
	})
	return b.closeErr
}

// ringFile implements ringFile.
func (b *FileBackend) ringFile() bool { return true }

// ringFD implements ringFile: a request goes to the ring as preadv/pwritev
// would go to the descriptor pathFor picks, except an O_DIRECT request
// that needs the bounce buffer, one with more buffers than one call takes,
// and a write through the page cache: Linux completes a buffered write
// without blocking only on file systems that opt in, and punts it to an
// io-wq kernel worker elsewhere (on ext4 here, every one: a write took
// 11.1 us on the ring against 4.3 us on the worker pool,
// BenchmarkDeviceRandWrite4K), so the worker pool serves those. O_DIRECT
// writes (cache=none) go to the ring. The iovecs are built in v's scratch
// array, which the ring engine clears once the request completed.
func (b *FileBackend) ringFD(v *Vec, off int64, write bool) (int, []unix.Iovec, bool) {
	if len(v.Bufs) > maxIov || len(v.Bufs) == 0 {
		return 0, nil, false
	}
	fd := b.fd
	switch b.pathFor(v, off) {
	case pathBounce:
		return 0, nil, false
	case pathBuffered:
		fd = b.bufFd
	}
	if write && (!b.direct || fd == b.bufFd) {
		return 0, nil, false
	}
	iov := v.iovecs()
	return fd, iov, true
}
