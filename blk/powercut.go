package blk

import (
	"errors"
	"fmt"
	"sync"
)

// ErrPowerLost is returned by every call to a VolatileCache after its power
// was cut, and by calls that were in progress when it was: none of them
// completed.
var ErrPowerLost = errors.New("blk: power lost")

// DefaultMaxUnstableBytes is the bound on unstable data a VolatileCache
// keeps when its options do not set one.
const DefaultMaxUnstableBytes = 64 << 20

// VolatileCacheOptions configure a VolatileCache.
type VolatileCacheOptions struct {
	// MaxUnstableBytes bounds the bytes of unstable writes the cache keeps
	// (0: DefaultMaxUnstableBytes). When a new write would exceed it, the
	// oldest completed unstable writes are destaged (made stable) first, as
	// a real disk may do at any time; a write larger than the bound is
	// written through (stable as soon as it completes).
	MaxUnstableBytes int64
}

// VolatileCacheStats are the counters of a VolatileCache.
type VolatileCacheStats struct {
	// Writes counts writes, discards and write-zeroes accepted.
	Writes uint64 `json:"writes"`
	// Syncs counts Sync calls that completed.
	Syncs uint64 `json:"syncs"`
	// UnstableWrites and UnstableBytes are the writes a power cut could
	// lose now (including writes still in progress).
	UnstableWrites int `json:"unstable_writes"`
	// UnstableBytes is the size of those writes.
	UnstableBytes int64 `json:"unstable_bytes"`
	// Destaged counts writes made stable early to respect the bound.
	Destaged uint64 `json:"destaged"`
	// WrittenThrough counts writes larger than the bound, which were
	// stable at completion.
	WrittenThrough uint64 `json:"written_through"`
	// PowerCut is true once the power was cut (the cache is frozen).
	PowerCut bool `json:"power_cut"`
}

// VolatileCache is a Backend that behaves like a disk with a volatile
// write cache in front of another Backend (the "platter"): a write that no
// completed Sync covers is unstable, and PowerCut decides, by a policy and
// a seed, which unstable writes the platter keeps.
//
// # The durability rule
//
// A Sync makes stable exactly the writes (WriteAt, Discard, WriteZeroes)
// that completed before Sync was called — the virtio rule, and the strict
// reading of the Backend contract: a write that completes while a Sync is
// in progress is not covered by it, even when the Sync returns later. A
// write-through cache mode needs no special case: the device calls Sync
// after each write and completes the request after the Sync, so the write
// is stable before the guest sees it complete. Reads always see the newest
// data. A Sync, or the power cut, that has not returned when the power is
// cut covers nothing.
//
// # Representation: an undo log
//
// Every write goes to the lower Backend at once; before it does, the cache
// reads the bytes it will overwrite (the pre-image) and keeps them with
// the write's sequence number until the write is stable. At the cut, the
// policy decides per write (or per atomic unit) what survives, and the
// cache puts pre-images back where it must. Rejected alternative: an
// overlay that keeps new data in memory and applies it when stable. The
// undo log was chosen because:
//
//   - Discard and write-zeroes are writes too, and what a discard leaves is
//     up to the lower Backend (old data or zeroes). An overlay would have to
//     guess it; the undo log lets the lower Backend do whatever it does and
//     only remembers what was there before.
//   - Reads need no merging of cached data over the platter: the lower
//     Backend always holds the newest data, so ReadAt is a plain pass
//     through, exactly as fast and exactly as correct as the lower one.
//   - A Sync in flight at the cut covers nothing, so the writes it was
//     making durable must still be losable: with an overlay destaged by
//     Sync they would already be on the platter without their old
//     contents.
//
// The cost is a read of the old contents before each write, and memory for
// the pre-images of unstable writes, bounded by MaxUnstableBytes.
//
// # Overlapping writes
//
// Writes to overlapping ranges are serialised (a write waits until no
// overlapping write is in progress, then takes the next sequence number),
// so for every sector the writes covering it are applied, complete and
// become stable in sequence order, and each write's pre-image is exactly
// the data the previous write covering that sector left. A power cut keeps
// a set K of unstable writes (or of their atomic units); the image it
// leaves has, at every sector, the data of the newest write in stable ∪ K
// covering it, or the stable data if there is none — as if the kept writes
// were applied in submission order to the stable image. That is a state a
// real disk can produce (its cache holds the newest data for a sector, and
// older data only if destaged before it was overwritten); a lost newer
// write never resurrects older data over a kept newer one, and a kept
// older write never overwrites a kept newer one. The cut walks the
// unstable writes newest first: the lost parts of a write get its
// pre-image back, except where a newer kept write has already decided the
// bytes; the kept parts decide their bytes. The result equals the redo
// construction above (which ReplayWriteLog uses), as the tests check.
//
// # Bounded memory
//
// Pre-images are the only per-write memory besides a small fixed record.
// When keeping one more would exceed MaxUnstableBytes, the oldest completed
// unstable writes are destaged (marked stable, pre-image dropped) in
// sequence order, which keeps every sector's stable writes a prefix of its
// history; if writes still in progress hold the memory, the new write waits
// for them. A write larger than the bound (mkfs discarding a whole disk)
// first destages the older writes it overlaps and is then written through.
type VolatileCache struct {
	lower Backend
	max   int64

	mu      sync.Mutex
	cond    sync.Cond
	frozen  bool          // no call completes any more
	cut     bool          // PowerCut has run (or is running)
	frozenC chan struct{} // closed when frozen
	active  int           // calls into lower in progress
	waiters int           // goroutines in cond.Wait

	// recs[head:] are the writes not yet dropped, in sequence order:
	// recs[head+i] has sequence number first+i. Stable records are dropped
	// from the front by advancing head; the array is reused, so a steady
	// stream of writes allocates no records.
	recs  []undoRec
	head  int
	first uint64
	// inflight are the ranges of writes in progress (a small set: at most
	// the device's queue depth).
	inflight []span
	// doneStamp counts completed writes; a record's done field is its
	// value at completion. A Sync covers records with done <= the value
	// at its call.
	doneStamp uint64
	retained  int64 // pre-image bytes held or reserved by unstable records
	unstable  int   // unstable records holding a pre-image

	free      [][]byte // recycled pre-image buffers
	freeBytes int64

	stats VolatileCacheStats
	vecs  []*Vec // recycled one-buffer Vecs for reading pre-images
}

// writeOp is the kind of a write.
type writeOp uint8

const (
	opWrite writeOp = iota
	opDiscard
	opWriteZeroes
)

func (o writeOp) String() string {
	switch o {
	case opDiscard:
		return OpDiscard
	case opWriteZeroes:
		return OpWriteZeroes
	}
	return OpWrite
}

// undoRec is one write the cache has accepted.
type undoRec struct {
	off, n int64
	pre    []byte // old contents while unstable; nil when written through
	done   uint64 // completion stamp; 0 while in progress
	op     writeOp
	stable bool
}

// span is the range of a write in progress.
type span struct {
	seq    uint64
	off, n int64
}

// NewVolatileCache puts a volatile write cache in front of lower. Data
// already on lower is stable. The cache owns lower: Close closes it.
func NewVolatileCache(lower Backend, o VolatileCacheOptions) (*VolatileCache, error) {
	if o.MaxUnstableBytes < 0 {
		return nil, fmt.Errorf("blk: volatile cache: negative MaxUnstableBytes %d", o.MaxUnstableBytes)
	}
	if o.MaxUnstableBytes == 0 {
		o.MaxUnstableBytes = DefaultMaxUnstableBytes
	}
	c := &VolatileCache{lower: lower, max: o.MaxUnstableBytes, first: 1, frozenC: make(chan struct{})}
	c.cond.L = &c.mu
	return c, nil
}

// Size returns the size of the lower Backend.
func (c *VolatileCache) Size() int64 { return c.lower.Size() }

// ReadAt reads the newest data.
func (c *VolatileCache) ReadAt(v *Vec, off int64) error {
	if err := c.enter(); err != nil {
		return err
	}
	err := c.lower.ReadAt(v, off)
	if c.leave() {
		return ErrPowerLost
	}
	return err
}

// WriteAt writes v at off; the write is unstable until a Sync called after
// it returns has completed.
func (c *VolatileCache) WriteAt(v *Vec, off int64) error {
	return c.write(opWrite, v, off, v.Len(), false)
}

// Discard passes the discard to the lower Backend; like a write, it is
// unstable until covered by a Sync, and a power cut may undo it.
func (c *VolatileCache) Discard(off, n int64) error {
	return c.write(opDiscard, nil, off, n, false)
}

// WriteZeroes zeroes [off, off+n); like a write, it is unstable until
// covered by a Sync.
func (c *VolatileCache) WriteZeroes(off, n int64, unmap bool) error {
	return c.write(opWriteZeroes, nil, off, n, unmap)
}

// Sync makes stable every write that completed before it was called, once
// the lower Backend's Sync has returned.
func (c *VolatileCache) Sync() error {
	c.mu.Lock()
	if c.frozen {
		c.mu.Unlock()
		return ErrPowerLost
	}
	covered := c.doneStamp
	c.active++
	c.mu.Unlock()

	err := c.lower.Sync()

	c.mu.Lock()
	defer c.mu.Unlock()
	c.active--
	c.wake()
	if c.frozen {
		return ErrPowerLost
	}
	if err != nil {
		return err
	}
	c.stats.Syncs++
	live := c.recs[c.head:]
	for i := range live {
		r := &live[i]
		if !r.stable && r.done != 0 && r.done <= covered {
			c.stabilize(r)
		}
	}
	c.compact()
	return nil
}

// Close closes the lower Backend. It does not Sync.
func (c *VolatileCache) Close() error { return c.lower.Close() }

// Stats returns the cache's counters.
func (c *VolatileCache) Stats() VolatileCacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.UnstableWrites = c.unstable
	s.UnstableBytes = c.retained
	s.PowerCut = c.frozen
	return s
}

// Freeze is the instant of a power cut: from now on no call completes (calls
// in progress and later ones return ErrPowerLost), and what the unstable
// writes become is left to PowerCut. A trigger that must stop the disk at
// an exact point (the N-th write, the N-th flush) calls Freeze there, and
// PowerCut once the machine has stopped. It returns false if the cache was
// already frozen.
func (c *VolatileCache) Freeze() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.freeze()
}

// Frozen returns a channel closed when the cache freezes.
func (c *VolatileCache) Frozen() <-chan struct{} { return c.frozenC }

func (c *VolatileCache) freeze() bool {
	if c.frozen {
		return false
	}
	c.frozen = true
	close(c.frozenC)
	c.cond.Broadcast()
	return true
}

// PowerCut cuts the power: it freezes the cache (if Freeze has not), waits
// for the calls in progress on the lower Backend to return, then lets p
// decide, drawing from seed, which unstable writes the lower Backend keeps,
// restores the old contents under the rest, and syncs the lower Backend so
// the crash image is durable. The report lists every unstable write and its
// fate. The cache refuses everything afterwards; only Close remains useful.
// On an error restoring, the report is returned with the error and the
// lower Backend holds a partially restored image. A second PowerCut returns
// ErrPowerLost.
func (c *VolatileCache) PowerCut(p PowerCutPolicy, seed uint64) (*PowerCutReport, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cut {
		return nil, fmt.Errorf("%w: the power was already cut", ErrPowerLost)
	}
	c.cut = true
	c.freeze()
	for c.active > 0 {
		c.wait()
	}

	ws := make([]PowerCutWrite, 0, c.unstable)
	idx := make([]int, 0, c.unstable)
	live := c.recs[c.head:]
	for i := range live {
		r := &live[i]
		if r.stable || r.pre == nil {
			continue
		}
		ws = append(ws, PowerCutWrite{Seq: c.first + uint64(i), Op: r.op.String(), Offset: r.off, Length: r.n})
		idx = append(idx, i)
	}
	rep, err := planPowerCut(p, seed, ws)
	if err != nil {
		return nil, err
	}
	// Newest first: restore lost bytes no newer kept write has decided.
	var decided extentSet
	v := NewVec(1)
	for j := len(rep.Writes) - 1; j >= 0; j-- {
		w := &rep.Writes[j]
		r := &live[idx[j]]
		for _, e := range w.lostExtents() {
			err := decided.gaps(e, func(g Extent) error {
				v.Reset()
				if err := v.Append(r.pre[g.Offset-r.off : g.End()-r.off]); err != nil {
					return err
				}
				return c.lower.WriteAt(v, g.Offset)
			})
			if err != nil {
				return rep, fmt.Errorf("blk: power cut: restore old contents of [%d, +%d) (write %d): %w", e.Offset, e.Length, w.Seq, err)
			}
		}
		for _, e := range w.keptExtents() {
			decided.add(e)
		}
	}
	clear(c.recs)
	c.recs, c.head, c.free, c.freeBytes, c.retained, c.unstable = nil, 0, nil, 0, 0, 0
	if err := c.lower.Sync(); err != nil {
		return rep, fmt.Errorf("blk: power cut: sync crash image: %w", err)
	}
	return rep, nil
}

// enter registers a call into lower, refusing it after the cut.
func (c *VolatileCache) enter() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen {
		return ErrPowerLost
	}
	c.active++
	return nil
}

// leave ends a call registered by enter and reports whether the power was
// cut meanwhile.
func (c *VolatileCache) leave() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.active--
	c.wake()
	return c.frozen
}

func (c *VolatileCache) wait() {
	c.waiters++
	c.cond.Wait()
	c.waiters--
}

func (c *VolatileCache) wake() {
	if c.waiters > 0 {
		c.cond.Broadcast()
	}
}

// write runs one write of any kind: admit (order and memory), save the
// pre-image, apply to lower, complete.
func (c *VolatileCache) write(op writeOp, v *Vec, off, n int64, unmap bool) error {
	if off < 0 || n < 0 || off+n > c.lower.Size() {
		return fmt.Errorf("blk: volatile cache: %s [%d, +%d) outside the %d-byte disk", op, off, n, c.lower.Size())
	}
	if n == 0 {
		if err := c.enter(); err != nil {
			return err
		}
		err := c.apply(op, v, off, n, unmap)
		if c.leave() {
			return ErrPowerLost
		}
		return err
	}

	c.mu.Lock()
	seq, err := c.admit(op, off, n)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	var pre []byte
	var pv *Vec
	if r := c.rec(seq); !r.stable {
		pre = c.getBuf(n)
		r.pre = pre
		pv = c.getVec()
	}
	c.active++
	c.mu.Unlock()

	if pre != nil {
		pv.Reset()
		err := pv.Append(pre)
		if err == nil {
			err = c.lower.ReadAt(pv, off)
		}
		pv.Reset()
		if err != nil {
			c.mu.Lock()
			c.vecs = append(c.vecs, pv)
			r := c.rec(seq)
			c.stabilize(r) // nothing was written: a void record
			r.n = 0
			c.complete(seq)
			c.mu.Unlock()
			return fmt.Errorf("blk: volatile cache: read old contents of [%d, +%d): %w", off, n, err)
		}
	}
	err = c.apply(op, v, off, n, unmap)

	c.mu.Lock()
	if pv != nil {
		c.vecs = append(c.vecs, pv)
	}
	frozen := c.frozen
	// A failed write may have changed part of the range: it stays in the
	// history like a completed one, so a cut can still undo it.
	c.complete(seq)
	c.mu.Unlock()
	if frozen {
		return ErrPowerLost
	}
	return err
}

func (c *VolatileCache) apply(op writeOp, v *Vec, off, n int64, unmap bool) error {
	switch op {
	case opDiscard:
		return c.lower.Discard(off, n)
	case opWriteZeroes:
		return c.lower.WriteZeroes(off, n, unmap)
	}
	return c.lower.WriteAt(v, off)
}

// getVec returns a one-buffer Vec for reading a pre-image: as many exist
// as writes were ever in progress at once. c.mu is held.
func (c *VolatileCache) getVec() *Vec {
	if n := len(c.vecs); n > 0 {
		v := c.vecs[n-1]
		c.vecs = c.vecs[:n-1]
		return v
	}
	return NewVec(1)
}

// admit waits until no overlapping write is in progress and the new
// write's pre-image fits the bound (destaging old writes as needed), then
// appends its record and returns its sequence number. c.mu is held.
func (c *VolatileCache) admit(op writeOp, off, n int64) (uint64, error) {
	for {
		if c.frozen {
			return 0, ErrPowerLost
		}
		if c.overlapsInflight(off, n) {
			c.wait()
			continue
		}
		keep := n <= c.max
		if keep && c.retained+n > c.max {
			c.destage(n)
			if c.retained+n > c.max {
				c.wait() // writes in progress hold the memory
				continue
			}
		}
		seq := c.first + uint64(len(c.recs)-c.head)
		r := undoRec{off: off, n: n, op: op}
		if keep {
			c.retained += n
			c.unstable++
		} else {
			c.stabilizeOverlapping(off, n)
			r.stable = true
			c.stats.WrittenThrough++
		}
		if len(c.recs) == cap(c.recs) && c.head >= len(c.recs)/2 {
			// Reuse the dropped front instead of growing the array.
			kept := copy(c.recs, c.recs[c.head:])
			clear(c.recs[kept:])
			c.recs, c.head = c.recs[:kept], 0
		}
		c.recs = append(c.recs, r)
		c.inflight = append(c.inflight, span{seq: seq, off: off, n: n})
		c.stats.Writes++
		return seq, nil
	}
}

// complete marks write seq done and no longer in progress. c.mu is held.
func (c *VolatileCache) complete(seq uint64) {
	c.doneStamp++
	c.rec(seq).done = c.doneStamp
	for i, s := range c.inflight {
		if s.seq == seq {
			last := len(c.inflight) - 1
			c.inflight[i] = c.inflight[last]
			c.inflight = c.inflight[:last]
			break
		}
	}
	c.active--
	c.wake()
	c.compact()
}

func (c *VolatileCache) rec(seq uint64) *undoRec { return &c.recs[c.head+int(seq-c.first)] }

func (c *VolatileCache) overlapsInflight(off, n int64) bool {
	for _, s := range c.inflight {
		if off < s.off+s.n && s.off < off+n {
			return true
		}
	}
	return false
}

// destage makes the oldest completed unstable writes stable until need
// more bytes fit the bound or none is left. c.mu is held.
func (c *VolatileCache) destage(need int64) {
	for i := c.head; i < len(c.recs); i++ {
		if c.retained+need <= c.max {
			break
		}
		r := &c.recs[i]
		if !r.stable && r.done != 0 {
			c.stabilize(r)
			c.stats.Destaged++
		}
	}
	c.compact()
}

// stabilizeOverlapping destages the unstable writes overlapping [off,
// off+n) (all complete: the caller checked none is in progress), so a
// write-through write over them keeps each sector's stable writes a prefix
// of its history. c.mu is held.
func (c *VolatileCache) stabilizeOverlapping(off, n int64) {
	for i := c.head; i < len(c.recs); i++ {
		r := &c.recs[i]
		if !r.stable && off < r.off+r.n && r.off < off+n {
			c.stabilize(r)
			c.stats.Destaged++
		}
	}
}

// stabilize drops r's pre-image: r can no longer be lost. c.mu is held.
func (c *VolatileCache) stabilize(r *undoRec) {
	if r.stable {
		return
	}
	r.stable = true
	c.retained -= r.n
	c.unstable--
	c.putBuf(r.pre)
	r.pre = nil
}

// compact drops stable, completed records from the front. c.mu is held.
func (c *VolatileCache) compact() {
	for c.head < len(c.recs) && c.recs[c.head].stable && c.recs[c.head].done != 0 {
		c.recs[c.head] = undoRec{}
		c.head++
		c.first++
	}
	if c.head == len(c.recs) {
		c.recs, c.head = c.recs[:0], 0
	}
}

// Pre-image buffers are recycled, so a steady stream of writes allocates
// nothing once the cache is warm. The free list is bounded in count and
// bytes.
const (
	maxFreeBufs  = 256
	maxFreeBytes = 16 << 20
)

func (c *VolatileCache) getBuf(n int64) []byte {
	for i, b := range c.free {
		if int64(cap(b)) >= n && int64(cap(b)) <= 2*n {
			last := len(c.free) - 1
			c.free[i] = c.free[last]
			c.free[last] = nil
			c.free = c.free[:last]
			c.freeBytes -= int64(cap(b))
			return b[:n]
		}
	}
	return make([]byte, n)
}

func (c *VolatileCache) putBuf(b []byte) {
	if b == nil || len(c.free) >= maxFreeBufs || c.freeBytes+int64(cap(b)) > maxFreeBytes {
		return
	}
	c.free = append(c.free, b)
	c.freeBytes += int64(cap(b))
}

var _ Backend = (*VolatileCache)(nil)
