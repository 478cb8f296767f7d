package vmm

import (
	"sync"
	"sync/atomic"

	"github.com/flushvm/flushvm/kvm"
)

// pauseState is what Pause and Resume share with the vCPU threads.
type pauseState struct {
	mu     sync.Mutex
	cond   *sync.Cond
	paused atomic.Bool
	// count is the number of vCPUs waiting paused (tests wait for it).
	count int
}

// cv returns the condition variable, made on first use; mu held.
func (p *pauseState) cv() *sync.Cond {
	if p.cond == nil {
		p.cond = sync.NewCond(&p.mu)
	}
	return p.cond
}

// wakeAll wakes every paused vCPU (to resume, or to see the machine stop).
func (p *pauseState) wakeAll() {
	p.mu.Lock()
	p.cv().Broadcast()
	p.mu.Unlock()
}

// Pause stops every vCPU: each is kicked out of KVM_RUN and waits until
// Resume (or until the machine stops). Devices go on serving requests
// already queued, as a paused QEMU's do. flushvm pauses the machine when a
// disk's error policy holds a request (werror=stop); the guest sees only
// time pass. Pausing a paused machine does nothing.
func (m *Machine) Pause() {
	if m.pause.paused.Swap(true) {
		return
	}
	for i := range m.vcpus {
		m.kick(i)
	}
}

// Resume lets paused vCPUs run again.
func (m *Machine) Resume() {
	m.pause.paused.Store(false)
	m.pause.wakeAll()
}

// Paused reports whether the machine is paused.
func (m *Machine) Paused() bool { return m.pause.paused.Load() }

// pausedVCPUs is the number of vCPUs waiting paused now.
func (m *Machine) pausedVCPUs() int {
	m.pause.mu.Lock()
	defer m.pause.mu.Unlock()
	return m.pause.count
}

// waitWhilePaused runs on vCPU i's thread after KVM_RUN was interrupted:
// while the machine is paused (and not stopping) the vCPU waits. It undoes
// the kick first: Pause and stop set their flags before they kick, and the
// run loop checks stopping again after this returns, so nothing is lost.
// The watchdog's view of the vCPU starts afresh after a pause: time spent
// paused is not a stall.
func (m *Machine) waitWhilePaused(i int, c *kvm.VCPU) {
	c.SetImmediateExit(false)
	if !m.pause.paused.Load() {
		return
	}
	p := &m.pause
	p.mu.Lock()
	p.count++
	for p.paused.Load() && !m.stopping.Load() {
		p.cv().Wait()
	}
	p.count--
	p.mu.Unlock()
	if m.watches != nil {
		w := &m.watches[i]
		w.sample.Store(false)
		w.det = stallDetector{bound: w.det.bound}
	}
}
