package blk

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/virtio"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// The I/O engine. Each queue has a loop goroutine that sleeps in poll(2) on
// the queue's kick eventfd and the device's stop eventfd, pops every
// available chain into a preallocated request slot, parses it, and hands it
// to a worker pool shared by all queues (requests that need no I/O complete
// at once; FLUSHes go to the device's single flusher goroutine, which
// merges them). Workers execute requests on the backend with vectored I/O
// straight into guest memory. Completions are batched per queue: finished
// requests are collected, and whoever publishes adds them all to the used
// ring, publishes once and interrupts at most once per batch: the queue
// loop publishes what it completed itself after each pass over the ring,
// workers and the flusher publish after each request or batch, and
// concurrent publishers combine.
//
// Nothing on this path allocates: slots (chain descriptors, data Vec with
// its iovec array, segment array) are made at Activate, one per ring entry,
// and circulate through channels of pointers.
//
// Guest memory can fault. A vhost-user frontend that truncates the file
// behind its memory makes every access to the lost part raise SIGBUS, and
// virtio.Queue and this package touch guest memory directly (rings, chain
// buffers, status bytes), not only through guestmem's accessors. So every
// goroutine here touches guest memory only under the Memory's fault guard,
// taken once per unit of work (a queue pass, a request, a flush batch, a
// publication), never per access. A fault abandons that unit: the request
// it was serving is still completed for the in-flight count, so Reset never
// waits for it, and the activation is marked faulted, after which requests
// are accounted without touching guest memory again. The Memory's fault
// handler tells its owner (a vhost-user session ends), which resets the
// device.

// slot is one request in flight.
type slot struct {
	q *queueRunner
	// idx is the slot's index in q.all (the ring's user data).
	idx uint64
	// inRing is set while the request is io_uring's: stored before it is
	// submitted, loaded when its completion is reaped. The kernel orders
	// the two; the atomic also shows the order to the race detector,
	// which cannot see through the ring.
	inRing atomic.Bool
	chain  virtio.Chain
	req    *request
	// mark is the write generation a FLUSH must cover, taken when it was
	// popped (submitted).
	mark uint64
	// written is the used length: bytes written into device-writable
	// buffers, status byte included.
	written uint32
}

// queueRunner serves one virtqueue.
type queueRunner struct {
	d     *Device
	st    *activeState
	idx   int
	queue *virtio.Queue
	mem   *guestmem.Memory
	irq   virtio.Notifier
	pfds  []unix.PollFd
	kbuf  [8]byte
	free  chan *slot
	// all are the queue's slots, free or not.
	all []*slot
	// ring is the queue's io_uring (aio=io_uring), nil on threads.
	ring *ringEngine
	// spare is a free slot the loop holds between passes.
	spare *slot
	// broken is set when the ring itself is unusable (avail index moved
	// too far, or its memory faulted); the queue then waits for a reset.
	broken bool
	// cur is the request the loop is dispatching: popped and counted in
	// flight, but neither handed to a worker or the flusher nor queued for
	// publication. A fault in the middle leaves it to the loop to complete.
	cur *slot

	// npending mirrors len(pending), so publishing nothing costs no lock.
	npending   atomic.Int32
	cmu        sync.Mutex
	pending    []*slot // completed, not yet added to the used ring
	batch      []*slot // the batch being published
	publishing bool
}

// activeState is everything that exists between Activate and Reset.
type activeState struct {
	d      *Device
	mem    *guestmem.Memory
	queues []*queueRunner // indexed by queue number; nil when not enabled
	work   chan *slot
	// flushes feeds the flusher; flushBatch is its preallocated batch.
	flushes    chan *slot
	flushBatch []*slot
	flusherWG  sync.WaitGroup
	stop       chan struct{}
	stopFD     int
	stopOnce   sync.Once
	loops      sync.WaitGroup
	workers    sync.WaitGroup
	inflight   sync.WaitGroup
	// held are the requests an error policy of stop holds (errpolicy.go).
	heldMu sync.Mutex
	held   []*slot
	// closing is set (under heldMu) once Reset began: nothing more is held.
	closing bool
	// faulted is set once guest memory faulted under a guard: its backing
	// is gone, so nothing is read from or written to it any more, and
	// requests still in flight are accounted without being executed or
	// published.
	faulted atomic.Bool
}

// start builds the runners and starts the workers and, with loops, one
// loop goroutine per queue (tests drive the queues by hand without them).
func (d *Device) start(a virtio.Activation, loops bool) (*activeState, error) {
	stopFD, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("blk: stop eventfd: %w", err)
	}
	st := &activeState{d: d, mem: a.Memory, stop: make(chan struct{}), stopFD: stopFD}
	total := 0
	st.queues = make([]*queueRunner, len(a.Queues))
	for i, qb := range a.Queues {
		if qb.Queue == nil {
			continue
		}
		n := int(qb.Queue.Size())
		q := &queueRunner{
			d: d, st: st, idx: i, queue: qb.Queue, mem: a.Memory, irq: qb.Interrupt,
			pfds: []unix.PollFd{
				{Fd: int32(qb.Kick), Events: unix.POLLIN},
				{Fd: int32(stopFD), Events: unix.POLLIN},
			},
			free:    make(chan *slot, n),
			pending: make([]*slot, 0, n),
			batch:   make([]*slot, 0, n),
		}
		for i := range n {
			s := &slot{
				q:     q,
				idx:   uint64(i),
				chain: virtio.Chain{Descriptors: make([]virtio.Descriptor, 0, d.chainCap())},
				req:   newRequest(d.chainCap()),
			}
			q.all = append(q.all, s)
			q.free <- s
		}
		st.queues[i] = q
		total += n
	}
	if total == 0 {
		unix.Close(stopFD)
		return nil, fmt.Errorf("%w: no enabled queue", ErrActivation)
	}
	st.work = make(chan *slot, total)
	st.flushes = make(chan *slot, total)
	st.flushBatch = make([]*slot, 0, total)
	st.held = make([]*slot, 0, total)
	d.lastAIO.Store(d.newRings(st, loops))
	st.flusherWG.Add(1)
	go st.flusher()
	for range d.workers {
		st.workers.Add(1)
		go st.worker()
	}
	for _, q := range st.queues {
		if q != nil && loops {
			st.loops.Add(1)
			go q.loop()
		}
	}
	return st, nil
}

// requestStop tells the queue loops to stop: a loop sleeping in poll wakes
// up, one popping chains stops before its next pop. Calling it again does
// nothing.
func (st *activeState) requestStop() {
	st.stopOnce.Do(func() {
		close(st.stop)
		var one [8]byte
		one[0] = 1
		unix.Write(st.stopFD, one[:])
	})
}

// stopAll ends every goroutine of the activation: loops first, then, once
// every request in flight has completed, the workers.
func (st *activeState) stopAll() {
	st.requestStop()
	st.loops.Wait()
	st.closeHeld()
	st.stopRings()
	st.inflight.Wait()
	st.closeRings()
	close(st.work)
	close(st.flushes)
	st.workers.Wait()
	st.flusherWG.Wait()
	unix.Close(st.stopFD)
}

// loop is a queue's goroutine.
func (q *queueRunner) loop() {
	defer q.st.loops.Done()
	for {
		if !q.broken && !q.pass() {
			return
		}
		q.settleRing()
		_, err := unix.Poll(q.pfds, -1)
		for err == unix.EINTR {
			_, err = unix.Poll(q.pfds, -1)
		}
		if err != nil {
			// Poll fails only on bad arguments; nothing sensible is
			// left but waiting for the reset.
			<-q.st.stop
			return
		}
		if q.pfds[1].Revents != 0 {
			return
		}
		if q.pfds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			<-q.st.stop
			return
		}
		if q.pfds[0].Revents&unix.POLLIN != 0 {
			unix.Read(int(q.pfds[0].Fd), q.kbuf[:])
		}
	}
}

// drain pops and dispatches every available chain, with notifications
// disabled meanwhile, and returns false when the device is stopping. When
// the ring runs dry it keeps polling it for up to the device's poll
// interval before it re-enables notifications (adaptive polling, as QEMU's
// iothreads do): under load the next chain usually arrives within
// microseconds, and picking it up without a kick saves the driver its
// notification and this loop an OS-level wake-up.
func (q *queueRunner) drain() bool {
	if err := q.queue.DisableNotifications(); err != nil {
		q.fail(err)
		return true
	}
	var idleSince time.Time
	for {
		n, ok := q.popAll()
		q.submitRing()
		if !ok {
			// popAll completes bad chains itself: publish them now, or
			// no worker ever will and Reset waits for them forever.
			q.publish()
			return false
		}
		if q.broken {
			return true
		}
		q.reapRing()
		q.publish()
		if n > 0 {
			idleSince = time.Time{}
			continue
		}
		if q.d.pollInterval > 0 {
			if idleSince.IsZero() {
				idleSince = time.Now()
			}
			if time.Since(idleSince) < q.d.pollInterval {
				runtime.Gosched()
				continue
			}
		}
		more, err := q.queue.EnableNotifications()
		if err != nil {
			q.fail(err)
			return true
		}
		if !more {
			return true
		}
		if err := q.queue.DisableNotifications(); err != nil {
			q.fail(err)
			return true
		}
		idleSince = time.Time{}
	}
}

// pass runs drain under the fault guard, and returns false when the device
// is stopping. A fault ends the pass where it was: the request being
// dispatched, if any, is completed, and the queue serves nothing more until
// the reset the fault handler asks for.
func (q *queueRunner) pass() bool {
	ok := true
	faulted := q.st.guard(func() error { ok = q.drain(); return nil })
	q.submitRing() // what a fault interrupted was prepared: it completes
	if faulted {
		q.broken = true
		if s := q.cur; s != nil {
			q.cur = nil
			q.addDone(s)
		}
		q.publish()
	}
	return ok
}

// popAll pops and dispatches chains until the ring is empty and returns how
// many it popped; ok is false when the device is stopping. It checks for
// that before every pop, so Reset waits for one chain at most, not for a
// pass over a ring full of long ones.
func (q *queueRunner) popAll() (n int, ok bool) {
	for {
		select {
		case <-q.st.stop:
			return n, false
		default:
		}
		if q.spare == nil {
			if q.spare = q.getSlot(); q.spare == nil {
				return n, false
			}
		}
		// The slot stays the spare until a chain is in it: polling an
		// empty ring then costs no channel operations, and a pop that
		// faults loses nothing.
		s := q.spare
		got, err := q.queue.Pop(&s.chain)
		if err != nil && !got {
			// The ring itself is broken (or gone): nothing can be
			// popped safely any more.
			q.fail(err)
			return n, true
		}
		if !got {
			return n, true
		}
		q.spare = nil
		n++
		q.st.inflight.Add(1)
		q.cur = s
		if err != nil {
			q.d.badChain(s)
			q.addDone(s)
		} else {
			q.d.submit(s)
		}
		// Nothing after the hand-off above touches guest memory.
		q.cur = nil
	}
}

// fail marks the queue broken: the guest corrupted its ring, counted once
// as an invalid request, or its memory faulted. The queue serves nothing
// until reset.
func (q *queueRunner) fail(err error) {
	q.broken = true
	if errors.Is(err, guestmem.ErrFault) {
		q.st.faulted.Store(true)
	} else {
		q.d.c.invalid.Add(1)
	}
	q.publish()
}

// getSlot returns a free request slot, waiting for one if every slot is in
// flight (possible only with a guest that makes the same head available
// twice), or nil when the device is stopping.
func (q *queueRunner) getSlot() *slot {
	select {
	case s := <-q.free:
		return s
	default:
	}
	// Our own completions must not wait for us.
	q.publish()
	select {
	case s := <-q.free:
		return s
	case <-q.st.stop:
		return nil
	}
}

// addDone queues a finished request for publication.
func (q *queueRunner) addDone(s *slot) {
	q.cmu.Lock()
	q.pending = append(q.pending, s)
	q.npending.Add(1)
	q.cmu.Unlock()
}

// publish adds every finished request to the used ring, publishes them with
// one used->idx update and interrupts the driver at most once (if it asked
// to be). Concurrent callers combine: one publishes, the others return at
// once and their requests go out in its next round.
func (q *queueRunner) publish() {
	if q.npending.Load() == 0 {
		return
	}
	q.cmu.Lock()
	if q.publishing || len(q.pending) == 0 {
		q.cmu.Unlock()
		return
	}
	q.publishing = true
	for len(q.pending) > 0 {
		q.pending, q.batch = q.batch[:0], q.pending
		q.npending.Store(0)
		q.cmu.Unlock()
		q.pushUsed()
		for i, s := range q.batch {
			q.batch[i] = nil
			s.req.reset() // drop references to guest memory
			q.free <- s
			q.st.inflight.Done()
		}
		q.cmu.Lock()
	}
	q.publishing = false
	q.cmu.Unlock()
}

// pushUsed adds the batch to the used ring, publishes it and interrupts the
// driver if it asked to be, all under the fault guard, so that publish goes
// on to account the batch whatever happened to the ring. Once guest memory
// faulted, it does nothing: the requests are lost to the guest either way.
func (q *queueRunner) pushUsed() {
	if q.st.faulted.Load() {
		return
	}
	q.st.guard(func() error {
		for _, s := range q.batch {
			// AddUsed fails only on a used ring outside guest memory,
			// which NewQueue already ruled out.
			q.queue.AddUsed(s.chain.Head, s.written)
		}
		notify, err := q.queue.PublishUsed()
		if err == nil {
			q.d.c.usedBatches.Add(1)
		}
		if err == nil && notify {
			q.d.c.interrupts.Add(1)
			q.irq.Notify()
		}
		return err
	})
}

// guard runs fn under the guest memory's fault guard (guestmem's
// Memory.Guard, which also reports the fault to the memory's handler) and
// reports whether guest memory faulted, in fn's code or in an accessor
// whose error fn returned; fn's other errors are ignored. A fault marks the
// activation faulted.
func (st *activeState) guard(fn func() error) (faulted bool) {
	if err := st.mem.Guard(fn); errors.Is(err, guestmem.ErrFault) {
		st.faulted.Store(true)
		return true
	}
	return false
}

// worker executes requests until the work channel closes. Each finished
// request is published at once: deferring it while more work is queued
// would hold it hostage to whatever the next request costs (a disk read, a
// host sync), and measured no faster. Batching comes from publish's
// combining: requests finishing while another goroutine publishes go out
// together in its next round, with one used->idx update and at most one
// interrupt.
//
// A request whose memory faulted is completed all the same, for the
// in-flight count; once the activation faulted, requests are not executed
// any more, as their buffers may be gone too.
func (st *activeState) worker() {
	defer st.workers.Done()
	for s := range st.work {
		held := false
		if !st.faulted.Load() {
			st.guard(func() error { held = st.d.execute(s); return nil })
		}
		if held {
			// Resume may already have handed it to another worker:
			// it is not ours to touch any more.
			continue
		}
		s.q.addDone(s)
		s.q.publish()
	}
}

// flusher serves every FLUSH of the device that needs a host sync. It
// takes the FLUSHes queued so far as one batch and makes durable the writes
// the newest of them covers (the others cover no more) with one sync, or
// none if nothing was written since the last: FLUSHes that arrive while a
// sync is in flight wait in the channel and share the next one. Keeping
// FLUSHes off the worker pool means a burst of them never leaves reads and
// writes waiting for a worker. Write-through writes sync from the workers;
// the syncer merges those with the flusher's syncs.
func (st *activeState) flusher() {
	defer st.flusherWG.Done()
	d := st.d
	for s := range st.flushes {
		batch := append(st.flushBatch[:0], s)
	more:
		for {
			select {
			case s, ok := <-st.flushes:
				if !ok {
					break more
				}
				batch = append(batch, s)
			default:
				break more
			}
		}
		var target uint64
		for _, s := range batch {
			target = max(target, s.mark)
		}
		out, err := d.syncer.syncTo(target)
		// completeFlushes hands each FLUSH on (queued for publication,
		// or held by the error policy) and counts them in handed; the
		// ones a guest memory fault left are queued here.
		handed := 0
		if !st.faulted.Load() {
			st.guard(func() error { d.completeFlushes(batch, out, err, &handed); return nil })
		}
		for _, s := range batch[handed:] {
			s.q.addDone(s)
		}
		for i, s := range batch {
			s.q.publish() // s.q never changes: safe for a held slot too
			batch[i] = nil
		}
	}
}

// completeFlushes writes the status of a batch of FLUSHes whose host sync
// ended with out and err, counts them, and hands each on: queued for
// publication, or held by the error policy (werror=stop), after which it
// is not touched again (Resume may re-queue it at once). *handed counts
// the FLUSHes handed on.
func (d *Device) completeFlushes(batch []*slot, out syncOutcome, err error, handed *int) {
	for i, s := range batch {
		if err != nil {
			if !d.hostError(s, err) {
				s.q.addDone(s)
			}
			*handed = i + 1
			continue
		}
		switch {
		case out == syncElided:
			d.c.flushesElided.Add(1)
		case out == syncMerged || i > 0:
			d.c.flushesMerged.Add(1)
		}
		d.c.flushes.Add(1)
		d.complete(s, StatusOK, 1)
		s.q.addDone(s)
		*handed = i + 1
	}
}

// badChain completes a chain Pop could not walk: with IOERR when a status
// byte can be located (the last descriptor walked is device-writable), else
// unused (length 0).
func (d *Device) badChain(s *slot) {
	d.c.invalid.Add(1)
	s.written = 0
	ds := s.chain.Descriptors
	if len(ds) == 0 {
		return
	}
	last := ds[len(ds)-1]
	end := last.Addr + uint64(last.Len)
	if !last.Writable || last.Len == 0 || end < last.Addr {
		return
	}
	if b, err := s.q.mem.Slice(end-1, 1); err == nil {
		b[0] = StatusIOErr
		s.written = 1
		d.c.errors.Add(1)
	}
}

// submit parses a popped chain and dispatches it: to the workers when it
// needs the backend, else it completes it at once.
func (d *Device) submit(s *slot) {
	q := s.q
	r := s.req
	if err := parseRequest(q.mem, &s.chain, d.lim, r); err != nil {
		d.rejected(s, err)
		q.addDone(s)
		return
	}
	switch r.typ {
	case TypeGetID:
		n := min(r.data.Len(), MaxSerialLen)
		id := d.id()
		scatter(r.data.Bufs, 0, 0, id[:n])
		d.c.getIDs.Add(1)
		d.complete(s, StatusOK, uint32(n)+1)
		q.addDone(s)
		return
	case TypeFlush:
		s.mark = d.syncer.mark()
		if !d.pol.FlushSyncs() {
			d.c.flushes.Add(1)
			d.complete(s, StatusOK, 1)
			q.addDone(s)
			return
		}
	}
	if r.typ == TypeFlush {
		q.st.flushes <- s
		return
	}
	if q.toRing(s) {
		return
	}
	q.st.work <- s
}

// rejected completes a request the parser refused.
func (d *Device) rejected(s *slot, err error) {
	if s.req.status == nil {
		// Nowhere to put a status: give the chain back unused.
		d.c.invalid.Add(1)
		s.written = 0
		return
	}
	st := statusFor(err)
	if st == StatusUnsupp && errors.Is(err, ErrUnsupported) {
		d.c.unsupported.Add(1)
	} else {
		d.c.invalid.Add(1)
	}
	if st == StatusIOErr {
		d.c.errors.Add(1)
	}
	d.complete(s, st, 1)
}

// complete writes the status byte and the used length.
func (d *Device) complete(s *slot, status uint8, written uint32) {
	s.req.status[0] = status
	s.written = written
}

// execute runs a parsed request on the backend (on a worker); it reports
// whether the error policy held the request (then not completed).
func (d *Device) execute(s *slot) (held bool) {
	r := s.req
	off := int64(r.sector * SectorSize)
	var err error
	switch r.typ {
	case TypeIn:
		if err = d.backend.ReadAt(r.data, off); err == nil {
			return d.transferred(s)
		}
	case TypeOut:
		err = d.backend.WriteAt(r.data, off)
		// Even a failed write may have changed data (part of it, or a
		// fault layer's drop): the next FLUSH must sync, not be elided.
		d.syncer.wrote()
		if err == nil {
			return d.transferred(s)
		}
	case TypeDiscard, TypeWriteZeroes:
		for _, sg := range r.segs {
			o, n := int64(sg.sector*SectorSize), int64(sg.num)*SectorSize
			if n == 0 {
				continue
			}
			if r.typ == TypeDiscard {
				if d.spec.IgnoreDiscard {
					continue
				}
				err = d.backend.Discard(o, n)
			} else {
				err = d.backend.WriteZeroes(o, n, sg.flags&flagUnmap != 0)
			}
			d.syncer.wrote() // even a failed one may have changed data
			if err != nil {
				break
			}
		}
		if err == nil {
			err = d.durable()
		}
		if err == nil {
			if r.typ == TypeDiscard {
				d.c.discards.Add(1)
			} else {
				d.c.writeZeroes.Add(1)
			}
			d.complete(s, StatusOK, 1)
			return false
		}
	}
	// Host I/O error: the error policy decides (by default the guest sees
	// IOERR and the device goes on).
	return d.hostError(s, err)
}

// transferred completes a read or write whose data moved in full, on
// either engine: it counts it and writes its status. A write is made
// durable first when the cache semantics are write-through (the guest may
// have turned its write cache off while the write was in flight); a
// failed sync goes to the error policy, which reports whether it held
// the request.
func (d *Device) transferred(s *slot) (held bool) {
	r := s.req
	if r.typ == TypeIn {
		d.c.reads.Add(1)
		d.c.bytesRead.Add(uint64(r.data.Len()))
		d.complete(s, StatusOK, uint32(r.data.Len())+1)
		return false
	}
	if err := d.durable(); err != nil {
		return d.hostError(s, err)
	}
	d.c.writes.Add(1)
	d.c.bytesWritten.Add(uint64(r.data.Len()))
	d.complete(s, StatusOK, 1)
	return false
}

// durable makes the writes completed so far durable when the current cache
// semantics are write-through.
func (d *Device) durable() error {
	if !d.writeThrough() {
		return nil
	}
	_, err := d.syncer.syncTo(d.syncer.mark())
	return err
}
