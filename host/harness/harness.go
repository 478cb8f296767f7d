// Package harness runs `flushvm run` where it can boot Linux: directly on a
// host with hardware virtualization, or nested inside a QEMU TCG `-cpu max`
// L1 guest whose KVM works where the host's (PVM) does not.
//
// Nested, the harness builds a static flushvm, writes a job directory that
// L1 mounts over 9p (the flushvm binary, hard links of --kernel/--initrd,
// the job file, an out directory), attaches each --disk host file to L1 as
// a raw virtio-blk drive and rewrites it to /dev/vdX, boots L1 with the
// Debian kernel and guest/cmd/l1init, streams the console (which carries
// L2's serial output) and returns flushvm's exit status. --stats files are
// written in the out directory and copied back.
//
// A run may be a whole `flushvm crashtest` campaign instead: its images
// need a file system with O_DIRECT, which L1's tmpfs lacks, so the session
// then gets a scratch disk (a sparse host file formatted ext4 on the host,
// attached as one more virtio drive, mounted by L1 at ScratchMount and
// deleted afterwards), --report comes back like --stats, and a --dir the
// caller gave is copied back from the scratch disk.
package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flushvm/flushvm/host"
	"github.com/flushvm/flushvm/host/initramfs"
	"github.com/flushvm/flushvm/host/kernel"
	"github.com/flushvm/flushvm/host/l1qemu"
	"github.com/flushvm/flushvm/protocol"
)

// DefaultTimeout bounds a whole session when Options.Timeout is zero.
const DefaultTimeout = 10 * time.Minute

// ErrNoStatus reports a run whose exit status never came back from L1
// (L1 crashed, timed out, or flushvm could not be started).
var ErrNoStatus = errors.New("no exit status from L1")

// ErrL1Stuck reports an L1 that stopped making progress: it did not reach
// its /init, or a run neither ended nor was killed by L1's own per-run
// bound long after that bound passed. L1's init enforces the bound itself,
// so an L1 past it is stuck as a whole, below flushvm (QEMU TCG's nested
// SVM, issue 8): the harness stops it instead of waiting for the session's
// bound.
var ErrL1Stuck = errors.New("L1 stopped making progress")

// ErrTimeout reports a session that hit its time bound.
var ErrTimeout = errors.New("harness timed out")

// Run is one command of a session.
type Run struct {
	// Subcommand is the flushvm subcommand Args are for: SubRun (also
	// when empty) or SubCrashtest.
	Subcommand string
	// Args are the subcommand's arguments, with host paths.
	Args []string
	// Command, when set, runs this command inside L1 instead of flushvm
	// (nested only; L1 paths; flushvm is /job/flushvm). It is for
	// checking the harness itself, and for tests that need more than
	// one flushvm process in L1.
	Command []string
	// Rerun marks a Command that may run again from its start when L1
	// died under it (see nestedRetried): it keeps no state but its
	// --disk files, which the harness restores. flushvm runs always may;
	// a command that counts failures (a soak) must not set it.
	Rerun bool
	// Timeout bounds this run inside L1; zero means only the session
	// bound applies.
	Timeout time.Duration
}

// Result is what one run did.
type Result struct {
	// Status is the exit status of flushvm (or Command).
	Status int
	// Output is the run's combined stdout and stderr (with nested runs,
	// the L2 serial console as flushvm printed it).
	Output []byte
	// Start is the wall time from the session's start to the run's start.
	Start time.Duration
	// Duration is the run's wall time.
	Duration time.Duration
	// MaxRSSKiB is the run's peak resident set size (nested: measured by
	// L1's init; direct: by the harness).
	MaxRSSKiB int64
	// Err is set when the run did not finish with a status of its own
	// (it timed out in L1 or could not start); Output still holds what
	// it printed.
	Err error
}

// Options configure a session.
type Options struct {
	// Mode picks direct or nested; Auto detects.
	Mode Mode
	// Stdout receives the streamed output (nil discards it).
	Stdout io.Writer
	// Log receives the harness's own one-line notes (nil discards them).
	Log io.Writer
	// Timeout bounds the whole session (DefaultTimeout if zero).
	Timeout time.Duration
	// Flushvm is the flushvm binary to run; empty builds ./cmd/flushvm
	// (static) from the repository.
	Flushvm string
	// L1Mem and L1CPUs size the nested L1 guest (2048 MiB and 3 if zero:
	// l1init keeps runs off CPU 0, so 3 leaves two CPUs for them).
	L1Mem, L1CPUs int
	// ScratchSize is the size in bytes of the nested session's scratch
	// disk; zero sizes it with ScratchSize (none unless a run is a
	// crashtest).
	ScratchSize int64
	// L1Accel and L1CPU are QEMU's -accel and -cpu for L1 (DefaultL1Accel
	// and DefaultL1CPU if empty); L1Append is added to L1's kernel command
	// line (e.g. kvm_amd.npt=0: l1init passes MODULE.PARAM words to the
	// modules it loads, as modprobe does).
	L1Accel, L1CPU, L1Append string
	// Watchdog is the `flushvm run --watchdog` bound the harness adds to
	// every flushvm run that sets none: a guest stuck with an interrupt
	// pending then ends with a report (protocol.ExitGuestHang) instead of
	// running into the session's timeout. Zero means DefaultWatchdog; a
	// negative value adds none.
	Watchdog time.Duration
	// L1Fault, when set, sees each line of L1's console; the first time
	// it returns true the harness ends L1 the way a dying TCG L1 ends
	// (QEMU quits at once, through its monitor, with nothing flushed or
	// unmounted in L1): fault injection, to test what survives an L1
	// death (nested sessions only).
	L1Fault func(line string) bool
	// JobFiles are host files linked into the nested job directory,
	// keyed by their path under it (L1 sees them under /job), for
	// Run.Command runs that need more than flushvm.
	JobFiles map[string]string
}

// DefaultWatchdog is the --watchdog bound of harness runs. A nested guest
// makes no exit for seconds at a time under a loaded host, never for a
// minute with an interrupt pending.
const DefaultWatchdog = time.Minute

// withWatchdog returns the arguments of run r with --watchdog added when r
// is a flushvm run that sets none.
func (o Options) withWatchdog(r Run) []string {
	if _, set := FlagValue(r.Args, "watchdog"); set || r.sub() != SubRun || o.Watchdog < 0 {
		return r.Args
	}
	d := o.Watchdog
	if d == 0 {
		d = DefaultWatchdog
	}
	return append([]string{"--watchdog", d.String()}, r.Args...)
}

// DefaultL1Accel and DefaultL1CPU are the QEMU -accel and -cpu of the
// nested L1 guest.
const (
	DefaultL1Accel = "tcg,thread=multi"
	DefaultL1CPU   = "max"
)

// Session is what a call to Execute did.
type Session struct {
	// Mode is where flushvm ran and Reason why.
	Mode   Mode
	Reason string
	// L1Boot is the wall time from starting QEMU to L1's /init (nested).
	L1Boot time.Duration
	// L1Uptime is L1's own uptime at /init (nested).
	L1Uptime string
	// L1QEMU is the emulator L1 ran on, with where it came from (nested;
	// host/l1qemu).
	L1QEMU string
	// Wall is the whole session's wall time.
	Wall time.Duration
	// Results has one entry per run, in order.
	Results []Result
	// Console is the end of the L1 console (nested): L1's own lines and
	// every run's output, for diagnosing a failed session.
	Console string
	// L1Heartbeat is the last snapshot L1 wrote into its heartbeat file
	// (nested; protocol.L1HeartbeatFile): its uptime and load, the run
	// under way, and what each thread of that run was doing.
	L1Heartbeat string
	// L1VMRunReturn is where L1's KVM resumes after VMRUN (nested; zero
	// when L1 could not tell): an L2 vCPU reported at that address holds
	// L1's state, written into its VMCB by L0 (protocol.L1VMRunReturnFile).
	L1VMRunReturn protocol.L1VMRunReturn
}

// Execute runs the runs in one session: one L1 boot when nested.
func Execute(ctx context.Context, opts Options, runs ...Run) (*Session, error) {
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Stdout == nil {
		opts.Stdout = io.Discard
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	s := &Session{Mode: opts.Mode, Reason: "requested"}
	if s.Mode == Auto {
		s.Mode, s.Reason = Detect()
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	start := time.Now()
	var err error
	if s.Mode == Direct {
		fmt.Fprintf(opts.Log, "flushvm-harness: running flushvm directly (%s)\n", s.Reason)
		err = direct(ctx, opts, s, runs)
	} else {
		fmt.Fprintf(opts.Log, "flushvm-harness: running flushvm nested in a QEMU TCG L1 guest (%s)\n", s.Reason)
		err = nestedRetried(ctx, opts, s, runs)
	}
	s.Wall = time.Since(start)
	if err != nil && ctx.Err() == context.DeadlineExceeded {
		return s, fmt.Errorf("%w after %v: %v", ErrTimeout, opts.Timeout, err)
	}
	return s, err
}

func flushvmBinary(ctx context.Context, opts Options) (string, error) {
	if opts.Flushvm != "" {
		return opts.Flushvm, nil
	}
	return initramfs.BuildGo(ctx, "./cmd/flushvm")
}

func direct(ctx context.Context, opts Options, s *Session, runs []Run) error {
	bin, err := flushvmBinary(ctx, opts)
	if err != nil {
		return err
	}
	t0 := time.Now()
	for _, r := range runs {
		if r.Command != nil {
			return errors.New("Run.Command needs the nested harness")
		}
		rctx := ctx
		if r.Timeout > 0 {
			var cancel context.CancelFunc
			rctx, cancel = context.WithTimeout(ctx, r.Timeout)
			defer cancel()
		}
		var buf bytes.Buffer
		cmd := exec.CommandContext(rctx, bin, append([]string{r.sub()}, opts.withWatchdog(r)...)...)
		w := io.MultiWriter(opts.Stdout, &buf)
		cmd.Stdout, cmd.Stderr = w, w
		res := Result{Start: time.Since(t0)}
		err := cmd.Run()
		res.Duration = time.Since(t0) - res.Start
		res.Output = bytes.ReplaceAll(buf.Bytes(), []byte{'\r'}, nil)
		if cmd.ProcessState != nil {
			if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
				res.MaxRSSKiB = ru.Maxrss
			}
		}
		var ee *exec.ExitError
		switch {
		case rctx.Err() != nil:
			return fmt.Errorf("flushvm %s: %w", r.sub(), rctx.Err())
		case err == nil:
		case errors.As(err, &ee):
			res.Status = ee.ExitCode()
		default:
			return fmt.Errorf("flushvm %s: %w", r.sub(), err)
		}
		s.Results = append(s.Results, res)
	}
	return nil
}

// sub is the flushvm subcommand of the run.
func (r Run) sub() string {
	if r.Subcommand == "" {
		return SubRun
	}
	return r.Subcommand
}

func nested(ctx context.Context, opts Options, s *Session, runs []Run) error {
	cache, err := host.CacheDir()
	if err != nil {
		return err
	}
	k, err := kernel.Fetch(ctx, cache)
	if err != nil {
		return err
	}
	l1img, err := L1Initramfs(ctx, cache, k)
	if err != nil {
		return err
	}
	q, err := findL1QEMU(ctx, opts, cache, s)
	if err != nil {
		return err
	}
	dir, err := newJobDir(ctx, opts, cache, runs)
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	m, scratch, err := writeJob(ctx, opts, dir, runs)
	if scratch != "" {
		defer os.Remove(scratch)
	}
	if err != nil {
		return err
	}
	// L1 boots the bzImage. Its ELF vmlinux through the PVH entry
	// reached /init 4-5 s sooner, but L1 died far more often under
	// nested guests (docs/nested.md, "How L1 boots").
	l1 := l1Command(opts, q, k.BzImage, l1img, dir, m, scratch)
	watch := newConsole(opts.Stdout, time.Now())
	if scratch != "" {
		// Campaigns print reproduce commands and kept images with L1
		// paths; show the host's.
		watch.rewrite = func(line string) string { return m.hostLine(line) }
	}
	mon, err := newL1Monitor()
	if err != nil {
		return err
	}
	defer mon.close()
	l1.Extra = append(l1.Extra, mon.args()...)
	watch.fault = l1Fault(opts, mon)
	qctx, stopL1 := context.WithCancel(ctx)
	defer stopL1()
	cmd := exec.CommandContext(qctx, "nice", append([]string{"-n", "5"}, l1.Args()...)...)
	cmd.Stdout, cmd.Stderr = watch, watch
	cmd.WaitDelay = 5 * time.Second
	watch.silences = runSilences(runs)
	watch.beatPath = protocol.L1HeartbeatFile(dir)
	exited := make(chan struct{})
	stuck := watch.watchProgress(qctx, runTimeouts(runs), func() {
		mon.backtrace(watch, exited)
		stopL1()
	})
	qerr := cmd.Run()
	close(exited)
	stopL1()
	watch.flush()
	watch.readBeat(time.Since(watch.t0))
	s.Console, s.L1Heartbeat = watch.recent(), watch.lastBeat()
	s.L1Boot, s.L1Uptime = watch.l1Boot()
	if b, err := os.ReadFile(protocol.L1VMRunReturnFile(dir)); err == nil {
		s.L1VMRunReturn, _ = protocol.ParseL1VMRunReturn(string(b))
	}
	var failure error
	switch why := <-stuck; {
	case why != "":
		failure = fmt.Errorf("QEMU L1: %w: %s", ErrL1Stuck, why)
	case ctx.Err() != nil:
		failure = fmt.Errorf("QEMU L1 killed: %w", ctx.Err())
	case qerr != nil:
		failure = fmt.Errorf("QEMU L1: %w: %s", qerr, watch.tail())
	}
	if err := collectAll(s, dir, m, watch, len(runs), &failure); err != nil {
		return err
	}
	if failure != nil {
		if scratch != "" && len(m.kept) > 0 && ctx.Err() == nil {
			recoverKeptDirs(ctx, opts.Log, scratch, m.kept)
		}
		return failure
	}
	if scratch != "" && len(m.kept) > 0 {
		return copyKeptDirs(ctx, scratch, m.kept)
	}
	return nil
}

// l1Fault turns Options.L1Fault into the console's per-line hook: once
// it fires, L1's QEMU is told to quit (in its own goroutine: the console
// must not wait for the monitor). Nil when no fault is asked for.
func l1Fault(opts Options, mon *l1Monitor) func(string) {
	if opts.L1Fault == nil {
		return nil
	}
	var once sync.Once
	return func(line string) {
		if opts.L1Fault(line) {
			once.Do(func() {
				go func() {
					if err := mon.quit(); err != nil {
						fmt.Fprintf(opts.Log, "flushvm-harness: the L1 fault could not quit QEMU: %v\n", err)
					}
				}()
			})
		}
	}
}

// newJobDir makes the job directory L1 mounts over 9p: a static flushvm
// (none when the runs are only commands and none can be built) and
// opts.JobFiles.
func newJobDir(ctx context.Context, opts Options, cache string, runs []Run) (string, error) {
	bin, err := flushvmBinary(ctx, opts)
	if err != nil {
		if !commandsOnly(runs) {
			return "", err
		}
		// Checking the harness itself must not wait for a buildable VMM.
		fmt.Fprintf(opts.Log, "flushvm-harness: no /job/flushvm in L1: %v\n", err)
		bin = ""
	}
	if bin != "" {
		if err := initramfs.CheckStatic(bin); err != nil {
			return "", fmt.Errorf("flushvm for L1: %w", err)
		}
	}
	jobs := filepath.Join(cache, "jobs")
	if err := os.MkdirAll(jobs, 0o755); err != nil {
		return "", fmt.Errorf("job dir: %w", err)
	}
	dir, err := os.MkdirTemp(jobs, "job-")
	if err != nil {
		return "", fmt.Errorf("job dir: %w", err)
	}
	files := map[string]string{}
	if bin != "" {
		files["flushvm"] = bin
	}
	for name, host := range opts.JobFiles {
		files[name] = host
	}
	for name, host := range files {
		if err := linkOrCopy(host, filepath.Join(dir, filepath.Clean("/"+name))); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("job dir: %w", err)
		}
	}
	return dir, nil
}

// writeJob maps the runs' host paths to L1's, makes the scratch disk when
// the runs need one (its path is returned even on error, for removal) and
// writes the job file.
func writeJob(ctx context.Context, opts Options, dir string, runs []Run) (*mapper, string, error) {
	scratchSize := opts.ScratchSize
	if scratchSize == 0 {
		var err error
		if scratchSize, err = ScratchSize(runs); err != nil {
			return nil, "", err
		}
	}
	m := newMapper(dir)
	j := &protocol.L1Job{}
	for i, r := range runs {
		argv := r.Command
		var env []string
		if argv == nil {
			args, err := m.rewrite(i, r.sub(), opts.withWatchdog(r))
			if err != nil {
				return nil, "", err
			}
			argv = append(append([]string{protocol.L1JobMount + "/flushvm", r.sub()}, nestedCrashtestArgs(r)...), args...)
		}
		if scratchSize > 0 && r.Command == nil && r.sub() == SubCrashtest {
			// A campaign without --dir keeps its images in a temporary
			// directory: on the scratch disk, and removed as it ends.
			env = append(env, "TMPDIR="+ScratchMount)
		}
		j.Runs = append(j.Runs, protocol.L1Run{Argv: argv, TimeoutSec: int(r.Timeout.Seconds()), Env: env})
	}
	for _, d := range m.disks {
		j.WaitFor = append(j.WaitFor, d.l1)
	}
	var scratch string
	if scratchSize > 0 {
		if len(m.disks) >= 26 {
			return nil, "", ErrTooManyDisks
		}
		scratch = dir + ".scratch"
		seed, err := seedKeptDirs(dir+".seed", m.kept)
		if err == nil {
			err = freshExt4From(ctx, scratch, strconv.FormatInt(scratchSize, 10), seed)
		}
		os.RemoveAll(dir + ".seed")
		if err != nil {
			return nil, scratch, fmt.Errorf("scratch disk: %w", err)
		}
		j.Scratch = &protocol.L1Scratch{Device: "/dev/vd" + string(rune('a'+len(m.disks))), Mount: ScratchMount}
		fmt.Fprintf(opts.Log, "flushvm-harness: scratch disk %s (%d MiB sparse, ext4) on %s in L1\n", scratch, scratchSize>>20, ScratchMount)
	}
	return m, scratch, protocol.WriteL1Job(dir, j)
}

// nestedCrashtestArgs are the flags a nested systematic crashtest run gets
// unless it sets them: --jobs 1. With two L2 guests at once (two checker
// boots), the TCG L1 livelocked (QEMU at 190% CPU, no output for minutes)
// or died in 2 of 2 campaigns here (issue 8); one at a time it does not.
func nestedCrashtestArgs(r Run) []string {
	if r.sub() != SubCrashtest {
		return nil
	}
	mode, _ := FlagValue(r.Args, "mode")
	if _, ok := FlagValue(r.Args, "jobs"); ok || mode == protocol.CrashtestRandom {
		return nil
	}
	return []string{"--jobs=1"}
}

// L1AppendEnv names the environment variable whose words every nested
// session adds to L1's kernel command line after Options.L1Append: the
// knob for experiments on L1 through tests and tools that set no options
// of their own (e.g. FLUSHVM_L1_APPEND=flushvm.l1_hold_vm=0, the control
// for the idle VM L1's init holds).
const L1AppendEnv = "FLUSHVM_L1_APPEND"

// l1Append is L1's kernel command line: the harness's words, then the
// session's, then the environment's.
func l1Append(session, env string) string {
	// unknown_nmi_panic, panic_print=0x40 (every CPU's backtrace): an L1
	// the harness finds stuck gets an NMI and answers with where each CPU
	// was (l1Monitor.backtrace).
	words := []string{"console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off unknown_nmi_panic=1 panic_print=0x40"}
	for _, w := range []string{session, env} {
		if w = strings.TrimSpace(w); w != "" {
			words = append(words, w)
		}
	}
	return strings.Join(words, " ")
}

// findL1QEMU picks the QEMU that emulates L1 (host/l1qemu), records it in
// s and says which in the log: once per session, and with the reason when
// L1 has to run on an older QEMU than host/l1qemu asks for.
func findL1QEMU(ctx context.Context, opts Options, cache string, s *Session) (*l1qemu.QEMU, error) {
	q, fallback := l1qemu.Find(ctx, cache)
	if q == nil {
		return nil, fallback
	}
	first := s.L1QEMU == ""
	s.L1QEMU = "QEMU " + q.Version + " (" + q.Source + ")"
	switch {
	case fallback != nil:
		fmt.Fprintf(opts.Log, "flushvm-harness: L1 runs on %s, as %v; nested guests fail more often on older QEMU TCG (docs/nested.md)\n",
			s.L1QEMU, fallback)
	case first:
		fmt.Fprintf(opts.Log, "flushvm-harness: L1 runs on %s\n", s.L1QEMU)
	}
	return q, nil
}

// defaultL1CPUs is L1's CPU count: CPU 0 for L1's own work and two for
// the runs, which l1init keeps off CPU 0 (QEMU TCG rewrites CPU 0's
// flags from other CPUs' threads; guest/cmd/l1init/firstcpu.go). CPU 0
// is mostly idle, so on a 2-core host this costs little over 2 CPUs.
const defaultL1CPUs = 3

// l1Command is L1's QEMU command line: the job directory over 9p, the
// runs' disks, then the scratch disk.
func l1Command(opts Options, q *l1qemu.QEMU, bzImage, l1img, dir string, m *mapper, scratch string) QEMUCommand {
	mem, cpus := opts.L1Mem, opts.L1CPUs
	if mem == 0 {
		mem = 2048
	}
	if cpus == 0 {
		cpus = defaultL1CPUs
	}
	l1 := QEMUCommand{Exec: q.Exec, Accel: orDefault(opts.L1Accel, DefaultL1Accel), CPU: orDefault(opts.L1CPU, DefaultL1CPU),
		Mem: strconv.Itoa(mem), SMP: cpus, BIOS: orDefault(q.Firmware("qboot.rom"), firmware()), Kernel: bzImage, Initrd: l1img,
		Append: l1Append(opts.L1Append, os.Getenv(L1AppendEnv)),
		Extra:  []string{"-virtfs", "local,path=" + qemuEscape(dir) + ",mount_tag=" + protocol.L1JobTag + ",security_model=none,id=" + protocol.L1JobTag},
	}
	for _, d := range m.disks {
		drive := "file=" + qemuEscape(d.host) + ",if=virtio,format=raw,cache=writeback,aio=threads"
		if d.readonly {
			drive += ",readonly=on"
		}
		l1.Extra = append(l1.Extra, "-drive", drive)
	}
	if scratch != "" {
		// Its durability on the host is of no interest (the campaigns
		// model power cuts inside L1, and the file is deleted), so no
		// host syncs: cache=unsafe; discard=unmap passes L1's discards on
		// as holes punched in the sparse file.
		l1.Extra = append(l1.Extra, "-drive", "file="+qemuEscape(scratch)+",if=virtio,format=raw,cache=unsafe,aio=threads,discard=unmap")
	}
	return l1
}

// collectAll reads back the results of the n runs into s. Even when L1 was
// killed or died, the runs it finished keep their results and outputs (a
// long campaign session must not lose the campaigns before the one that
// failed); the first run without a status ends the list and becomes
// *failure unless it is already set.
func collectAll(s *Session, dir string, m *mapper, watch *console, n int, failure *error) error {
	for i := range n {
		res, err := collect(dir, i, watch)
		if errors.Is(err, ErrNoStatus) {
			// L1 itself failed: no run after i has a result either.
			if *failure == nil {
				*failure = err
			}
			break
		}
		res.Err = err
		if watch.rewrite != nil {
			res.Output = []byte(watch.rewriteAll(string(res.Output)))
		}
		s.Results = append(s.Results, res)
		if err := m.copyStats(i); err != nil {
			return err
		}
	}
	return nil
}

func commandsOnly(runs []Run) bool {
	for _, r := range runs {
		if r.Command == nil {
			return false
		}
	}
	return true
}

// collect reads run i's status and log from the job directory.
func collect(dir string, i int, watch *console) (Result, error) {
	res := Result{}
	res.Start, res.Duration, res.MaxRSSKiB = watch.runTimes(i)
	b, err := os.ReadFile(protocol.L1StatusFile(dir, i))
	if err != nil {
		return res, fmt.Errorf("run %d: %w (last console line: %s)", i, ErrNoStatus, watch.tail())
	}
	out, _ := os.ReadFile(protocol.L1LogFile(dir, i))
	// The L2 serial console ends lines with CRLF; callers match lines.
	res.Output = bytes.ReplaceAll(out, []byte{'\r'}, nil)
	st := strings.TrimSpace(string(b))
	if msg, ok := strings.CutPrefix(st, "error: "); ok {
		return res, fmt.Errorf("run %d in L1: %s", i, msg)
	}
	if res.Status, err = strconv.Atoi(st); err != nil {
		return res, fmt.Errorf("run %d: bad status %q: %w", i, st, err)
	}
	return res, nil
}

// copyStats copies run i's output files (--stats, --write-log) back to the
// host paths asked for, naming each disk in a --stats document by its host
// file instead of its L1 device.
func (m *mapper) copyStats(i int) error {
	for _, sc := range m.stats[i] {
		b, err := os.ReadFile(sc.l1)
		if errors.Is(err, os.ErrNotExist) {
			continue // flushvm wrote none (it failed before exiting normally)
		}
		if err != nil {
			return fmt.Errorf("stats: %w", err)
		}
		var doc map[string]any
		if sc.stats && json.Unmarshal(b, &doc) == nil {
			if disks, ok := doc["disks"].([]any); ok {
				for _, d := range disks {
					if dm, ok := d.(map[string]any); ok {
						if p, ok := dm["path"].(string); ok {
							if host, ok := m.hostPath(p); ok {
								dm["path"] = host
							}
						}
					}
				}
				if nb, err := json.MarshalIndent(doc, "", "  "); err == nil {
					b = append(nb, '\n')
				}
			}
		}
		if sc.report {
			b = m.hostPaths(i, b)
		}
		if err := os.WriteFile(sc.host, b, 0o644); err != nil {
			return fmt.Errorf("stats: %w", err)
		}
	}
	return nil
}

// firmware picks qboot, a minimal firmware that boots -kernel directly,
// quicker and quieter than SeaBIOS; SeaBIOS if qboot is not installed.
func firmware() string {
	const qboot = "/usr/share/qemu/qboot.rom"
	if _, err := os.Stat(qboot); err == nil {
		return qboot
	}
	return "bios.bin"
}

func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// console streams QEMU's output without carriage returns and notes when
// L1's init reports progress.
type console struct {
	mu  sync.Mutex
	out io.Writer
	// rewrite, when set, maps each whole line before it is passed on
	// (a crashtest's summary names L1 paths); lines then go out whole.
	rewrite func(string) string
	pending []byte
	t0      time.Time
	line    []byte
	last    string
	lines   []string // the most recent lines, at most keepLines
	boot    time.Duration
	uptime  string
	starts  []time.Duration
	ends    []time.Duration
	rss     []int64
	// fault, when set, sees each whole line (Options.L1Fault).
	fault func(line string)
	// silences bound each run's console silence (zero: none; see
	// runSilences); lastLine is when the last whole line came.
	silences []time.Duration
	lastLine time.Duration
	// stuck is flushvm's watchdog line for a vCPU that a signal did not
	// bring back from KVM_RUN (protocol.FormatWatchdogStuck), if one came.
	stuck string
	// beatPath is L1's heartbeat file on the host (none: not watched);
	// beat and prevBeat are its last two contents, beatAt when it last
	// changed.
	beatPath       string
	beat, prevBeat string
	beatAt         time.Duration
}

func newConsole(out io.Writer, t0 time.Time) *console { return &console{out: out, t0: t0} }

// Write passes p on without carriage returns and watches for L1 markers.
func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	clean := bytes.ReplaceAll(p, []byte{'\r'}, nil)
	if err := c.pass(clean); err != nil {
		return 0, err
	}
	for _, b := range clean {
		if b != '\n' {
			if len(c.line) < 4096 {
				c.line = append(c.line, b)
			}
			continue
		}
		c.observe(string(c.line))
		c.line = c.line[:0]
	}
	return len(p), nil
}

// pass writes p on, whole rewritten lines only when rewrite is set.
func (c *console) pass(p []byte) error {
	if c.rewrite == nil {
		_, err := c.out.Write(p)
		return err
	}
	c.pending = append(c.pending, p...)
	i := bytes.LastIndexByte(c.pending, '\n')
	if i < 0 {
		return nil
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(string(c.pending[:i+1]), "\n") {
		if line != "" {
			b.WriteString(c.rewrite(strings.TrimSuffix(line, "\n")) + "\n")
		}
	}
	c.pending = append(c.pending[:0], c.pending[i+1:]...)
	_, err := io.WriteString(c.out, b.String())
	return err
}

// rewriteAll applies rewrite to every line of s.
func (c *console) rewriteAll(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = c.rewrite(l)
	}
	return strings.Join(lines, "\n")
}

func (c *console) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) > 0 {
		io.WriteString(c.out, c.rewrite(string(c.pending)))
		c.pending = c.pending[:0]
	}
	if len(c.line) > 0 {
		c.observe(string(c.line))
		c.line = c.line[:0]
	}
}

// keepLines is how much console history a session keeps for diagnosis.
const keepLines = 200

// keep adds a line to the console history.
func (c *console) keep(line string) {
	if len(c.lines) == keepLines {
		c.lines = c.lines[1:]
	}
	c.lines = append(c.lines, line)
}

func (c *console) observe(line string) {
	if c.fault != nil {
		c.fault(line)
	}
	if strings.TrimSpace(line) != "" {
		c.last = line
	}
	c.keep(line)
	now := time.Since(c.t0)
	c.lastLine = now
	// Firmware clears the screen without a newline, so markers may
	// follow escape sequences on their line.
	if i := strings.Index(line, "flushvm-l1: "); i > 0 {
		line = line[i:]
	}
	if rest, ok := strings.CutPrefix(line, "flushvm-l1: kernel "); ok && c.boot == 0 {
		c.boot = now
		if i := strings.Index(rest, "uptime "); i >= 0 {
			c.uptime = strings.TrimSuffix(rest[i+len("uptime "):], " at /init")
		}
	}
	if c.stuck == "" && protocol.IsWatchdogStuck(line) {
		c.stuck = strings.TrimSpace(line)
	}
	if strings.HasPrefix(line, "flushvm-l1: start run ") {
		c.starts = append(c.starts, now)
	}
	if strings.HasPrefix(line, "flushvm-l1: end run ") {
		c.ends = append(c.ends, now)
		var n int
		var kib int64
		fmt.Sscanf(line, "flushvm-l1: end run %d, max RSS %d KiB", &n, &kib)
		c.rss = append(c.rss, kib)
	}
}

// L1 progress bounds: how long L1 may take to reach its /init, and how
// long past a run's own bound (which L1's init enforces, plus its 30 s
// grace for a process that ignores SIGKILL) the run may go on before L1
// counts as stuck.
const (
	l1BootBound = 4 * time.Minute
	l1RunSlack  = 2 * time.Minute
)

// runTimeouts lists the runs' bounds inside L1 (0: none).
func runTimeouts(runs []Run) []time.Duration {
	ts := make([]time.Duration, len(runs))
	for i, r := range runs {
		ts[i] = r.Timeout
	}
	return ts
}

// campaignBootTimeout is flushvm crashtest's default --boot-timeout.
const campaignBootTimeout = 5 * time.Minute

// runSilences bounds how long each run may print nothing before L1 counts
// as stuck. A crashtest campaign has no bound of its own (it runs as long
// as its states take) but prints a line at least once per guest boot, and
// each boot ends within its --boot-timeout; so one silent for two boot
// bounds and two minutes more is in an L1 that stopped: a TCG livelock
// (QEMU spinning on both cores, nothing printed) was seen so, and waited
// out only by the session's bound. Other runs have their Timeout.
func runSilences(runs []Run) []time.Duration {
	ss := make([]time.Duration, len(runs))
	for i, r := range runs {
		if r.Command != nil || r.sub() != SubCrashtest {
			continue
		}
		boot := campaignBootTimeout
		if v, ok := FlagValue(r.Args, "boot-timeout"); ok {
			if d, err := time.ParseDuration(v); err == nil && d > 0 {
				boot = d
			}
		}
		ss[i] = 2*boot + 2*time.Minute
	}
	return ss
}

// watchProgress checks, every few seconds until ctx ends, that L1 makes
// progress (stalled); when it does not it calls stop and sends why on the
// returned channel, which otherwise receives "" once ctx ends.
func (c *console) watchProgress(ctx context.Context, timeouts []time.Duration, stop func()) <-chan string {
	out := make(chan string, 1)
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				out <- ""
				return
			case <-t.C:
				now := time.Since(c.t0)
				c.readBeat(now)
				if why, ok := c.stalled(timeouts, now); ok {
					stop()
					out <- why
					return
				}
			}
		}
	}()
	return out
}

// stalled reports whether L1, now into its session, has stopped making
// progress, and how.
func (c *console) stalled(timeouts []time.Duration, now time.Duration) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.boot == 0 {
		if now > l1BootBound {
			return fmt.Sprintf("L1 did not reach its /init within %v", l1BootBound), true
		}
		return "", false
	}
	if c.stuck != "" {
		// An L1 CPU stuck in guest mode never comes back: its run can
		// be neither finished nor killed, so waiting for the run's
		// bound only costs minutes.
		return "an L1 CPU no longer takes interrupts: " + c.stuck, true
	}
	if why, ok := c.beatStopped(now); ok {
		return why, true
	}
	i := len(c.starts) - 1
	if i >= 0 && i >= len(c.ends) && i < len(c.silences) && c.silences[i] > 0 {
		if quiet := now - max(c.starts[i], c.lastLine); quiet > c.silences[i] {
			return fmt.Sprintf("run %d printed nothing for %v, past its %v bound (a campaign prints a line at least once per guest boot)",
				i, quiet.Round(time.Second), c.silences[i]), true
		}
	}
	if i < 0 || i < len(c.ends) || i >= len(timeouts) || timeouts[i] <= 0 {
		return "", false
	}
	if over := now - c.starts[i]; over > timeouts[i]+l1RunSlack {
		return fmt.Sprintf("run %d started %v ago and neither ended nor was stopped by L1's own %v bound", i, over.Round(time.Second), timeouts[i]), true
	}
	return "", false
}

// l1BeatBound is how long L1's heartbeat file, rewritten every
// protocol.L1HeartbeatInterval, may stay unchanged after L1 reached its
// /init before L1 counts as stopped. The file goes over 9p, so it stops
// changing only when L1's own processes stop running (a TCG livelock was
// seen so: QEMU spinning on both host cores, L1 printing nothing). A busy
// L1 still runs its init: its L2 vCPUs leave guest mode on every L1 timer
// tick.
const l1BeatBound = 90 * time.Second

// readBeat reads L1's heartbeat file and notes when (now, into the session)
// its content changed.
func (c *console) readBeat(now time.Duration) {
	if c.beatPath == "" {
		return
	}
	b, err := os.ReadFile(c.beatPath)
	if err != nil {
		return // not written yet
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if string(b) != c.beat {
		c.prevBeat, c.beat, c.beatAt = c.beat, string(b), now
	}
}

// lastBeat is the last heartbeat snapshot read.
func (c *console) lastBeat() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.beat
}

// beatStopped reports whether L1's heartbeat has stopped, and says so with
// its last two snapshots on the console and in its history (what each
// thread of the runs was doing as L1 stopped). It is called with c.mu
// held.
func (c *console) beatStopped(now time.Duration) (string, bool) {
	if c.beatPath == "" || c.boot == 0 {
		return "", false
	}
	quiet := now - max(c.boot, c.beatAt)
	if quiet <= l1BeatBound {
		return "", false
	}
	var b strings.Builder
	for i, snap := range []string{c.prevBeat, c.beat} {
		for _, l := range strings.Split(strings.TrimSpace(snap), "\n") {
			if l != "" {
				l = fmt.Sprintf("flushvm-harness: L1 heartbeat %d of 2: %s", i+1, l)
				c.keep(l)
				b.WriteString(l + "\n")
			}
		}
	}
	io.WriteString(c.out, b.String())
	first, _, _ := strings.Cut(c.beat, "\n")
	if first == "" {
		first = "none came"
	}
	return fmt.Sprintf("L1's heartbeat file (rewritten every %v) has not changed for %v: L1 stopped running its own processes (last heartbeat: %s)",
		protocol.L1HeartbeatInterval, quiet.Round(time.Second), first), true
}

func (c *console) l1Boot() (time.Duration, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.boot, c.uptime
}

func (c *console) runTimes(i int) (start, dur time.Duration, rss int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i >= len(c.starts) {
		return 0, 0, 0
	}
	if i < len(c.rss) {
		rss = c.rss[i]
	}
	end := time.Since(c.t0)
	if i < len(c.ends) {
		end = c.ends[i]
	}
	return c.starts[i], end - c.starts[i], rss
}

func (c *console) recent() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

func (c *console) tail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}
