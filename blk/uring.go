package blk

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/internal/uring"
)

// The io_uring engine (aio=io_uring). Each queue owns a ring: its loop
// prepares one submission per read or write it pops and submits them all
// with one io_uring_enter when the pass over the virtqueue ends, and a
// reaper goroutine of the queue waits for completions, completes every
// request of a batch and publishes the batch once (one used->idx update,
// at most one interrupt). Only the loop submits, so the submission side
// needs no lock; the completion side is the reaper's, except that the
// loop reaps right after it submitted what the kernel finished meanwhile
// (reapInline), under a mutex the two share.
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
	ringFD(v *Vec, off int64) (fd int, iov []unix.Iovec, ok bool)
	// ringFile reports whether a file is under the layer at all.
	ringFile() bool
}

// ringStop is the user data of the no-op that tells a reaper to return.
const ringStop = ^uint64(0)

// ringEngine is a queue's io_uring and its bookkeeping.
type ringEngine struct {
	ring *uring.Ring
	// slots maps user data (a slot's index in its queue) back to the slot.
	slots []*slot
	cqes  []uring.CQE
	// queued counts submissions prepared since the last Submit; entries
	// is the submission queue's size.
	queued, entries int
	// cq is held by whoever reaps: the reaper, or the loop right after
	// it submitted.
	cq   sync.Mutex
	done chan struct{}
}

// newRings gives each queue of st a ring when the device asked for
// io_uring and its backend can take requests on a descriptor. It returns
// why the activation runs on threads only ("" when it does not).
func (d *Device) newRings(st *activeState) string {
	if d.aio != AIOIOUring {
		return ""
	}
	if d.ringIO == nil || !d.ringIO.ringFile() {
		return "a layer (power-cut model, write log, crash states) sits between the device and the file"
	}
	for _, q := range st.queues {
		if q == nil {
			continue
		}
		n := uint32(cap(q.free))
		r, err := uring.New(1 << bits.Len32(n-1)) // a power of two ≥ the queue size
		if err != nil {
			st.closeRings()
			return err.Error()
		}
		q.ring = &ringEngine{ring: r, slots: q.all, entries: r.SQSpace(), cqes: make([]uring.CQE, n), done: make(chan struct{})}
	}
	for _, q := range st.queues {
		if q != nil {
			go q.reap()
		}
	}
	return ""
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
	fd, iov, ok := d.ringIO.ringFD(r.data, off)
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
			return true
		}
		q.submitRing() // the ring is full of prepared requests: send them
	}
	clear(iov)
	return false
}

// submitRing submits what the loop prepared, until the kernel took it
// all. A refusal (EAGAIN, EBUSY: the kernel short of memory) is retried
// after a pause that doubles up to 10 ms: the requests are counted in
// flight, and no later pass may be coming to submit them (the guest may be
// waiting for exactly these).
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
			q.reapInline()
			return
		}
		pause = min(max(2*pause, 50*time.Microsecond), 10*time.Millisecond)
		time.Sleep(pause)
	}
}

// reap is a queue's reaper goroutine: it completes what the ring finished,
// a batch at a time, and returns at the ringStop no-op.
func (q *queueRunner) reap() {
	re := q.ring
	defer close(re.done)
	for {
		if err := re.ring.Wait(); err != nil {
			// Wait fails only on a closed or broken ring, which
			// stopAll never leaves a reaper with; do not spin.
			time.Sleep(time.Millisecond)
			continue
		}
		re.cq.Lock()
		stop := q.completeRing()
		re.cq.Unlock()
		q.publish()
		if stop {
			return
		}
	}
}

// reapInline completes, on the loop, what the ring finished by the time
// Submit returned: the kernel serves a page-cached read or a buffered
// write within io_uring_enter, so most requests complete here, with no
// hand-off to the reaper. The reaper keeps the rest.
func (q *queueRunner) reapInline() {
	re := q.ring
	if re.cq.TryLock() {
		q.completeRing()
		re.cq.Unlock()
	}
}

// completeRing completes every request whose completion is ready (the
// caller holds the completion side) and reports whether the ringStop
// no-op was among them.
func (q *queueRunner) completeRing() (stop bool) {
	re := q.ring
	for {
		n := re.ring.Reap(re.cqes)
		if n == 0 {
			return stop
		}
		for _, c := range re.cqes[:n] {
			if c.UserData == ringStop {
				stop = true
				continue
			}
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
	st.guard(func() error { held = d.ringComplete(s); return nil })
	if !held {
		q.addDone(s)
	}
}

// ringComplete writes the status of a read or write the ring completed in
// full; it reports whether an error policy held the request.
func (d *Device) ringComplete(s *slot) (held bool) {
	r := s.req
	if r.typ == TypeIn {
		d.c.reads.Add(1)
		d.c.bytesRead.Add(uint64(r.data.Len()))
		d.complete(s, StatusOK, uint32(r.data.Len())+1)
		return false
	}
	// The guest may have turned its write cache off after the write was
	// submitted: then it is durable before it completes, as on threads.
	if err := d.durable(); err != nil {
		return d.hostError(s, err)
	}
	d.c.writes.Add(1)
	d.c.bytesWritten.Add(uint64(r.data.Len()))
	d.complete(s, StatusOK, 1)
	return false
}

// stopRings ends the reapers, once nothing is in flight, and closes the
// rings. The loops have returned, so nothing else submits.
func (st *activeState) stopRings() {
	for _, q := range st.queues {
		if q == nil || q.ring == nil {
			continue
		}
		re := q.ring
		for !re.ring.PrepNop(ringStop) {
			re.ring.Submit()
		}
		for {
			if _, err := re.ring.Submit(); err == nil || errors.Is(err, uring.ErrClosed) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		<-re.done
	}
	st.closeRings()
}

// closeRings closes every ring (after their reapers returned, or before
// any started).
func (st *activeState) closeRings() {
	for _, q := range st.queues {
		if q != nil && q.ring != nil {
			q.ring.ring.Close()
			q.ring = nil
		}
	}
}
