package main

import (
	"fmt"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/guest/internal/pid1"
	"github.com/flushvm/flushvm/protocol"
)

// QEMU TCG (L0, up to at least 10.0.2) writes the first vCPU's hflags2
// from any vCPU's thread: every FXRSTOR, XRSTOR, FRSTOR or FLDENV that
// leaves the x87 error summary clear calls cpu_clear_ignne, which does
// `first_cpu->env.hflags2 &= ~HF2_IGNNE_MASK` without a lock. L1 Linux
// restores FPU state on every switch to a user task, so L1 CPUs other than
// CPU 0 rewrite CPU 0's hflags2 all the time. When CPU 0 is itself
// changing hflags2 at that instant, as TCG's VMRUN and #VMEXIT helpers do
// (nested paging, GIF, virtual interrupt masking), its change can be lost
// or undone. An instrumented L0 caught it: a VMRUN that read NP_ENABLE in
// the VMCB and set HF2_NPT_MASK, yet entered L2 with the flag clear, so L2
// walked its page tables as L1 physical addresses and triple-faulted
// (docs/nested.md, "What the triple faults are"). Keeping every KVM vCPU
// off CPU 0 leaves CPU 0's hflags2 unchanged while others rewrite it, so
// the race loses nothing.

// offFirstCPU returns set without CPU 0, and whether that is what runs
// should use: only when set has CPU 0 and at least one other CPU.
func offFirstCPU(set unix.CPUSet) (unix.CPUSet, bool) {
	if !set.IsSet(0) || set.Count() < 2 {
		return set, false
	}
	set.Clear(0)
	return set, true
}

// runCPUs is the CPU set every run is started on (the zero set: no
// restriction), chosen once by chooseRunCPUs.
var runCPUs unix.CPUSet

// chooseRunCPUs sets runCPUs to L1's CPUs but CPU 0 and says so, unless
// the kernel command line says protocol.L1SpareCPU0Param=0 or L1 has one
// CPU (which no other CPU's thread can race).
func chooseRunCPUs() error {
	if cl, err := pid1.Cmdline(); err == nil && !wantSpareCPU0(cl) {
		pid1.Logf(prefix, "%s=0: runs share CPU 0; QEMU TCG's first-CPU race stays possible", protocol.L1SpareCPU0Param)
		return nil
	}
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		return fmt.Errorf("read L1's CPUs: %w", err)
	}
	set, ok := offFirstCPU(all)
	if !ok {
		// With one CPU, no other CPU's thread rewrites its flags.
		pid1.Logf(prefix, "runs not narrowed: init may use %d CPUs, CPU 0 among them: %t", all.Count(), all.IsSet(0))
		return nil
	}
	runCPUs = set
	pid1.Logf(prefix, "runs kept off CPU 0, on %d of %d CPUs (QEMU TCG's first-CPU race, docs/nested.md)", set.Count(), all.Count())
	return nil
}

// startOn starts cmd on the CPUs in set (all CPUs if set is empty). A
// child inherits the CPU set of the thread that forks it, so cmd is
// started from a thread locked to this goroutine and given that set; the
// thread is never unlocked, so it ends with the goroutine instead of
// running other goroutines on the narrowed set.
func startOn(cmd *exec.Cmd, set unix.CPUSet) error {
	if set.Count() == 0 {
		return cmd.Start()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			errc <- fmt.Errorf("set the CPUs of %s: %w", cmd.Path, err)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}

// wantSpareCPU0 says whether the kernel command line cl keeps runs off CPU
// 0 (everything but protocol.L1SpareCPU0Param=0 does).
func wantSpareCPU0(cl map[string]string) bool {
	return cl[protocol.L1SpareCPU0Param] != "0"
}
