package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/flushvm/flushvm/host"
	"github.com/flushvm/flushvm/internal/sparse"
	"github.com/flushvm/flushvm/protocol"
)

// The retry of the nested harness. A nested L2 guest that triple-faults,
// or an L1 that dies, fails below flushvm: in QEMU TCG's emulation of
// nested SVM (L0). The control experiment of issue 8 (`make soak
// SOAK_ARGS="--vmm both"`) shows it: QEMU's own KVM monitor, run in the
// same L1 with the same guest and load, loses its guests the same way, and
// an L1 that runs no guest of its own has reset too. A guest that crashed
// or hung holding L1's own registers (its report's RIP is where L1's KVM
// resumes after VMRUN, protocol.L1VMRunReturn.Holds) fails below flushvm
// by proof: L0 wrote L1's state into its VMCB. Such a session runs
// again (up to L0Retries times), on the disks as they were before it, and
// each retry is logged with its cause. Nothing else is retried, and never
// on a host where flushvm runs directly: there a triple fault is the
// guest's or flushvm's.

// l0Failure reports whether a nested session failed in the way the retry
// covers, and why: a run whose guest crashed or hung holding L1's
// registers, a run whose guest triple-faulted (flushvm's report line), or
// an L1 that died before every run reported.
func l0Failure(ctx context.Context, s *Session, err error) (string, bool) {
	if ctx.Err() != nil {
		return "", false
	}
	if s != nil {
		for i, r := range s.Results {
			rep, ok := protocol.FindCrashReport(r.Output)
			if !ok || !protocol.Crashed(r.Status, r.Output) {
				continue
			}
			if why, ok := s.L1VMRunReturn.Holds(rep); ok {
				return fmt.Sprintf("run %d: %s: %s", i, why, rep), true
			}
			if strings.Contains(rep.Detail, tripleFaultEvent) && !strings.Contains(string(r.Output), kernelRestart) {
				return fmt.Sprintf("run %d: %s", i, rep), true
			}
		}
	}
	if err != nil && errors.Is(err, ErrL1Stuck) {
		return "L1 stuck: " + err.Error(), true
	}
	if err != nil && (errors.Is(err, ErrNoStatus) || strings.HasPrefix(err.Error(), "QEMU L1: ")) {
		return "L1 died: " + err.Error(), true
	}
	return "", false
}

// L1Failed reports whether a nested session failed because L1 died
// (ErrNoStatus) or stopped making progress (ErrL1Stuck): below flushvm.
// Callers that retry their own sessions (campaigns) use it.
func L1Failed(s *Session, err error) bool {
	return s != nil && s.Mode == Nested && (errors.Is(err, ErrNoStatus) || errors.Is(err, ErrL1Stuck))
}

// tripleFaultEvent names a triple fault in flushvm's report line.
const tripleFaultEvent = "triple fault (KVM_EXIT_SHUTDOWN)"

// kernelRestart is what Linux prints (at emergency level, so even with
// quiet) before it restarts the machine: a triple fault after it is the
// kernel's own reboot method (reboot=t), not a crash below flushvm.
const kernelRestart = "reboot: Restarting system"

// retryable reports whether a session may be run again: flushvm runs and
// commands marked Rerun (campaigns retry their own boots; other commands,
// such as a soak, measure failures and must see them).
func retryable(runs []Run) bool {
	for _, r := range runs {
		if r.Command != nil && !r.Rerun || r.Command == nil && r.sub() != SubRun {
			return false
		}
	}
	return len(runs) > 0
}

// L0Retries is how many times a nested session that failed below flushvm
// runs again. Three times: on 2026-12-02 about one nested session in five
// lost its L1 here (7 of about 35: stalls with QEMU spinning, and deaths),
// so with two retries a CI run of a dozen nested sessions went red about
// one time in ten; each retry costs minutes, a red CI run a whole stop.
const L0Retries = 3

// nestedRetried runs the nested session and, each time it failed below
// flushvm (l0Failure), restores its disks and runs it again, up to
// L0Retries times, logging each cause.
func nestedRetried(ctx context.Context, opts Options, s *Session, runs []Run) error {
	if !retryable(runs) {
		return nested(ctx, opts, s, runs)
	}
	snap, err := snapshotDisks(runs)
	if err != nil {
		return err
	}
	defer snap.remove()
	return retried(ctx, opts.Log, s, snap.restore, func() error { return nested(ctx, opts, s, runs) })
}

// retried runs session and runs it again after restore, up to L0Retries
// times, while it fails below flushvm.
func retried(ctx context.Context, log io.Writer, s *Session, restore, session func() error) error {
	err := session()
	for try := 1; try <= L0Retries; try++ {
		cause, again := l0Failure(ctx, s, err)
		if !again {
			return err
		}
		fmt.Fprintf(log, "flushvm-harness: %s: a crash of nested QEMU TCG (L0), not of flushvm "+
			"(QEMU's own KVM monitor crashes the same way in the same L1: make soak SOAK_ARGS=\"--vmm both\"); "+
			"restoring the disks and running the session again (retry %d of %d)\n", cause, try, L0Retries)
		logConsoleEnd(log, s.Console)
		if err := restore(); err != nil {
			return err
		}
		*s = Session{Mode: s.Mode, Reason: s.Reason}
		err = session()
	}
	return err
}

// diskSnapshot holds copies of a session's writable disk files.
type diskSnapshot struct {
	dir   string
	files map[string]string // disk -> copy
}

// snapshotDisks copies every writable --disk file of runs (sparse, so a
// mostly empty image costs what it holds).
func snapshotDisks(runs []Run) (*diskSnapshot, error) {
	cache, err := host.CacheDir()
	if err != nil {
		return nil, err
	}
	snap := &diskSnapshot{files: map[string]string{}}
	for _, r := range runs {
		for _, p := range writableDisks(r.Args) {
			if _, done := snap.files[p]; done {
				continue
			}
			if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
				continue // flushvm reports it; a block device is not copied
			}
			if snap.dir == "" {
				if err := os.MkdirAll(filepath.Join(cache, "jobs"), 0o755); err != nil {
					return nil, fmt.Errorf("disk snapshot: %w", err)
				}
				if snap.dir, err = os.MkdirTemp(filepath.Join(cache, "jobs"), "disks-"); err != nil {
					return nil, fmt.Errorf("disk snapshot: %w", err)
				}
			}
			c := filepath.Join(snap.dir, fmt.Sprintf("%d.img", len(snap.files)))
			if err := sparse.Copy(p, c); err != nil {
				snap.remove()
				return nil, err
			}
			snap.files[p] = c
		}
	}
	return snap, nil
}

func (s *diskSnapshot) restore() error {
	for disk, c := range s.files {
		if err := sparse.Copy(c, disk); err != nil {
			return err
		}
	}
	return nil
}

func (s *diskSnapshot) remove() {
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// writableDisks returns the path= of every --disk in args that is not
// readonly=on.
func writableDisks(args []string) []string {
	var out []string
	for k := 0; k < len(args); k++ {
		spec, ok := strings.CutPrefix(args[k], "--disk=")
		if !ok && args[k] == "--disk" && k+1 < len(args) {
			k++
			spec, ok = args[k], true
		}
		if !ok {
			continue
		}
		if path, readonly := diskSpecPath(spec); path != "" && !readonly {
			out = append(out, path)
		}
	}
	return out
}

// retryConsoleLines is how much of a failed attempt's L1 console a retry
// logs: all the history a session keeps, as 80 lines cut the top of a
// CPU's trace in ci15 (an NMI panic prints both L1 CPUs' backtraces, each
// with its registers, code bytes and up to ~40 frames).
const retryConsoleLines = keepLines

// logConsoleEnd writes the end of a failed attempt's L1 console to log,
// each line marked, before the retry replaces the session: a caller that
// does not stream the console (the integration tests) keeps the evidence
// of what failed.
func logConsoleEnd(log io.Writer, console string) {
	if console == "" {
		return
	}
	ls := strings.Split(strings.TrimRight(console, "\n"), "\n")
	if len(ls) > retryConsoleLines {
		ls = ls[len(ls)-retryConsoleLines:]
	}
	fmt.Fprintf(log, "flushvm-harness: the failed attempt's L1 console (last %d lines):\n", len(ls))
	for _, l := range ls {
		fmt.Fprintf(log, "flushvm-harness: | %s\n", l)
	}
}
