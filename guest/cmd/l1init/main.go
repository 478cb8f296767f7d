// Command l1init is /init of the nested harness's L1 guest: a QEMU TCG
// `-cpu max` machine whose KVM (kvm-amd) can run Linux when the host's
// cannot. It loads KVM, virtio and 9p modules, mounts the host's job
// directory over 9p, runs the job's commands (normally `flushvm run ...`)
// with their output on the console and in the job directory, records each
// exit status there, and powers off.
//
// A job may name a scratch disk: L1 mounts it (ext4) before the first
// command and unmounts it after the last.
//
// It prints "flushvm-l1: ..." lines the host harness reads for timing:
// "flushvm-l1: kernel ..." when L1 reaches /init and
// "flushvm-l1: start run N" before and "flushvm-l1: end run N, max RSS K
// KiB" after each command (K is the command's peak resident set size).
// Every few seconds it rewrites a heartbeat file in the job directory
// (protocol.L1HeartbeatFile), by which the host tells a slow L1 from one
// that stopped. For the whole session it keeps one idle KVM VM open
// (holdVM says why), and it records where L1's KVM resumes after VMRUN
// (recordVMRunReturn says why). Its runs start on every CPU but CPU 0
// (firstcpu.go says why).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/guest/internal/pid1"
	"github.com/flushvm/flushvm/protocol"
)

const prefix = "flushvm-l1"

func main() {
	if err := run(); err != nil {
		pid1.Logf(prefix, "%v", err)
	}
	pid1.PowerOff()
	select {}
}

func run() error {
	if err := pid1.MountBasics(); err != nil {
		return err
	}
	if _, err := pid1.LoadModules(pid1.ModuleList); err != nil {
		return err
	}
	m, err := pid1.Describe()
	if err != nil {
		return err
	}
	pid1.Logf(prefix, "%v", m)
	if err := os.MkdirAll(protocol.L1JobMount, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", protocol.L1JobMount, err)
	}
	if err := unix.Mount(protocol.L1JobTag, protocol.L1JobMount, "9p", 0, "trans=virtio,version=9p2000.L,msize=262144,access=any"); err != nil {
		return fmt.Errorf("mount 9p %s on %s: %w", protocol.L1JobTag, protocol.L1JobMount, err)
	}
	defer unix.Sync()
	j, err := protocol.ReadL1Job(protocol.L1JobMount)
	if err != nil {
		return err
	}
	beats := newBeater()
	beatCtx, stopBeats := context.WithCancel(context.Background())
	defer stopBeats()
	go beats.beat(beatCtx)
	if _, err := os.Stat("/dev/kvm"); err != nil {
		pid1.Logf(prefix, "no /dev/kvm in L1 (%v): KVM will fail", err)
	} else {
		if err := holdVM(); err != nil {
			pid1.Logf(prefix, "%v", err)
		}
		if err := recordVMRunReturn(protocol.L1JobMount); err != nil {
			pid1.Logf(prefix, "%v", err)
		}
	}
	if err := chooseRunCPUs(); err != nil {
		pid1.Logf(prefix, "%v", err)
	}
	if err := pid1.WaitForFiles(j.WaitFor, 10*time.Second); err != nil {
		return err
	}
	if j.Scratch != nil {
		umount, err := mountScratch(j.Scratch)
		if err != nil {
			return err
		}
		defer umount()
	}
	for i, r := range j.Runs {
		beats.start(i)
		up, _ := pid1.Uptime()
		pid1.Logf(prefix, "start run %d at uptime %.2f s", i, up.Seconds())
		// No retry: a run that fails is reported as it failed (the
		// harness and its soak classify it), so that a flaky guest stays
		// visible instead of being hidden by a second attempt.
		status, rss, err := runOne(i, r)
		var rec string
		pid1.Logf(prefix, "end run %d, max RSS %d KiB", i, rss)
		if err != nil {
			pid1.Logf(prefix, "run %d: %v", i, err)
			rec = "error: " + err.Error()
		} else {
			rec = strconv.Itoa(status)
		}
		if werr := os.WriteFile(protocol.L1StatusFile(protocol.L1JobMount, i), []byte(rec+"\n"), 0o644); werr != nil {
			return fmt.Errorf("record run %d: %w", i, werr)
		}
	}
	return nil
}

// mountScratch mounts the job's scratch disk and returns what unmounts it,
// so the host finds a clean file system (nothing left in the journal) if
// it reads the image afterwards.
func mountScratch(sc *protocol.L1Scratch) (func(), error) {
	if err := pid1.WaitForFiles([]string{sc.Device}, 10*time.Second); err != nil {
		return nil, fmt.Errorf("scratch disk: %w", err)
	}
	if err := os.MkdirAll(sc.Mount, 0o755); err != nil {
		return nil, fmt.Errorf("scratch disk: %w", err)
	}
	// discard: space freed in L1 is punched out of the sparse host file,
	// so a campaign's thousands of copied images cost only what is live.
	if err := unix.Mount(sc.Device, sc.Mount, "ext4", 0, "discard"); err != nil {
		return nil, fmt.Errorf("mount scratch disk %s on %s: %w", sc.Device, sc.Mount, err)
	}
	pid1.Logf(prefix, "scratch disk %s mounted on %s", sc.Device, sc.Mount)
	return func() {
		unix.Sync()
		if err := unix.Unmount(sc.Mount, 0); err != nil {
			pid1.Logf(prefix, "unmount scratch disk %s: %v", sc.Mount, err)
		}
	}, nil
}

// runOne runs one command with its output on the console and in its log
// file and returns its exit status and peak RSS in KiB.
func runOne(i int, r protocol.L1Run) (status int, maxRSS int64, err error) {
	if len(r.Argv) == 0 {
		return 0, 0, errors.New("empty command")
	}
	log, err := os.Create(protocol.L1LogFile(protocol.L1JobMount, i))
	if err != nil {
		return 0, 0, fmt.Errorf("log: %w", err)
	}
	defer log.Close()
	ctx := context.Background()
	if r.TimeoutSec > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(r.TimeoutSec)*time.Second)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// One writer keeps stdout and stderr in order; the count is of
	// stdout alone, where flushvm run puts the guest's console.
	out := &lockedWriter{w: io.MultiWriter(os.Stdout, log)}
	guestOut := &countingWriter{w: out}
	var silent atomic.Bool
	if isFlushvmRun(r.Argv) {
		// Only a guest boot has a first byte to wait for; other commands
		// (a crashtest campaign prints its summary at the end) may be
		// quiet on stdout for as long as they run.
		watchdog := time.AfterFunc(silentLimit, func() {
			if guestOut.n.Load() == 0 {
				silent.Store(true)
				cancel()
			}
		})
		defer watchdog.Stop()
	}
	cmd := exec.CommandContext(ctx, r.Argv[0], r.Argv[1:]...)
	cmd.Stdout, cmd.Stderr = guestOut, out
	cmd.Dir = protocol.L1JobMount
	if len(r.Env) > 0 {
		cmd.Env = append(os.Environ(), r.Env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// After the timeout's SIGKILL, stop waiting for output pipes held open
	// by anything the command left behind.
	cmd.WaitDelay = 5 * time.Second
	if err := startOn(cmd, runCPUs); err != nil {
		return 0, 0, fmt.Errorf("start %s: %w", r.Argv[0], err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var hard <-chan time.Time
	if r.TimeoutSec > 0 {
		// A process stuck in the kernel may outlive SIGKILL; L1 must
		// still report and power off.
		hard = time.After(time.Duration(r.TimeoutSec)*time.Second + 30*time.Second)
	}
	select {
	case err = <-done:
	case <-hard:
		return 0, 0, fmt.Errorf("%s: timed out after %d s and did not die on SIGKILL", r.Argv[0], r.TimeoutSec)
	}
	if ps := cmd.ProcessState; ps != nil {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			maxRSS = ru.Maxrss // KiB on Linux
		}
	}
	return outcome(r, err, silent.Load(), guestOut.n.Load() == 0, ctx.Err() != nil, maxRSS)
}

// outcome turns how run r's command ended (err from Wait; killed for
// silence; no byte on stdout; its context ended) into its exit status or
// the error that replaces one.
func outcome(r protocol.L1Run, err error, silent, noOutput, ctxDone bool, maxRSS int64) (int, int64, error) {
	var ee *exec.ExitError
	switch {
	case silent:
		return 0, maxRSS, fmt.Errorf("%s: %w in %v", r.Argv[0], errSilent, silentLimit)
	case err == nil && isFlushvmRun(r.Argv) && noOutput:
		// Status 0 (a guest reset) without a byte from the guest: it
		// crashed before its console came up. Other statuses are
		// flushvm's own (a usage error, a failed machine).
		return 0, maxRSS, fmt.Errorf("%s: %w: the guest reset before its first byte", r.Argv[0], errSilent)
	case ctxDone:
		return 0, maxRSS, fmt.Errorf("%s: timed out after %d s", r.Argv[0], r.TimeoutSec)
	case err == nil:
		return 0, maxRSS, nil
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(unix.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), maxRSS, nil
		}
		return ee.ExitCode(), maxRSS, nil
	default:
		return 0, maxRSS, fmt.Errorf("wait %s: %w", r.Argv[0], err)
	}
}

// errSilent reports a run killed because it printed nothing at all within
// silentLimit.
var errSilent = errors.New("printed nothing")

// silentLimit is how long a run may go without printing its first byte. A
// nested L2 kernel prints its first line within seconds (about 30 s on a
// heavily loaded host).
const silentLimit = 2 * time.Minute

// isFlushvmRun reports whether argv runs `flushvm run`, whose guests
// always print before they touch a disk.
func isFlushvmRun(argv []string) bool {
	return len(argv) > 1 && filepath.Base(argv[0]) == "flushvm" && argv[1] == "run"
}

// lockedWriter serialises writes from the command's two output pipes.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return c.w.Write(p)
}
