package blk

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// FaultBackend is the fault-injection layer: a Backend that passes every
// call to the one below it unless a fault rule (faults.go) fires, in which
// case the call fails, is dropped, returns corrupt data or waits first. It
// sits right under the device (over the write log and the power-cut
// model), so a dropped write never reaches the log, and every fired rule
// is recorded as a MARK in the write log (SetMarker) so a crash state
// knows which faults preceded it.
//
// It also keeps the account a user needs after an fsync error: a write
// that failed and was not rewritten before a later flush succeeded is a
// loss the guest may not know about (Linux reports a writeback error to
// one fsync only; a retried fsync then succeeds without the data: the
// PostgreSQL "fsyncgate"), and so is every dropped write. Stats lists them.
//
// Without rules, bad sectors or failed writes the layer costs one atomic
// load per call.
type FaultBackend struct {
	lower Backend
	start time.Time
	seed  uint64
	// active is set while the slow path has anything to do.
	active atomic.Bool

	mu     sync.Mutex
	rules  []faultRule
	mark   func(string) error
	bad    []sectorRange // sticky bad sectors
	failed []sectorRange // failed writes not rewritten yet
	losses []FaultLoss
	// unlisted counts losses and ranges beyond the bounds below.
	unlisted uint64
}

// Bounds of FaultBackend's bookkeeping, so a guest cannot grow it without
// limit.
const (
	maxFaultRanges = 1024
	maxFaultLosses = 256
)

// faultRule is a rule with its counters and random generator.
type faultRule struct {
	FaultRule
	matched, fired, badHits uint64
	rng                     uint64
}

// sectorRange is an inclusive range of sectors and the rule behind it.
type sectorRange struct {
	first, last uint64
	rule        int
	outcome     FaultOutcome
}

// FaultLoss is data the guest was told is safe and is not on the disk.
type FaultLoss struct {
	First uint64 `json:"first_sector"`
	Last  uint64 `json:"last_sector"`
	// Rule is the rule that caused it (0-based).
	Rule int `json:"rule"`
	// How is "dropped" (a drop rule acknowledged the write and discarded
	// it) or "failed-then-flushed" (the write failed, and a later flush
	// succeeded before the sectors were written again).
	How string `json:"how"`
}

// FaultRuleStats are one rule's counters.
type FaultRuleStats struct {
	Rule    string `json:"rule"`
	Matched uint64 `json:"matched"`
	Fired   uint64 `json:"fired"`
	// BadSectorHits counts reads failed by the sectors a sticky rule made bad.
	BadSectorHits uint64 `json:"bad_sector_hits"`
}

// FaultStats is the "faults" object of a disk in --stats.
type FaultStats struct {
	Seed       uint64           `json:"seed"`
	Rules      []FaultRuleStats `json:"rules"`
	BadSectors []FaultLoss      `json:"bad_sectors"`
	Losses     []FaultLoss      `json:"losses"`
	// Unlisted counts losses and bad ranges past the layer's bounds.
	Unlisted uint64 `json:"unlisted"`
}

// NewFaultBackend puts the fault layer with rules over lower; seed seeds
// the rules' prob= draws.
func NewFaultBackend(lower Backend, rules []FaultRule, seed uint64) (*FaultBackend, error) {
	b := &FaultBackend{lower: lower, start: time.Now(), seed: seed}
	if err := b.SetRules(rules); err != nil {
		return nil, err
	}
	return b, nil
}

// SetRules replaces the rules (and their counters); bad sectors, failed
// writes and losses stay.
func (b *FaultBackend) SetRules(rules []FaultRule) error {
	if len(rules) > MaxFaultRules {
		return fmt.Errorf("%w: more than %d rules", ErrBadFaultRule, MaxFaultRules)
	}
	for _, r := range rules {
		if err := r.check(); err != nil {
			return fmt.Errorf("%w %q: %v", ErrBadFaultRule, r, err)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rules = make([]faultRule, len(rules))
	for i, r := range rules {
		b.rules[i] = faultRule{FaultRule: r, rng: b.seed ^ (uint64(i)+1)*0x9e3779b97f4a7c15}
	}
	b.updateActive()
	return nil
}

// SetMarker makes every fired rule call mark with a line saying what it
// did (the write log's Mark).
func (b *FaultBackend) SetMarker(mark func(string) error) {
	b.mu.Lock()
	b.mark = mark
	b.mu.Unlock()
}

// updateActive sets active from the state; b.mu held.
func (b *FaultBackend) updateActive() {
	b.active.Store(len(b.rules) > 0 || len(b.bad) > 0 || len(b.failed) > 0)
}

// Stats returns the layer's counters and accounts.
func (b *FaultBackend) Stats() FaultStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := FaultStats{Seed: b.seed, Rules: []FaultRuleStats{}, BadSectors: []FaultLoss{}, Losses: append([]FaultLoss{}, b.losses...), Unlisted: b.unlisted}
	for _, r := range b.rules {
		s.Rules = append(s.Rules, FaultRuleStats{Rule: r.String(), Matched: r.matched, Fired: r.fired, BadSectorHits: r.badHits})
	}
	for _, r := range b.bad {
		s.BadSectors = append(s.BadSectors, FaultLoss{First: r.first, Last: r.last, Rule: r.rule, How: string(r.outcome)})
	}
	return s
}

// faultHit is what decide found: the rule that fired and what it does.
type faultHit struct {
	rule        int
	op          FaultOp
	outcome     FaultOutcome
	delay       time.Duration
	first, last uint64 // the sectors the rule applies to
	sticky      bool   // a bad sector, not the rule firing anew
	mark        func(string) error
}

// err is the hit's error.
func (h faultHit) err() error {
	return &FaultError{Rule: h.rule, Op: h.op, First: h.first, Last: h.last, Outcome: h.outcome, Sticky: h.sticky}
}

// decide finds the fault, if any, for a request of op on [off, off+n).
func (b *FaultBackend) decide(op FaultOp, off, n int64) (faultHit, bool) {
	if !b.active.Load() {
		return faultHit{}, false
	}
	first, last := uint64(off)/SectorSize, uint64(off+max(n, 1)-1)/SectorSize
	b.mu.Lock()
	defer b.mu.Unlock()
	if op == FaultRead {
		if i := overlapping(b.bad, first, last); i >= 0 {
			r := b.bad[i]
			if r.rule < len(b.rules) {
				b.rules[r.rule].badHits++
			}
			return faultHit{rule: r.rule, op: op, outcome: r.outcome, first: max(first, r.first), last: min(last, r.last), sticky: true}, true
		}
	}
	now := time.Since(b.start)
	for i := range b.rules {
		r := &b.rules[i]
		if !r.fires(op, first, last, now) {
			continue
		}
		h := faultHit{rule: i, op: op, outcome: r.Outcome, delay: r.Delay, first: first, last: last, mark: b.mark}
		if r.HasRange {
			h.first, h.last = max(first, r.First), min(last, r.Last)
		}
		b.record(h, r.Sticky)
		return h, true
	}
	return faultHit{}, false
}

// fires reports whether the rule fires for a request of op on sectors
// first..last at now, counting it.
func (r *faultRule) fires(op FaultOp, first, last uint64, now time.Duration) bool {
	switch {
	case r.Op != FaultAny && r.Op != op:
		return false
	case r.HasRange && (op == FaultFlush || last < r.First || first > r.Last):
		return false
	case now < r.After || (r.Before > 0 && now >= r.Before):
		return false
	case r.Once && r.fired > 0:
		return false
	}
	r.matched++
	switch {
	case r.Nth > 0 && r.matched != r.Nth,
		r.Every > 0 && r.matched%r.Every != 0,
		r.From > 0 && r.matched < r.From:
		return false
	}
	if r.Prob > 0 && r.draw() >= r.Prob {
		return false
	}
	r.fired++
	return true
}

// draw is the rule's next uniform number in [0, 1) (splitmix64).
func (r *faultRule) draw() float64 {
	r.rng += 0x9e3779b97f4a7c15
	z := r.rng
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return float64(z>>11) / (1 << 53)
}

// record keeps what a fired rule leaves behind: bad sectors, a failed
// write to watch, a loss; b.mu held.
func (b *FaultBackend) record(h faultHit, sticky bool) {
	failing := h.outcome == FaultEIO || h.outcome == FaultENOSPC
	sr := sectorRange{first: h.first, last: h.last, rule: h.rule, outcome: h.outcome}
	if sticky && failing {
		b.bad = b.addRange(b.bad, sr)
	}
	switch {
	case h.op == FaultWrite && failing:
		b.failed = b.addRange(b.failed, sr)
	case (h.op == FaultWrite || h.op == FaultDiscard) && h.outcome == FaultDrop:
		b.addLoss(FaultLoss{First: h.first, Last: h.last, Rule: h.rule, How: "dropped"})
	}
	b.updateActive()
}

// addRange appends r to rs within the bound.
func (b *FaultBackend) addRange(rs []sectorRange, r sectorRange) []sectorRange {
	if len(rs) >= maxFaultRanges {
		b.unlisted++
		return rs
	}
	return append(rs, r)
}

// addLoss lists a loss within the bound.
func (b *FaultBackend) addLoss(l FaultLoss) {
	if len(b.losses) >= maxFaultLosses {
		b.unlisted++
		return
	}
	b.losses = append(b.losses, l)
}

// overlapping returns the index of the first range of rs that overlaps
// first..last, or -1.
func overlapping(rs []sectorRange, first, last uint64) int {
	for i, r := range rs {
		if r.first <= last && first <= r.last {
			return i
		}
	}
	return -1
}

// subtract removes first..last from every range of rs, splitting ranges
// it cuts in two (within the bound).
func (b *FaultBackend) subtract(rs []sectorRange, first, last uint64) []sectorRange {
	out := rs[:0]
	var split []sectorRange
	for _, r := range rs {
		if r.last < first || last < r.first {
			out = append(out, r)
			continue
		}
		if r.first < first {
			lo := r
			lo.last = first - 1
			out = append(out, lo)
		}
		if r.last > last {
			hi := r
			hi.first = last + 1
			split = append(split, hi)
		}
	}
	for _, r := range split {
		out = b.addRange(out, r)
	}
	return out
}

// rewritten forgets the bad sectors and failed writes a successful write
// of off..off+n covered.
func (b *FaultBackend) rewritten(off, n int64) {
	if !b.active.Load() || n <= 0 {
		return
	}
	first, last := uint64(off)/SectorSize, uint64(off+n-1)/SectorSize
	b.mu.Lock()
	b.bad = b.subtract(b.bad, first, last)
	b.failed = b.subtract(b.failed, first, last)
	b.updateActive()
	b.mu.Unlock()
}

// synced turns the failed writes a successful flush covered into losses.
func (b *FaultBackend) synced() {
	if !b.active.Load() {
		return
	}
	b.mu.Lock()
	for _, r := range b.failed {
		b.addLoss(FaultLoss{First: r.first, Last: r.last, Rule: r.rule, How: "failed-then-flushed"})
	}
	b.failed = b.failed[:0]
	b.updateActive()
	b.mu.Unlock()
}

// note marks the write log with what a hit did (a failure to mark is
// not the request's failure: the rule did fire).
func (h faultHit) note() {
	if h.mark == nil || h.sticky {
		return
	}
	if h.op == FaultFlush {
		h.mark(fmt.Sprintf("FAULT rule %d: flush %s", h.rule, h.outcome))
		return
	}
	h.mark(fmt.Sprintf("FAULT rule %d: %s sectors %d-%d %s", h.rule, h.op, h.first, h.last, h.outcome))
}

// act does what a hit on a write, discard or flush does before the call
// reaches the disk, and reports whether that ends the call (dropped: nil;
// failed: the error) or the call goes on (after a delay).
func (h faultHit) act() (over bool, err error) {
	h.note()
	switch h.outcome {
	case FaultDrop:
		return true, nil
	case FaultDelay:
		time.Sleep(h.delay)
		return false, nil
	}
	return true, h.err()
}

// Size is the lower backend's.
func (b *FaultBackend) Size() int64 { return b.lower.Size() }

// ReadAt reads unless a rule fails, delays or corrupts the read.
func (b *FaultBackend) ReadAt(v *Vec, off int64) error {
	h, hit := b.decide(FaultRead, off, v.Len())
	if !hit {
		return b.lower.ReadAt(v, off)
	}
	h.note()
	switch h.outcome {
	case FaultDelay:
		time.Sleep(h.delay)
		return b.lower.ReadAt(v, off)
	case FaultCorrupt:
		if err := b.lower.ReadAt(v, off); err != nil {
			return err
		}
		flipSectors(v, off, h.first, h.last)
		return nil
	}
	return h.err()
}

// ringFD implements ringFile: with no rule, bad sector or failed write to
// track, the layer passes every call through, so a request may go straight
// to the file under it. Rules set while the request is in the ring apply
// from the next request on, as they do for requests already executing.
func (b *FaultBackend) ringFD(v *Vec, off int64, write bool) (int, []unix.Iovec, bool) {
	if b.active.Load() {
		return 0, nil, false
	}
	if rf, ok := b.lower.(ringFile); ok {
		return rf.ringFD(v, off, write)
	}
	return 0, nil, false
}

// ringFile implements ringFile: the layer is straight over a file.
func (b *FaultBackend) ringFile() bool {
	rf, ok := b.lower.(ringFile)
	return ok && rf.ringFile()
}

// WriteAt writes unless a rule fails, drops or delays the write.
func (b *FaultBackend) WriteAt(v *Vec, off int64) error {
	return b.write(off, v.Len(), func() error { return b.lower.WriteAt(v, off) })
}

// WriteZeroes is a write to the fault rules.
func (b *FaultBackend) WriteZeroes(off, n int64, unmap bool) error {
	return b.write(off, n, func() error { return b.lower.WriteZeroes(off, n, unmap) })
}

// write runs a write-like call do on off..off+n under the rules.
func (b *FaultBackend) write(off, n int64, do func() error) error {
	if h, hit := b.decide(FaultWrite, off, n); hit {
		if over, err := h.act(); over {
			return err
		}
	}
	if err := do(); err != nil {
		return err
	}
	b.rewritten(off, n)
	return nil
}

// Discard discards unless a rule fails, drops or delays it.
func (b *FaultBackend) Discard(off, n int64) error {
	if h, hit := b.decide(FaultDiscard, off, n); hit {
		if over, err := h.act(); over {
			return err
		}
	}
	return b.lower.Discard(off, n)
}

// Sync syncs unless a rule fails, drops or delays the flush. A
// successful sync turns the failed writes not rewritten since into losses.
func (b *FaultBackend) Sync() error {
	if h, hit := b.decide(FaultFlush, 0, 0); hit {
		if over, err := h.act(); over {
			return err
		}
	}
	if err := b.lower.Sync(); err != nil {
		return err
	}
	b.synced()
	return nil
}

// Close closes the lower backend.
func (b *FaultBackend) Close() error { return b.lower.Close() }

// DirectAlignment is the O_DIRECT alignment of the file under the layer
// when it sits straight on one (0 otherwise).
func (b *FaultBackend) DirectAlignment() int64 {
	if da, ok := b.lower.(directAligner); ok {
		return da.DirectAlignment()
	}
	return 0
}

// Lower is the backend under the layer.
func (b *FaultBackend) Lower() Backend { return b.lower }

// flipSectors flips the first byte of every sector first..last in v, which
// holds the disk's bytes from off on.
func flipSectors(v *Vec, off int64, first, last uint64) {
	pos := off
	for _, buf := range v.Bufs {
		end := pos + int64(len(buf))
		// The first sector boundary at or after pos.
		s := (pos + SectorSize - 1) / SectorSize * SectorSize
		for ; s < end; s += SectorSize {
			if sec := uint64(s) / SectorSize; sec >= first && sec <= last {
				buf[s-pos] ^= 0xff
			}
		}
		pos = end
	}
}
