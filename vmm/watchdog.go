package vmm

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/flushvm/flushvm/kvm"
	"github.com/flushvm/flushvm/protocol"
)

// The watchdog (Config.Watchdog) finds a vCPU that is stuck with an
// interrupt pending: one that has not come back to flushvm with an exit,
// and whose local APIC kept the same vector requested (IRR) at every
// sample for longer than the bound. A healthy guest takes an interrupt
// within microseconds of its IRR bit rising, or soon after it re-enables
// interrupts; a guest that runs with a vector pending for seconds is
// either locked up with interrupts off or is not being given the
// interrupt (the nested-virtualization hang this was built to catch). RIP
// is reported but not required to stand still: a guest polling for the
// very completion whose interrupt never arrives moves its RIP in a loop.
//
// A vCPU inside KVM_RUN can only be read from its own thread once it has
// left KVM_RUN, so the watchdog goroutine asks for a sample and kicks the
// vCPU out the way Stop does (immediate_exit and a signal); the vCPU
// thread reads its LAPIC, judges, and goes back in. A vCPU that exited to
// flushvm since the last tick is making progress and is not kicked, so a
// busy guest pays nothing and an idle one one exit every bound/4.

// Local APIC register page offsets of the eight 32-bit words (16 bytes
// apart) of the in-service, trigger-mode and request registers, and of the
// task priority and ID registers.
const (
	lapicID  = 0x20
	lapicTPR = 0x80
	lapicISR = 0x100
	lapicIRR = 0x200
)

// vectorSet is a 256-bit set of interrupt vectors, as the LAPIC keeps them.
type vectorSet [8]uint32

// lapicVectors reads the vector register at base (lapicISR, lapicIRR).
func lapicVectors(l *kvm.LAPICState, base int) vectorSet {
	var s vectorSet
	for i := range s {
		s[i] = binary.LittleEndian.Uint32(l.Regs[base+i*16:])
	}
	return s
}

func (s vectorSet) and(o vectorSet) vectorSet {
	for i := range s {
		s[i] &= o[i]
	}
	return s
}

func (s vectorSet) empty() bool { return s == vectorSet{} }

// list returns the vectors in s, lowest first.
func (s vectorSet) list() []int {
	v := []int{}
	for i, w := range s {
		for b := 0; b < 32; b++ {
			if w&(1<<b) != 0 {
				v = append(v, i*32+b)
			}
		}
	}
	return v
}

// stallDetector judges one vCPU from its samples. Only that vCPU's thread
// uses it.
type stallDetector struct {
	bound   time.Duration
	started bool
	exits   uint64    // the vCPU's exit count at the start of the stall
	since   time.Time // when the stall began
	pending vectorSet // vectors requested at every sample since then
}

// observe takes a sample taken at now: the vCPU's exit count and its IRR.
// It reports whether the vCPU has now been stalled for the bound.
func (d *stallDetector) observe(now time.Time, exits uint64, irr vectorSet) bool {
	if d.started && exits == d.exits {
		if p := d.pending.and(irr); !p.empty() {
			d.pending = p
			return now.Sub(d.since) >= d.bound
		}
	}
	*d = stallDetector{bound: d.bound, started: true, exits: exits, since: now, pending: irr}
	return false
}

// vcpuWatch is the watchdog's state of one vCPU.
type vcpuWatch struct {
	exits  atomic.Uint64 // exits to flushvm (the vCPU thread counts)
	sample atomic.Bool   // a sample is wanted (the watchdog sets it, the vCPU clears it)
	asked  atomic.Int64  // when that sample was asked for (UnixNano)
	warned bool          // the watchdog goroutine said the vCPU ignores kicks
	det    stallDetector // the vCPU thread's
}

// kickLimit is the least time a kicked vCPU may take to come back from
// KVM_RUN before the watchdog says it ignores kicks: a vCPU thread on a
// loaded host can wait that long for a CPU, while one that ignores
// signals never comes back at all.
const kickLimit = 5 * time.Second

// watch is the watchdog goroutine: every bound/4 it kicks each vCPU that
// has not exited since the previous tick, until done is closed.
func (m *Machine) watch(done <-chan struct{}) {
	t := time.NewTicker(m.watchdog / 4)
	defer t.Stop()
	seen := make([]uint64, len(m.vcpus))
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		if m.pause.paused.Load() {
			// Paused vCPUs take no samples; none is stalled.
			continue
		}
		for i := range m.vcpus {
			w := &m.watches[i]
			if e := w.exits.Load(); e != seen[i] {
				seen[i] = e
				continue
			}
			if w.sample.CompareAndSwap(false, true) {
				w.asked.Store(time.Now().UnixNano())
			} else if age := time.Duration(time.Now().UnixNano() - w.asked.Load()); age > max(m.watchdog, kickLimit) && !w.warned {
				// Nothing to sample: KVM_RUN does not return even to
				// a signal. Say so once; the machine cannot be stopped
				// either.
				w.warned = true
				fmt.Fprintln(m.diag, protocol.FormatWatchdogStuck(i, age.Round(time.Millisecond)))
			}
			m.kick(i)
		}
	}
}

// serveWatchdog runs on vCPU i's thread after KVM_RUN was interrupted:
// it takes the sample the watchdog asked for, if any, and ends the
// machine with GuestHang when the vCPU is stalled.
func (m *Machine) serveWatchdog(i int, c *kvm.VCPU) {
	// Undo the kick before the run loop checks m.stopping again: stop
	// sets stopping before immediate_exit, so a stop is never lost.
	c.SetImmediateExit(false)
	w := &m.watches[i]
	if !w.sample.Swap(false) {
		return
	}
	l, err := c.LAPIC()
	if err != nil {
		m.debugf("watchdog: vCPU %d: %v", i, err)
		return
	}
	irr := lapicVectors(&l, lapicIRR)
	now := time.Now()
	if !w.det.observe(now, w.exits.Load(), irr) {
		if !irr.empty() && w.det.since.Equal(now) {
			// Kicked for not exiting in a quarter of the bound and found
			// with a vector requested: KVM was not delivering it. The
			// kick itself (a signal, so an IPI to the host CPU running
			// the vCPU) often gets delivery going again, which is why
			// this is said even when the guest then runs on: it is the
			// trace of a lost wake-up below flushvm (see README, nested).
			// Said once per stall, when it begins.
			fmt.Fprintf(m.diag, protocol.WatchdogKicked+"%d: no exit for at least %v with vectors %v requested; kicked it (%s)\n",
				i, m.watchdog/4, irr.list(), interruptLine(c, &l))
		}
		return
	}
	event := fmt.Sprintf("made no progress for %v (no exit to flushvm; vectors %v requested at every sample)",
		now.Sub(w.det.since).Round(time.Millisecond), w.det.pending.list())
	m.guestFailed(c, protocol.ExitGuestHang, event, interruptLine(c, &l))
}

// interruptLine is lapicLine and what KVM says may block delivery: its
// event state (an interrupt shadow, an event being injected) and, on AMD,
// the global interrupt flag. A vector requested with IF set and nothing
// blocking is one KVM fails to deliver. Called on the vCPU's thread.
func interruptLine(c *kvm.VCPU, l *kvm.LAPICState) string {
	s := lapicLine(l)
	if e, err := c.Events(); err == nil {
		s += "; KVM events: " + e.String()
	}
	if gif, ok := c.GIF(); ok {
		s += fmt.Sprintf("; GIF %v", gif)
	}
	return s
}

// lapicLine describes a local APIC's interrupt state.
func lapicLine(l *kvm.LAPICState) string {
	return fmt.Sprintf("LAPIC ID %#x TPR %#x ISR %v IRR %v", binary.LittleEndian.Uint32(l.Regs[lapicID:])>>24,
		binary.LittleEndian.Uint32(l.Regs[lapicTPR:]), lapicVectors(l, lapicISR).list(), lapicVectors(l, lapicIRR).list())
}
