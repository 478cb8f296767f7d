// Package disk builds the disk stack under a virtio-blk device from a
// --disk SPEC: the file, the volatile-cache power-cut model, the write log,
// and the power supply that cuts every power-cut disk of a machine at one
// instant. It also owns the --stats document both flushvm commands write.
package disk

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/protocol"
)

// PowerSupply is the one power supply of the machine's power-cut disks: a
// cut freezes every VolatileCache at the same instant, then tells the
// machine to stop. Requests that reach a disk after the cut (or were in
// progress at it) are held — they neither complete nor fail — until
// release, so the guest sees no completion after the instant of the cut,
// not even an I/O error.
type PowerSupply struct {
	caches []*blk.VolatileCache
	// Stop stops the machine; set it before the machine runs.
	Stop func()

	once     sync.Once
	cut      atomic.Bool
	why      string // what cut the power (after cut is set)
	released chan struct{}

	// writes and flushes count the calls that reached the disks, for the
	// writes=N and flushes=N triggers (0: not armed).
	writes, flushes       atomic.Uint64
	cutWrites, cutFlushes uint64

	// forever: held calls never end (HoldForever).
	forever atomic.Bool
}

// HoldForever makes the calls held after the cut wait for Release with no
// time bound. A vhost-user backend uses it: its guest keeps running under
// another VMM, so no held request may ever complete; the process ends with
// them held.
func (p *PowerSupply) HoldForever() { p.forever.Store(true) }

// NewPowerSupply returns a supply with the power on and no trigger armed.
func NewPowerSupply() *PowerSupply {
	return &PowerSupply{released: make(chan struct{})}
}

// Arm sets a counting trigger (writes=N, flushes=N); an after= trigger
// starts with StartTimer.
func (p *PowerSupply) Arm(t protocol.Trigger) {
	switch t.Kind {
	case protocol.TriggerWrites:
		p.cutWrites = t.N
	case protocol.TriggerFlushes:
		p.cutFlushes = t.N
	}
}

// StartTimer starts an after= trigger's clock: call it as the machine (or
// the backend) starts serving. It returns the function that stops the
// clock; other triggers need no clock and get one that does nothing.
func (p *PowerSupply) StartTimer(t protocol.Trigger) (stop func()) {
	if t.Kind != protocol.TriggerAfter {
		return func() {}
	}
	timer := time.AfterFunc(t.After, func() { p.Cut("power cut by --power-cut " + t.String()) })
	return func() { timer.Stop() }
}

// Cut cuts the power now: the caches freeze first (nothing completes
// after this instant), then the machine is told to stop. It reports
// whether this call did the cut (false if the power was already off).
func (p *PowerSupply) Cut(why string) bool {
	did := false
	p.once.Do(func() {
		for _, c := range p.caches {
			c.Freeze()
		}
		p.why = why
		p.cut.Store(true)
		did = true
		if p.Stop != nil {
			p.Stop()
		}
	})
	return did
}

// IsCut reports whether the power was cut.
func (p *PowerSupply) IsCut() bool { return p.cut.Load() }

// Why says what cut the power ("" before the cut).
func (p *PowerSupply) Why() string {
	if !p.cut.Load() {
		return ""
	}
	return p.why
}

// Release lets the held requests fail (with blk.ErrPowerLost); the caller
// does it once the machine has stopped, so no guest sees them.
func (p *PowerSupply) Release() {
	select {
	case <-p.released:
	default:
		close(p.released)
	}
}

// hold is called when a disk call ends: after the cut it waits for release
// and returns blk.ErrPowerLost, whatever the call did.
func (p *PowerSupply) hold(err error) error {
	if !p.cut.Load() {
		return err
	}
	// The bound only breaks a deadlock: a vCPU thread that is itself
	// waiting for the device (a guest resetting it at the instant of the
	// cut) could not stop, and the machine could not end.
	if p.forever.Load() {
		<-p.released
		return blk.ErrPowerLost
	}
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
func (p *PowerSupply) wire(lower blk.Backend) blk.Backend {
	return &cutBackend{lower: lower, ps: p}
}

// cutBackend is the layer between the device and a power-cut disk's
// stack: it counts writes and flushes for the triggers, cuts the power at
// the exact call the trigger names (before that call reaches the disk), and
// holds every call that ends after the cut.
type cutBackend struct {
	lower blk.Backend
	ps    *PowerSupply
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
