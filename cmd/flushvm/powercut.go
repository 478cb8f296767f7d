package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flushvm/flushvm/blk"

	"github.com/flushvm/flushvm/protocol"
)

// exitPowerCut is flushvm run's exit status after a power cut (by
// --power-cut or the API's POST /power-cut), as package protocol declares.
const exitPowerCut = protocol.ExitPowerCut

// powerCutMark is the MARK entry the write log gets at the cut.
const powerCutMark = "flushvm-power-cut"

// errBadTrigger reports a --power-cut WHEN that cannot be parsed.
var errBadTrigger = errors.New("bad --power-cut trigger")

// triggerKind is what a power-cut trigger counts.
type triggerKind string

const (
	triggerAfter   triggerKind = "after"
	triggerFlushes triggerKind = "flushes"
	triggerWrites  triggerKind = "writes"
)

// trigger is a parsed --power-cut WHEN.
type trigger struct {
	kind triggerKind
	// after is the delay from the start of the machine (triggerAfter).
	after time.Duration
	// n is the count that cuts the power (triggerFlushes, triggerWrites).
	n uint64
}

// String returns the trigger as written on the command line.
func (t trigger) String() string {
	if t.kind == triggerAfter {
		return "after=" + t.after.String()
	}
	return string(t.kind) + "=" + strconv.FormatUint(t.n, 10)
}

// parseTrigger parses --power-cut WHEN: after=DURATION (Go syntax: 1.5s,
// 200ms), flushes=N or writes=N with N >= 1.
func parseTrigger(s string) (trigger, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || v == "" {
		return trigger{}, fmt.Errorf("%w %q: want after=DURATION, flushes=N or writes=N", errBadTrigger, s)
	}
	switch triggerKind(k) {
	case triggerAfter:
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return trigger{}, fmt.Errorf("%w %q: want a positive duration such as 500ms or 2s", errBadTrigger, s)
		}
		return trigger{kind: triggerAfter, after: d}, nil
	case triggerFlushes, triggerWrites:
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			return trigger{}, fmt.Errorf("%w %q: want a count of at least 1", errBadTrigger, s)
		}
		return trigger{kind: triggerKind(k), n: n}, nil
	}
	return trigger{}, fmt.Errorf("%w %q: unknown trigger %q (want after, flushes or writes)", errBadTrigger, s, k)
}

// powerSupply is the one power supply of the machine's power-cut disks: a
// cut freezes every VolatileCache at the same instant, then tells the
// machine to stop. Requests that reach a disk after the cut (or were in
// progress at it) are held — they neither complete nor fail — until
// release, so the guest sees no completion after the instant of the cut,
// not even an I/O error.
type powerSupply struct {
	caches []*blk.VolatileCache
	// stop stops the machine; set before the machine runs.
	stop func()

	once     sync.Once
	cut      atomic.Bool
	why      string // what cut the power (after cut is set)
	released chan struct{}

	// writes and flushes count the calls that reached the disks, for the
	// writes=N and flushes=N triggers (0: not armed).
	writes, flushes       atomic.Uint64
	cutWrites, cutFlushes uint64
}

func newPowerSupply() *powerSupply {
	return &powerSupply{released: make(chan struct{})}
}

// arm sets a counting trigger; after= triggers are timed by the caller.
func (p *powerSupply) arm(t trigger) {
	switch t.kind {
	case triggerWrites:
		p.cutWrites = t.n
	case triggerFlushes:
		p.cutFlushes = t.n
	}
}

// Cut cuts the power now: the caches freeze first (nothing completes
// after this instant), then the machine is told to stop. It reports
// whether this call did the cut (false if the power was already off).
func (p *powerSupply) Cut(why string) bool {
	did := false
	p.once.Do(func() {
		for _, c := range p.caches {
			c.Freeze()
		}
		p.why = why
		p.cut.Store(true)
		did = true
		if p.stop != nil {
			p.stop()
		}
	})
	return did
}

// IsCut reports whether the power was cut.
func (p *powerSupply) IsCut() bool { return p.cut.Load() }

// Why says what cut the power ("" before the cut).
func (p *powerSupply) Why() string {
	if !p.cut.Load() {
		return ""
	}
	return p.why
}

// release lets the held requests fail (with blk.ErrPowerLost); the caller
// does it once the machine has stopped, so no guest sees them.
func (p *powerSupply) release() {
	select {
	case <-p.released:
	default:
		close(p.released)
	}
}

// hold is called when a disk call ends: after the cut it waits for release
// and returns blk.ErrPowerLost, whatever the call did.
func (p *powerSupply) hold(err error) error {
	if !p.cut.Load() {
		return err
	}
	// The bound only breaks a deadlock: a vCPU thread that is itself
	// waiting for the device (a guest resetting it at the instant of the
	// cut) could not stop, and the machine could not end.
	t := time.NewTimer(holdLimit)
	defer t.Stop()
	select {
	case <-p.released:
	case <-t.C:
	}
	return blk.ErrPowerLost
}

// holdLimit bounds how long a request is held after the cut; stopping the
// vCPUs takes far less.
const holdLimit = 10 * time.Second

// wire returns lower wrapped so its calls count toward the triggers and
// are held after the cut. The write-log and cache layers sit in lower.
func (p *powerSupply) wire(lower blk.Backend) blk.Backend {
	return &cutBackend{lower: lower, ps: p}
}

// cutBackend is the layer between the device and a power-cut disk's
// stack: it counts writes and flushes for the triggers, cuts the power at
// the exact call the trigger names (before that call reaches the disk), and
// holds every call that ends after the cut.
type cutBackend struct {
	lower blk.Backend
	ps    *powerSupply
}

// Size returns the disk size.
func (b *cutBackend) Size() int64 { return b.lower.Size() }

// ReadAt reads from the disk.
func (b *cutBackend) ReadAt(v *blk.Vec, off int64) error {
	if b.ps.IsCut() {
		return b.ps.hold(nil)
	}
	return b.ps.hold(b.lower.ReadAt(v, off))
}

// WriteAt writes to the disk; the writes=N trigger cuts the power when the
// N-th write arrives, so it never reaches the disk.
func (b *cutBackend) WriteAt(v *blk.Vec, off int64) error {
	if b.countWrite() {
		return b.ps.hold(nil)
	}
	return b.ps.hold(b.lower.WriteAt(v, off))
}

// Discard counts as a write for the writes=N trigger.
func (b *cutBackend) Discard(off, n int64) error {
	if b.countWrite() {
		return b.ps.hold(nil)
	}
	return b.ps.hold(b.lower.Discard(off, n))
}

// WriteZeroes counts as a write for the writes=N trigger.
func (b *cutBackend) WriteZeroes(off, n int64, unmap bool) error {
	if b.countWrite() {
		return b.ps.hold(nil)
	}
	return b.ps.hold(b.lower.WriteZeroes(off, n, unmap))
}

// Sync flushes the disk; the flushes=N trigger cuts the power when the
// N-th flush arrives, so it covers nothing.
func (b *cutBackend) Sync() error {
	if b.ps.IsCut() {
		return b.ps.hold(nil)
	}
	n := b.ps.flushes.Add(1)
	if b.ps.cutFlushes != 0 && n == b.ps.cutFlushes {
		b.ps.Cut(fmt.Sprintf("power cut by --power-cut flushes=%d: flush %d reached the disk", n, n))
		return b.ps.hold(nil)
	}
	return b.ps.hold(b.lower.Sync())
}

// Close closes the stack under the layer.
func (b *cutBackend) Close() error { return b.lower.Close() }

// countWrite counts one write and reports whether the power is (now) off.
func (b *cutBackend) countWrite() bool {
	if b.ps.IsCut() {
		return true
	}
	n := b.ps.writes.Add(1)
	if b.ps.cutWrites != 0 && n == b.ps.cutWrites {
		b.ps.Cut(fmt.Sprintf("power cut by --power-cut writes=%d: write %d reached the disk", n, n))
		return true
	}
	return false
}

var _ blk.Backend = (*cutBackend)(nil)
