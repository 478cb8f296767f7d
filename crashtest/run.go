package crashtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/internal/lines"
	"github.com/flushvm/flushvm/internal/sparse"
	"github.com/flushvm/flushvm/protocol"
)

// Booter runs one `flushvm run` with args and returns its exit status and
// everything it printed (the guest's console and flushvm's own lines).
type Booter interface {
	Boot(ctx context.Context, args []string) (status int, out []byte, err error)
}

// ExecBooter boots by running the flushvm binary as a child process, so a
// power cut (which ends the VMM) ends only that child.
type ExecBooter struct {
	// Flushvm is the flushvm binary.
	Flushvm string
}

// Boot runs `flushvm run args` and returns its exit status and output.
func (b *ExecBooter) Boot(ctx context.Context, args []string) (int, []byte, error) {
	return b.BootLines(ctx, args, nil)
}

// BootLines is Boot, also passing each line of output to line (nil: none)
// as it comes.
//
// The output holds the child's stdout (the guest's console) and stderr
// (flushvm's own lines) merged line by line, each whole line as it came,
// and only whole lines but the last: a console line that a power cut ended
// half-way stays unterminated at the very end, after flushvm's report of
// the cut, so that no reader of whole lines (acknowledgements above all)
// takes it for a line, or reads it glued to the report.
func (b *ExecBooter) BootLines(ctx context.Context, args []string, line func(string)) (int, []byte, error) {
	m := &lineMerger{line: line}
	cmd := exec.CommandContext(ctx, b.Flushvm, append([]string{"run"}, args...)...)
	console, own := m.stream(), m.stream()
	cmd.Stdout, cmd.Stderr = console, own
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	m.finish(own, console)
	clean := bytes.ReplaceAll(m.out.Bytes(), []byte{'\r'}, nil)
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return 0, clean, fmt.Errorf("flushvm run: %w", ctx.Err())
	case err == nil:
		return 0, clean, nil
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), clean, nil
	default:
		return 0, clean, fmt.Errorf("flushvm run: %w", err)
	}
}

// lineMerger merges output streams into one of whole lines, in the order
// the lines were completed, passing each to line (nil: none).
type lineMerger struct {
	mu   sync.Mutex
	out  bytes.Buffer
	line func(string)
}

// mergeStream is one stream of a lineMerger: it holds back its current
// line until the line ends.
type mergeStream struct {
	m       *lineMerger
	partial []byte
}

func (m *lineMerger) stream() *mergeStream { return &mergeStream{m: m} }

func (s *mergeStream) Write(p []byte) (int, error) {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	s.partial = append(s.partial, p...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		s.m.emit(s.partial[:i+1])
		s.partial = s.partial[i+1:]
	}
	return len(p), nil
}

// emit appends a whole line (with its newline). Called with m.mu held.
func (m *lineMerger) emit(l []byte) {
	m.out.Write(l)
	if m.line != nil {
		m.line(string(l[:len(l)-1]))
	}
}

// finish ends the streams once their writers are done: the unterminated
// lines of all but the last stream are ended with a newline, and the
// last's is left unterminated at the very end.
func (m *lineMerger) finish(streams ...*mergeStream) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, s := range streams {
		if len(s.partial) == 0 {
			continue
		}
		if i < len(streams)-1 {
			m.emit(append(s.partial, '\n'))
		} else {
			m.out.Write(s.partial)
			if m.line != nil {
				m.line(string(s.partial))
			}
		}
		s.partial = nil
	}
}

// bootResult is one boot as the campaign saw it.
type bootResult struct {
	status int
	out    []byte
	// crashes counts attempts whose guest crashed (and were retried).
	crashes int
}

// cmdline is the kernel command line of a campaign boot: run is the
// guest /init's flushvm.run= mode; flushvm.fs= names the file system.
func (c *Campaign) cmdline(run string) string {
	return "console=ttyS0 panic=-1 quiet flushvm.fs=" + c.fs + " flushvm.run=" + run
}

// esc escapes a SPEC value: as in QEMU, ",," is a comma inside a value.
func esc(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// jobDisk writes the job disk of a boot (protocol.Job: the campaign's
// commands, acks and the states' counts of them) as dir/name.job and
// returns the flushvm run arguments that attach it, read-only, after the
// disk under test.
func (c *Campaign) jobDisk(dir, name string, acks []string, states []int) ([]string, error) {
	b, err := protocol.FormatJob(protocol.Job{Workload: c.runCmd, Checker: c.checkCmd, Acks: acks, States: states})
	if err != nil {
		return nil, fmt.Errorf("job disk: %w", err)
	}
	p := filepath.Join(dir, name+".job")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		return nil, fmt.Errorf("job disk: %w", err)
	}
	return []string{"--disk", "path=" + esc(p) + ",readonly=on"}, nil
}

// bootArgs returns the `flushvm run` arguments of a campaign boot.
func (c *Campaign) bootArgs(cmdline, diskSpec string, extra ...string) []string {
	a := []string{"--kernel", c.kernel, "--initrd", c.bootInitrd, "--mem", c.mem, "--cpus", strconv.Itoa(c.cpus),
		"--append", cmdline, "--disk", diskSpec, "--watchdog", bootWatchdog.String()}
	return append(a, extra...)
}

// guestEnded reports whether the guest's /init reported the exit status it
// ended the VM with.
func guestEnded(out []byte) bool {
	_, ok := protocol.FindInitExit(out)
	return ok
}

// guestCrash reports whether a boot that ended with status and printed out
// lost its guest, and how: flushvm reported a triple fault or a --watchdog
// hang (protocol.ExitGuestCrash, ExitGuestHang, with their report line), or the
// guest rebooted or powered off without its /init's exit status (a kernel
// panic reboots: panic=-1); a report that shows L1's registers, when
// flushvm runs nested (protocol.L1VMRunReturnEnv), says so first. Any
// other status is the guest's own or flushvm's (a power cut, a failure)
// and is the caller's to judge.
func guestCrash(status int, out []byte) (string, bool) {
	if protocol.Crashed(status, out) {
		r, _ := protocol.FindCrashReport(out)
		return l1StateCause(r) + r.String(), true
	}
	if status == protocol.ExitOK && !guestEnded(out) {
		return "the guest rebooted without its /init's exit status (a kernel panic?)", true
	}
	return "", false
}

// l1StateCause returns, followed by ": ", why a boot failed when its crash
// or hang report r (zero: none) shows L1's own registers (flushvm runs
// nested: protocol.L1VMRunReturnEnv), and "" otherwise.
func l1StateCause(r protocol.CrashReport) string {
	if why, ok := protocol.L1VMRunReturnFromEnv().Holds(r); ok {
		return why + ": "
	}
	return ""
}

// bootWatchdog is the --watchdog of campaign boots: a guest stuck with an
// interrupt pending ends its boot with a report (protocol.ExitGuestHang)
// long before --boot-timeout.
const bootWatchdog = time.Minute

// bootAttempts bounds the attempts of one boot whose guest crashes.
const bootAttempts = 3

// errGuestCrashed reports a boot whose guest crashed or hung on every
// attempt.
var errGuestCrashed = errors.New("the guest failed")

// boot runs one boot with the campaign's time bound. A guest that crashes
// (see guestCrash) or hangs past --boot-timeout says nothing about the
// disk: it is a failure of the guest or of the machine under it (nested
// QEMU TCG, here). Such a boot runs again, after prepare (nil: nothing)
// restores what the failed attempt may have written, and is counted in
// bootResult.crashes. name labels the log file in dir.
func (c *Campaign) boot(ctx context.Context, b Booter, dir, name string, args []string, prepare func() error) (bootResult, error) {
	var r bootResult
	for attempt := 1; ; attempt++ {
		if prepare != nil {
			if err := prepare(); err != nil {
				return r, err
			}
		}
		bctx, cancel := context.WithTimeout(ctx, c.bootTimeout)
		status, out, err := b.Boot(bctx, args)
		hung := err != nil && errors.Is(bctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
		cancel()
		r.status, r.out = status, out
		if werr := os.WriteFile(filepath.Join(dir, name+".log"), out, 0o644); werr != nil && err == nil {
			err = fmt.Errorf("%s log: %w", name, werr)
		}
		if err != nil && !hung {
			return r, fmt.Errorf("%s boot: %w (last output: %s)", name, err, lines.Last(out, 3))
		}
		what, crashed := guestCrash(status, out)
		if !hung && !crashed {
			return r, nil
		}
		if hung {
			what = fmt.Sprintf("it hung (no end within --boot-timeout %v)", c.bootTimeout)
		}
		if attempt == bootAttempts || ctx.Err() != nil {
			return r, fmt.Errorf("%s boot: %w on all %d attempts; the last: %s: %s", name, errGuestCrashed, bootAttempts, what, lines.Last(out, 3))
		}
		// Each retry names its cause, so a flaky machine stays visible.
		if c.log != nil {
			fmt.Fprintf(c.log, "flushvm crashtest: %s boot, attempt %d of %d: %s; running it again\n", name, attempt, bootAttempts, what)
		}
		r.crashes++
	}
}

// Run runs the campaign's shard: boots through b, progress to prog, one
// line per retried boot (with its cause) to log (nil: none). The report is
// returned even when the campaign stops early.
func (c *Campaign) Run(ctx context.Context, b Booter, prog *Progress, log io.Writer) (*Report, error) {
	c.log = log
	rep := newReport(c)
	defer func() { rep.finish(time.Since(rep.start)) }()
	dir := c.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "flushvm-crashtest-")
		if err != nil {
			return rep, fmt.Errorf("work directory: %w", err)
		}
		// A violating state's reproduce command needs the recording.
		defer func() {
			if rep.Summary.Violations == 0 {
				os.RemoveAll(d)
			} else {
				prog.note("kept %s: the recording the reproduce commands need", d)
			}
		}()
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return rep, usageErrorf("--dir: %v", err)
	}
	c.workDir = dir
	if err := c.prepareInitrd(dir); err != nil {
		return rep, err
	}
	if c.mode == protocol.CrashtestSystematic {
		err := c.runSystematic(ctx, b, prog, rep, dir)
		prog.done()
		return rep, err
	}
	return rep, c.runRandom(ctx, b, prog, rep, dir)
}

// runRandom runs the random mode: calibrate, then a workload boot and a
// checker boot per cut.
func (c *Campaign) runRandom(ctx context.Context, b Booter, prog *Progress, rep *Report, dir string) error {
	template := filepath.Join(dir, "template.img")
	defer os.Remove(template)
	prog.note("formatting a %s disk (%s, in the guest)", formatSize(c.diskSize), c.fs)
	if err := c.format(ctx, b, dir, template); err != nil {
		return err
	}
	prog.note("calibrating: the whole %s workload, no power cut", c.workload)
	cal, err := c.calibrate(ctx, b, dir, template)
	if err != nil {
		return err
	}
	rep.Calibration = cal
	prog.note("calibration: %d writes, %d flushes reach the disk, %d acknowledgements, %.1f s",
		cal.Writes, cal.Flushes, cal.Acks, cal.Seconds)
	for _, k := range c.ShardCuts() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		t0 := time.Now()
		res := c.cut(ctx, b, dir, template, k, cal)
		res.Seconds = time.Since(t0).Seconds()
		rep.add(res)
		prog.cut(res, rep)
	}
	prog.done()
	return nil
}

// format makes the template image: a fresh file the guest formats.
func (c *Campaign) format(ctx context.Context, b Booter, dir, template string) error {
	args := c.bootArgs(c.cmdline("mkfs"), "path="+esc(template)+",cache=writeback")
	r, err := c.boot(ctx, b, dir, "format", args, func() error { return sparse.Create(template, c.diskSize) })
	if err != nil {
		return err
	}
	if r.status != 0 || !bytes.Contains(r.out, []byte(protocol.FormatMkfsOK("/dev/vda"))) {
		return fmt.Errorf("%w: the mkfs boot ended with status %d (is --initrd flushvm's guest image with e2fsprogs?): %s",
			errBootFailed, r.status, lines.Last(r.out, 5))
	}
	return nil
}

// calibrate runs the workload to its end on a copy of the template and
// counts what reached the disk, to place the cuts inside the run.
func (c *Campaign) calibrate(ctx context.Context, b Booter, dir, template string) (protocol.CrashtestCalibration, error) {
	img := filepath.Join(dir, "calibration.img")
	stats := filepath.Join(dir, "calibration.stats.json")
	defer os.Remove(img)
	defer os.Remove(stats)
	defer os.Remove(filepath.Join(dir, "calibration.job"))
	t0 := time.Now()
	job, err := c.jobDisk(dir, "calibration", nil, nil)
	if err != nil {
		return protocol.CrashtestCalibration{}, err
	}
	args := c.bootArgs(c.cmdline("crash:"+c.label),
		"path="+esc(img)+",cache="+string(c.cache)+",powercut="+c.policy, append(job, "--stats", stats)...)
	r, err := c.boot(ctx, b, dir, "calibration", args, func() error { return sparse.Copy(template, img) })
	if err != nil {
		return protocol.CrashtestCalibration{}, err
	}
	if r.status != 0 {
		return protocol.CrashtestCalibration{}, fmt.Errorf("%w: the calibration boot (the %s workload without a power cut) ended with status %d: %s",
			errBootFailed, c.workload, r.status, lines.Last(r.out, 5))
	}
	sb, err := os.ReadFile(stats)
	if err != nil {
		return protocol.CrashtestCalibration{}, fmt.Errorf("calibration --stats: %w", err)
	}
	var doc struct {
		Disks []struct {
			Writes      uint64 `json:"writes"`
			Discards    uint64 `json:"discards"`
			WriteZeroes uint64 `json:"write_zeroes"`
			HostSyncs   uint64 `json:"host_syncs"`
		} `json:"disks"`
	}
	// Disk 0 is the disk under test; the job disk follows it.
	if err := json.Unmarshal(sb, &doc); err != nil || len(doc.Disks) == 0 {
		return protocol.CrashtestCalibration{}, fmt.Errorf("calibration --stats %s: want the disk under test: %v", stats, err)
	}
	d := doc.Disks[0]
	cal := protocol.CrashtestCalibration{Writes: d.Writes + d.Discards + d.WriteZeroes, Flushes: d.HostSyncs,
		Acks: len(ackKeys(r.out)), Seconds: time.Since(t0).Seconds(), GuestCrashes: r.crashes}
	if cal.Writes == 0 {
		return cal, fmt.Errorf("%w: the calibration boot wrote nothing to the disk", errBootFailed)
	}
	return cal, nil
}

// cutPoint draws cut k's trigger from its seed: a write or (when the mode
// flushes at all) a flush, uniformly over the calibrated run.
func (c *Campaign) cutPoint(seed uint64, cal protocol.CrashtestCalibration) protocol.Trigger {
	if c.at != nil {
		return *c.at
	}
	r := rand.New(rand.NewPCG(seed, 0x637574706f696e74)) // "cutpoint"
	// The last 5% are left out: a run that sends a little less than the
	// calibration run would end before such a cut.
	span := func(n uint64) uint64 { return max(1, n*95/100) }
	if cal.Flushes > 0 && r.IntN(2) == 1 {
		return protocol.Trigger{Kind: protocol.TriggerFlushes, N: 1 + r.Uint64N(span(cal.Flushes))}
	}
	return protocol.Trigger{Kind: protocol.TriggerWrites, N: 1 + r.Uint64N(span(cal.Writes))}
}

// cut runs cut k: the workload boot with the power cut, then the checker.
func (c *Campaign) cut(ctx context.Context, b Booter, dir, template string, k int, cal protocol.CrashtestCalibration) (res protocol.CrashtestCut) {
	seed := c.seed + uint64(k)
	at := c.cutPoint(seed, cal)
	res = protocol.CrashtestCut{Cut: k, Seed: seed, At: at.String()}
	res.Repro = c.reproCommand(seed, at)
	name := fmt.Sprintf("cut-%d", k)
	img := filepath.Join(dir, name+".img")
	stats := filepath.Join(dir, name+".stats.json")
	defer func() {
		os.Remove(stats)
		os.Remove(filepath.Join(dir, name+".workload.job"))
		os.Remove(filepath.Join(dir, name+".check.job"))
		if c.dir != "" && (res.Violation || res.Error != "") {
			res.Image = img
			return
		}
		os.Remove(img)
		os.Remove(filepath.Join(dir, name+".workload.log"))
		os.Remove(filepath.Join(dir, name+".check.log"))
	}()
	job, err := c.jobDisk(dir, name+".workload", nil, nil)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	args := c.bootArgs(c.cmdline("crash:"+c.label),
		"path="+esc(img)+",cache="+string(c.cache)+",powercut="+c.policy,
		append(job, "--power-cut", at.String(), "--seed", strconv.FormatUint(seed, 10), "--stats", stats)...)
	r, err := c.boot(ctx, b, dir, name+".workload", args, func() error { return sparse.Copy(template, img) })
	res.GuestCrashes += r.crashes
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.WorkloadStatus = r.status
	acks := ackKeys(r.out)
	res.Acked = len(acks)
	switch r.status {
	case protocol.ExitPowerCut:
		res.PowerCut = true
		if err := readPowerCut(&res, stats); err != nil {
			res.Error = err.Error()
			return res
		}
	case 0:
		// The guest's /init reported its exit status (c.boot saw to
		// it): the run sent fewer writes or flushes than the
		// calibration run and ended before its cut. Still check it.
	default:
		res.Error = fmt.Sprintf("the workload boot ended with status %d: %s", r.status, lines.Last(r.out, 3))
		return res
	}
	// The checker must find every acknowledged key intact.
	job, err = c.jobDisk(dir, name+".check", acks, []int{len(acks)})
	if err != nil {
		res.Error = err.Error()
		return res
	}
	// A crashed checker may have replayed part of the journal; replaying
	// the rest on the next attempt is what a second reboot would do.
	r, err = c.boot(ctx, b, dir, name+".check", c.bootArgs(c.cmdline("check:"+c.label), "path="+esc(img)+",cache=writeback", job...), nil)
	res.GuestCrashes += r.crashes
	if err != nil {
		res.Error = err.Error()
		return res
	}
	judge(&res.CrashtestCheck, c.label, r.status, r.out)
	return res
}

// reproCommand is the command that runs cut seed again at the same point.
func (c *Campaign) reproCommand(seed uint64, at protocol.Trigger) string {
	return c.commandLine(seed, "--mode", "random", "--cuts", "1", "--policy", c.policy, "--at", at.String(),
		"--dir", "crash-"+strconv.FormatUint(seed, 10))
}

// commandLine is the `flushvm crashtest` command of this campaign's
// workload, machine and seed, with extra flags, quoted for a shell.
func (c *Campaign) commandLine(seed uint64, extra ...string) string {
	a := []string{"flushvm", "crashtest", "--kernel", c.kernel, "--initrd", c.initrd, "--disk-size", c.diskSizeArg,
		"--workload", c.workload, "--seed", strconv.FormatUint(seed, 10), "--cache", string(c.cache)}
	if c.fs != protocol.FSExt4 {
		a = append(a, "--fs", c.fs)
	}
	if c.checker != "" {
		a = append(a, "--checker", c.checker)
	}
	if c.workloadDir != "" {
		a = append(a, "--workload-dir", c.workloadDir)
	}
	if c.records != 100 {
		a = append(a, "--records", strconv.Itoa(c.records))
	}
	if c.mem != "512M" {
		a = append(a, "--mem", c.mem)
	}
	if c.cpus != 2 {
		a = append(a, "--cpus", strconv.Itoa(c.cpus))
	}
	a = append(a, extra...)
	for i, s := range a {
		a[i] = disk.ShellQuote(s)
	}
	return strings.Join(a, " ")
}
