package blk

import (
	"errors"
	"fmt"
	"math/bits"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/internal/uring"
)

// The io_uring engine (aio=io_uring). Each queue owns a ring, and its
// loop is the ring's only user: it prepares one submission per read or
// write it pops, submits them all with one io_uring_enter when the pass
// over the virtqueue ends, and reaps right away what the kernel finished
// within that call (a page-cached read, a buffered write on a file system
// that takes it without blocking): those complete with no hand-off at all.
// What the kernel finishes later (its io-wq workers, a device, a page that
// had to be read in) signals an eventfd registered with the ring, which
// the loop polls beside the queue's kick: it wakes, reaps and publishes
// the batch once (one used->idx update, at most one interrupt). No thread
// sits blocked waiting for completions, and no lock is needed.
//
// What the ring does not take runs on the worker pool, unchanged:
// FLUSHes (the flusher and the syncer keep their merging and elision, and
// their ordering rule: a write counts as completed, syncer.wrote, when
// its completion is reaped, before the guest can see it), discards and
// write-zeroes, write-through writes (which need a sync before they
// complete), requests the backend cannot hand to a file descriptor as
// they are (ringFile), and any request the ring completed with an error or
// a short transfer: the worker redoes it from the start with the threads
// path's resumption, errors and error policies.

// ringFile is a Backend whose reads and writes of a Vec may, right now,
// go straight to a file descriptor as preadv/pwritev would.
type ringFile interface {
	// ringFD returns the descriptor and the iovecs (in v's scratch array)
	// for v at off, or false when the request must go through the
	// Backend's methods.
	ringFD(v *Vec, off int64, write bool) (fd int, iov []unix.Iovec, ok bool)
	// ringFile reports whether a file is under the layer at all.
	ringFile() bool
}

// ringEngine is a queue's io_uring and its bookkeeping, all the loop's
// (and, once the loop returned, stopAll's).
type ringEngine struct {
	ring *uring.Ring
	// efd is the eventfd the kernel signals for every completion.
	efd int
	// slots maps user data (a slot's index in its queue) back to the slot.
	slots []*slot
	cqes  []uring.CQE
	// queued counts submissions prepared since the last Submit; entries
	// is the submission queue's size; inflight counts requests prepared
	// and not yet reaped.
	queued, entries, inflight int
	efdBuf                    [8]byte
}

// newRings gives each queue of st a ring when the device asked for
// io_uring, its backend can take requests on a descriptor and loops serve
// the queues (a test driving them by hand gets threads). It returns the
// engine the activation runs on and, where that is threads though the
// device asked for io_uring, why.
func (d *Device) newRings(st *activeState, loops bool) *aioState {
	threads := func(why string) *aioState { return &aioState{engine: AIOThreads, fallback: why} }
	switch {
	case d.aio != AIOIOUring:
		return threads("")
	case d.ringIO == nil || !d.ringIO.ringFile():
		return threads("a layer (power-cut model, write log, crash states) sits between the device and the file")
	case !loops:
		return threads("no queue loops")
	}
	for _, q := range st.queues {
		if q == nil {
			continue
		}
		re, err := newRingEngine(q)
		if err != nil {
			st.closeRings()
			return threads(err.Error())
		}
		q.ring = re
		q.pfds = append(q.pfds, unix.PollFd{Fd: int32(re.efd), Events: unix.POLLIN})
	}
	return &aioState{engine: AIOIOUring}
}

// newRingEngine makes q's ring, a power of two at least the queue's size,
// and its eventfd.
func newRingEngine(q *queueRunner) (*ringEngine, error) {
	n := uint32(cap(q.free))
	r, err := uring.New(1 << bits.Len32(n-1))
	if err != nil {
		return nil, err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("io_uring eventfd: %w", err)
	}
	if err := r.RegisterEventfd(efd); err != nil {
		r.Close()
		unix.Close(efd)
		return nil, err
	}
	return &ringEngine{ring: r, efd: efd, slots: q.all, entries: r.SQSpace(), cqes: make([]uring.CQE, n)}, nil
}

// toRing prepares s's read or write on the queue's ring and reports
// whether it did; the request is then the ring's until its completion is
// reaped.
func (q *queueRunner) toRing(s *slot) bool {
	re, d, r := q.ring, q.d, s.req
	if re == nil || q.st.faulted.Load() || (r.typ != TypeIn && r.typ != TypeOut) ||
		(r.typ == TypeOut && d.writeThrough()) {
		return false
	}
	off := int64(r.sector * SectorSize)
	fd, iov, ok := d.ringIO.ringFD(r.data, off, r.typ == TypeOut)
	if !ok {
		return false
	}
	for try := 0; try < 2; try++ {
		if r.typ == TypeIn {
			ok = re.ring.PrepReadv(fd, iov, off, s.idx)
		} else {
			ok = re.ring.PrepWritev(fd, iov, off, s.idx)
		}
		if ok {
			s.inRing.Store(true)
			re.queued++
			re.inflight++
			return true
		}
		q.submitRing() // the ring is full of prepared requests: send them
	}
	clear(iov)
	return false
}

// submitRing submits what the loop prepared, until the kernel took it
// all, and completes what the kernel finished within the call. A refusal
// (EAGAIN, EBUSY: the kernel short of memory) is retried after a pause
// that doubles up to 10 ms: the requests are counted in flight, and no
// later pass may be coming to submit them (the guest may be waiting for
// exactly these).
func (q *queueRunner) submitRing() {
	re := q.ring
	if re == nil || re.queued == 0 {
		return
	}
	var pause time.Duration
	for {
		_, err := re.ring.Submit()
		if re.ring.SQSpace() == re.entries || errors.Is(err, uring.ErrClosed) {
			re.queued = 0
			q.reapRing()
			return
		}
		pause = min(max(2*pause, 50*time.Microsecond), 10*time.Millisecond)
		time.Sleep(pause)
	}
}

// settleRing is the loop's last step before it sleeps: it consumes the
// eventfd's count, then completes what is ready, so that the poll sleeps
// until a completion posted after this point (or a kick) and a completion
// already reaped does not wake it again.
func (q *queueRunner) settleRing() {
	re := q.ring
	if re == nil {
		return
	}
	unix.Read(re.efd, re.efdBuf[:]) // EAGAIN when nothing was signalled
	q.reapRing()
	q.publish()
}

// reapRing completes every request whose completion is ready.
func (q *queueRunner) reapRing() {
	re := q.ring
	if re == nil || re.inflight == 0 {
		return
	}
	for {
		n := re.ring.Reap(re.cqes)
		if n == 0 {
			return
		}
		re.inflight -= n
		for _, c := range re.cqes[:n] {
			if c.UserData >= uint64(len(re.slots)) || !re.slots[c.UserData].inRing.Swap(false) {
				panic(fmt.Sprintf("blk: io_uring completed request %d, which is not in the ring", c.UserData))
			}
			q.ringDone(re.slots[c.UserData], c.Res)
		}
	}
}

// ringDone completes a request the ring finished with result res (bytes
// moved, or -errno). A short transfer or an error goes to the worker pool,
// which redoes the whole request (the same bytes again: a read or write
// of the same buffers is idempotent) and applies the error policies.
func (q *queueRunner) ringDone(s *slot, res int32) {
	st, d, r := q.st, q.d, s.req
	clear(r.data.iov[:len(r.data.Bufs)]) // no pointers into guest memory kept
	if r.typ == TypeOut {
		d.syncer.wrote() // even a failed write may have changed data
	}
	switch {
	case st.faulted.Load():
		q.addDone(s)
		return
	case res < 0 || int64(res) != r.data.Len():
		st.work <- s // room for every request in flight: never blocks
		return
	}
	d.c.ringRequests.Add(1)
	held := false
	st.guard(func() error { held = d.transferred(s); return nil })
	if !held {
		q.addDone(s)
	}
}

// stopRings completes what the rings still hold, once the loops returned
// (nothing submits any more and the rings are stopAll's), and closes them.
// The kernel ends every request it took; a read or write of a file never
// waits for anything the device is to do.
func (st *activeState) stopRings() {
	for _, q := range st.queues {
		if q == nil || q.ring == nil {
			continue
		}
		for q.ring.inflight > 0 {
			if err := q.ring.ring.Wait(); err != nil {
				// Wait fails only on a closed or broken ring, which
				// nothing closes before this returns; do not spin.
				time.Sleep(time.Millisecond)
			}
			q.reapRing()
			q.publish()
		}
	}
}

// closeRings closes every ring and its eventfd (after stopRings, or
// before any loop started).
func (st *activeState) closeRings() {
	for _, q := range st.queues {
		if q != nil && q.ring != nil {
			q.ring.ring.Close()
			unix.Close(q.ring.efd)
			q.ring = nil
		}
	}
}
