// Package uring is a minimal io_uring ring built directly on the raw
// io_uring_setup and io_uring_enter system calls. It supports the
// vectored read and write, fsync and no-op operations, a single
// submitter and a single completion reaper (which may be the same
// goroutine, woken by an eventfd registered with RegisterEventfd), and
// nothing else (no SQPOLL, no registered files or buffers, no linked
// requests).
//
// Buffers and iovec arrays: the kernel reads an iovec array when the
// request is submitted (the ring requires IORING_FEAT_SUBMIT_STABLE), but
// it reads from or writes into the buffers the iovecs point at until the
// request completes. The caller must keep those buffers alive and, for
// writes, unchanged until the request's CQE has been reaped. Prep
// functions retain the iovec slice they are given, which makes it (and
// the buffers it points at) heap-allocated, so the Go runtime never moves
// it; build iovec arrays once and reuse them to stay allocation free.
package uring

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrUnsupported reports that io_uring cannot be used here: io_uring_setup
// failed with ENOSYS, EPERM or EACCES (old kernel, seccomp filter,
// /proc/sys/kernel/io_uring_disabled), or the kernel lacks a feature the
// ring needs. The underlying errno, if any, is wrapped alongside it.
var ErrUnsupported = errors.New("uring: io_uring unavailable")

// ErrClosed is returned by Submit and Wait after Close.
var ErrClosed = errors.New("uring: ring closed")

// Kernel ABI constants (include/uapi/linux/io_uring.h); golang.org/x/sys
// does not define them.
const (
	offSQRing = 0x0        // IORING_OFF_SQ_RING
	offCQRing = 0x8000000  // IORING_OFF_CQ_RING
	offSQEs   = 0x10000000 // IORING_OFF_SQES

	featSingleMmap   = 1 << 0 // IORING_FEAT_SINGLE_MMAP
	featNoDrop       = 1 << 1 // IORING_FEAT_NODROP
	featSubmitStable = 1 << 2 // IORING_FEAT_SUBMIT_STABLE

	enterGetEvents = 1 << 0 // IORING_ENTER_GETEVENTS

	opNop    = 0 // IORING_OP_NOP
	opReadv  = 1 // IORING_OP_READV
	opWritev = 2 // IORING_OP_WRITEV
	opFsync  = 3 // IORING_OP_FSYNC

	fsyncDatasync = 1 << 0 // IORING_FSYNC_DATASYNC

	maxEntries = 4096
)

// sqringOffsets is struct io_sqring_offsets.
type sqringOffsets struct {
	head        uint32
	tail        uint32
	ringMask    uint32
	ringEntries uint32
	flags       uint32
	dropped     uint32
	array       uint32
	resv1       uint32
	userAddr    uint64
}

// cqringOffsets is struct io_cqring_offsets.
type cqringOffsets struct {
	head        uint32
	tail        uint32
	ringMask    uint32
	ringEntries uint32
	overflow    uint32
	cqes        uint32
	flags       uint32
	resv1       uint32
	userAddr    uint64
}

// params is struct io_uring_params.
type params struct {
	sqEntries    uint32
	cqEntries    uint32
	flags        uint32
	sqThreadCPU  uint32
	sqThreadIdle uint32
	features     uint32
	wqFD         uint32
	resv         [3]uint32
	sqOff        sqringOffsets
	cqOff        cqringOffsets
}

// sqe is struct io_uring_sqe (64 bytes).
type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32 // rw_flags, fsync_flags, ...
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFDIn  int32
	addr3       uint64
	_           uint64
}

// CQE is one completion: the UserData of the request it completes, its
// result (bytes transferred, 0, or a negated errno such as -EBADF) and
// the kernel's CQE flags. Its layout is struct io_uring_cqe.
type CQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

// Ring is one io_uring instance. The submission side (SQSpace, the Prep
// functions and Submit) must be used by one goroutine at a time (the
// caller serialises it, e.g. with a mutex); the completion side (Wait,
// Reap) by one goroutine at a time. The two sides may run concurrently
// with each other. Close must not run concurrently with any other method:
// to wake a goroutine blocked in Wait, submit a NOP (PrepNop) it
// recognises, then Close once it has returned. Reap the completions of
// all in-flight requests before Close: the kernel may still access their
// buffers until they complete.
type Ring struct {
	fd     int
	closed atomic.Bool

	// Submission queue. sqHead is advanced by the kernel, sqTail by us.
	sqHead    *uint32
	sqTail    *uint32
	sqMask    uint32
	sqEntries uint32
	sqArray   []uint32
	sqes      []sqe
	// tail is the next SQE slot to fill; slots between *sqTail and tail
	// are prepared but not yet published.
	tail uint32
	// keep[i] holds the iovec slice of the SQE in slot i, so it stays on
	// the heap and reachable until the slot is reused.
	keep [][]unix.Iovec

	// Completion queue. cqTail is advanced by the kernel, cqHead by us.
	cqHead *uint32
	cqTail *uint32
	cqMask uint32
	cqes   []CQE

	// The mappings, kept to unmap them. cqMap is nil when the kernel
	// shares one mapping between the SQ and CQ rings.
	sqMap, cqMap, sqeMap []byte
}

// New sets up a ring with entries submission queue slots; entries must
// be a power of two from 1 to 4096. The completion queue gets the
// kernel's default size (twice entries). The ring fd is close-on-exec.
// It returns an error wrapping ErrUnsupported when io_uring is not
// available.
func New(entries uint32) (*Ring, error) {
	return newRing(entries, false)
}

// newRing is New; separateMmap makes it map the SQ and CQ rings
// separately even when the kernel offers IORING_FEAT_SINGLE_MMAP, so
// tests can cover the pre-5.4 path.
func newRing(entries uint32, separateMmap bool) (*Ring, error) {
	if entries == 0 || entries > maxEntries || entries&(entries-1) != 0 {
		return nil, fmt.Errorf("uring: setup: entries %d is not a power of two in [1, %d]: %w", entries, maxEntries, unix.EINVAL)
	}
	var p params
	fd, err := setup(entries, &p)
	if err != nil {
		switch err {
		case unix.ENOSYS, unix.EPERM, unix.EACCES:
			return nil, fmt.Errorf("uring: setup: %w: %w", ErrUnsupported, err)
		}
		return nil, fmt.Errorf("uring: setup: %w", err)
	}
	// io_uring_setup always creates the fd with O_CLOEXEC; nothing to do.
	const need = featSubmitStable | featNoDrop
	if p.features&need != need {
		unix.Close(fd)
		return nil, fmt.Errorf("uring: setup: kernel features %#x lack SUBMIT_STABLE|NODROP (%#x): %w", p.features, need, ErrUnsupported)
	}
	if separateMmap {
		p.features &^= featSingleMmap
	}
	r := &Ring{fd: fd}
	if err := r.mmap(&p); err != nil {
		r.unmap()
		unix.Close(fd)
		return nil, err
	}
	return r, nil
}

// mmap maps the rings and the SQE array and points r's fields into them.
func (r *Ring) mmap(p *params) error {
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*16
	single := p.features&featSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	const prot = unix.PROT_READ | unix.PROT_WRITE
	const flags = unix.MAP_SHARED | unix.MAP_POPULATE
	var err error
	if r.sqMap, err = unix.Mmap(r.fd, offSQRing, sqSize, prot, flags); err != nil {
		return fmt.Errorf("uring: mmap sq ring: %w", err)
	}
	cqMap := r.sqMap
	if !single {
		if r.cqMap, err = unix.Mmap(r.fd, offCQRing, cqSize, prot, flags); err != nil {
			return fmt.Errorf("uring: mmap cq ring: %w", err)
		}
		cqMap = r.cqMap
	}
	if r.sqeMap, err = unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*64, prot, flags); err != nil {
		return fmt.Errorf("uring: mmap sqes: %w", err)
	}

	r.sqHead = u32At(r.sqMap, p.sqOff.head)
	r.sqTail = u32At(r.sqMap, p.sqOff.tail)
	r.sqMask = *u32At(r.sqMap, p.sqOff.ringMask)
	r.sqEntries = *u32At(r.sqMap, p.sqOff.ringEntries)
	r.sqArray = u32sAt(r.sqMap, p.sqOff.array, p.sqEntries)
	r.sqes = sqesAt(r.sqeMap, p.sqEntries)
	r.tail = atomic.LoadUint32(r.sqTail)
	r.keep = make([][]unix.Iovec, p.sqEntries)

	r.cqHead = u32At(cqMap, p.cqOff.head)
	r.cqTail = u32At(cqMap, p.cqOff.tail)
	r.cqMask = *u32At(cqMap, p.cqOff.ringMask)
	r.cqes = cqesAt(cqMap, p.cqOff.cqes, p.cqEntries)
	return nil
}

// unmap unmaps whatever r has mapped and forgets the mappings.
func (r *Ring) unmap() error {
	var errs []error
	for _, m := range []*[]byte{&r.sqeMap, &r.cqMap, &r.sqMap} {
		if *m != nil {
			if err := unix.Munmap(*m); err != nil {
				errs = append(errs, err)
			}
			*m = nil
		}
	}
	r.sqHead, r.sqTail, r.sqArray, r.sqes, r.keep = nil, nil, nil, nil, nil
	r.cqHead, r.cqTail, r.cqes = nil, nil, nil
	return errors.Join(errs...)
}

// Close unmaps the rings and closes the ring fd. Calling it again does
// nothing and returns nil.
func (r *Ring) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	err := r.unmap()
	if cerr := unix.Close(r.fd); cerr != nil {
		err = errors.Join(err, cerr)
	}
	r.fd = -1
	if err != nil {
		return fmt.Errorf("uring: close: %w", err)
	}
	return nil
}

// registerEventfd is IORING_REGISTER_EVENTFD (Linux 5.2).
const registerEventfd = 4

// RegisterEventfd makes the kernel signal the eventfd efd whenever it
// posts a completion, so a caller's poll loop can wait for its own work
// and for the ring at once, with no thread blocked in Wait. Completions
// the kernel posts inline, within the Submit that sent the request, are
// signalled too: reading efd before reaping keeps such a signal from
// waking the loop once more for nothing, and reaping after the read
// misses nothing (a completion posted after it signals again).
func (r *Ring) RegisterEventfd(efd int) error {
	if r.closed.Load() {
		return ErrClosed
	}
	if err := registerFD(r.fd, registerEventfd, efd); err != nil {
		return fmt.Errorf("uring: register eventfd: %w", err)
	}
	return nil
}

// SQSpace returns how many SQEs can be prepared now: the ring size minus
// the SQEs prepared but not yet consumed by the kernel. It is 0 after
// Close.
func (r *Ring) SQSpace() int {
	if r.closed.Load() {
		return 0
	}
	return int(r.sqEntries - (r.tail - atomic.LoadUint32(r.sqHead)))
}

// next returns a zeroed SQE in the next free slot, records it in the SQ
// array and retains iov for the slot, or returns nil when the SQ is full
// or the ring closed.
func (r *Ring) next(iov []unix.Iovec) *sqe {
	if r.closed.Load() || r.tail-atomic.LoadUint32(r.sqHead) >= r.sqEntries {
		return nil
	}
	idx := r.tail & r.sqMask
	e := &r.sqes[idx]
	*e = sqe{}
	r.sqArray[idx] = idx
	r.keep[idx] = iov
	r.tail++
	return e
}

// prepRW prepares a vectored read or write.
func (r *Ring) prepRW(op uint8, fd int, iov []unix.Iovec, off int64, userData uint64) bool {
	e := r.next(iov)
	if e == nil {
		return false
	}
	e.opcode = op
	e.fd = int32(fd)
	e.off = uint64(off)
	e.addr = iovAddr(iov)
	e.len = uint32(len(iov))
	e.userData = userData
	return true
}

// PrepReadv prepares a readv of fd at offset off into the buffers of iov,
// completing with userData. It returns false, preparing nothing, when the
// SQ is full (or the ring closed). It makes no system call; Submit does.
func (r *Ring) PrepReadv(fd int, iov []unix.Iovec, off int64, userData uint64) bool {
	return r.prepRW(opReadv, fd, iov, off, userData)
}

// PrepWritev prepares a writev to fd at offset off from the buffers of
// iov, completing with userData. It returns false, preparing nothing, when
// the SQ is full (or the ring closed). It makes no system call.
func (r *Ring) PrepWritev(fd int, iov []unix.Iovec, off int64, userData uint64) bool {
	return r.prepRW(opWritev, fd, iov, off, userData)
}

// PrepFsync prepares an fsync of fd (fdatasync when datasync is set),
// completing with userData. It returns false, preparing nothing, when the
// SQ is full (or the ring closed). It makes no system call. Requests are
// not ordered: submit the fsync once the writes it must cover completed.
func (r *Ring) PrepFsync(fd int, datasync bool, userData uint64) bool {
	e := r.next(nil)
	if e == nil {
		return false
	}
	e.opcode = opFsync
	e.fd = int32(fd)
	if datasync {
		e.opFlags = fsyncDatasync
	}
	e.userData = userData
	return true
}

// PrepNop prepares a no-op that completes with userData and Res 0. It
// returns false when the SQ is full (or the ring closed).
func (r *Ring) PrepNop(userData uint64) bool {
	e := r.next(nil)
	if e == nil {
		return false
	}
	e.opcode = opNop
	e.userData = userData
	return true
}

// Submit publishes the prepared SQEs to the kernel and asks it to
// consume them with one io_uring_enter (retried on EINTR). It returns how
// many SQEs the kernel consumed; SQEs it did not consume stay queued for
// the next Submit. With nothing to submit it returns 0, nil at once.
func (r *Ring) Submit() (int, error) {
	if r.closed.Load() {
		return 0, ErrClosed
	}
	// Store-release: the SQE and SQ array writes above become visible to
	// the kernel before the new tail.
	atomic.StoreUint32(r.sqTail, r.tail)
	for {
		pending := r.tail - atomic.LoadUint32(r.sqHead)
		if pending == 0 {
			return 0, nil
		}
		n, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd),
			uintptr(pending), 0, 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, fmt.Errorf("uring: submit: %w", errno)
		}
		return int(n), nil
	}
}

// Wait blocks until at least one CQE is ready to Reap, returning at once
// if one already is. It retries on EINTR. Call it from the completion
// side only.
func (r *Ring) Wait() error {
	if r.closed.Load() {
		return ErrClosed
	}
	for {
		// Load-acquire of the kernel's tail; cqHead is only written by
		// the completion side, i.e. by us.
		if atomic.LoadUint32(r.cqTail) != atomic.LoadUint32(r.cqHead) {
			return nil
		}
		// The kernel flushes any overflowed CQEs into the ring here.
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd),
			0, 1, enterGetEvents, 0, 0)
		if errno != 0 && errno != unix.EINTR {
			return fmt.Errorf("uring: wait: %w", errno)
		}
	}
}

// Reap copies up to len(out) ready CQEs into out, oldest first, marks
// them consumed and returns how many it copied. It never blocks; 0 means
// none is ready (call Wait). It returns 0 after Close.
func (r *Ring) Reap(out []CQE) int {
	if r.closed.Load() || len(out) == 0 {
		return 0
	}
	head := atomic.LoadUint32(r.cqHead)
	ready := atomic.LoadUint32(r.cqTail) - head // load-acquire
	n := min(uint32(len(out)), ready)
	for i := uint32(0); i < n; i++ {
		out[i] = r.cqes[(head+i)&r.cqMask]
	}
	if n > 0 {
		// Store-release: the copies above finish before the kernel may
		// reuse the slots.
		atomic.StoreUint32(r.cqHead, head+n)
	}
	return int(n)
}
