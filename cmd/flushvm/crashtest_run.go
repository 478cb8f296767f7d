package main

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
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/protocol"
)

// booter runs one `flushvm run` with args and returns its exit status and
// everything it printed (the guest's console and flushvm's own lines).
type booter interface {
	boot(ctx context.Context, args []string) (status int, out []byte, err error)
}

// execBooter boots by running the flushvm binary as a child process, so a
// power cut (which ends the VMM) ends only that child.
type execBooter struct {
	flushvm string
}

func (b *execBooter) boot(ctx context.Context, args []string) (int, []byte, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, b.flushvm, append([]string{"run"}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	clean := bytes.ReplaceAll(out.Bytes(), []byte{'\r'}, nil)
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

// bootResult is one boot as the campaign saw it.
type bootResult struct {
	status int
	out    []byte
	// crashes counts attempts whose guest crashed (and were retried).
	crashes int
}

// guestCmdline is the kernel command line of a campaign boot: run is the
// guest /init's flushvm.run= mode, args its comma-joined arguments.
func guestCmdline(run string, args []string) string {
	s := "console=ttyS0 panic=-1 quiet flushvm.run=" + run
	if len(args) > 0 {
		s += " flushvm.args=" + strings.Join(args, ",")
	}
	return s
}

// bootArgs returns the `flushvm run` arguments of a campaign boot.
func (c *campaign) bootArgs(cmdline, diskSpec string, extra ...string) []string {
	a := []string{"--kernel", c.kernel, "--initrd", c.initrd, "--mem", c.mem, "--cpus", strconv.Itoa(c.cpus),
		"--append", cmdline, "--disk", diskSpec, "--watchdog", bootWatchdog.String()}
	return append(a, extra...)
}

// guestEnded reports whether the guest's /init reported the exit status it
// ended the VM with.
func guestEnded(out []byte) bool { return bytes.Contains(out, []byte("flushvm-init: exit status ")) }

// guestCrash reports whether a boot that ended with status and printed out
// lost its guest, and how: flushvm reported a triple fault or a --watchdog
// hang (protocol.ExitGuestCrash, ExitGuestHang, with their report line), or the
// guest rebooted or powered off without its /init's exit status (a kernel
// panic reboots: panic=-1). Any other status is the guest's own or
// flushvm's (a power cut, a failure) and is the caller's to judge.
func guestCrash(status int, out []byte) (string, bool) {
	if protocol.Crashed(status, out) {
		r, _ := protocol.FindCrashReport(out)
		return r.String(), true
	}
	if status == protocol.ExitOK && !guestEnded(out) {
		return "the guest rebooted without its /init's exit status (a kernel panic?)", true
	}
	return "", false
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
func (c *campaign) boot(ctx context.Context, b booter, dir, name string, args []string, prepare func() error) (bootResult, error) {
	var r bootResult
	for attempt := 1; ; attempt++ {
		if prepare != nil {
			if err := prepare(); err != nil {
				return r, err
			}
		}
		bctx, cancel := context.WithTimeout(ctx, c.bootTimeout)
		status, out, err := b.boot(bctx, args)
		hung := err != nil && errors.Is(bctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
		cancel()
		r.status, r.out = status, out
		if werr := os.WriteFile(filepath.Join(dir, name+".log"), out, 0o644); werr != nil && err == nil {
			err = fmt.Errorf("%s log: %w", name, werr)
		}
		if err != nil && !hung {
			return r, fmt.Errorf("%s boot: %w (last output: %s)", name, err, lastLines(out, 3))
		}
		what, crashed := guestCrash(status, out)
		if !hung && !crashed {
			return r, nil
		}
		if hung {
			what = fmt.Sprintf("it hung (no end within --boot-timeout %v)", c.bootTimeout)
		}
		if attempt == bootAttempts || ctx.Err() != nil {
			return r, fmt.Errorf("%s boot: %w on all %d attempts; the last: %s: %s", name, errGuestCrashed, bootAttempts, what, lastLines(out, 3))
		}
		// Each retry names its cause, so a flaky machine stays visible.
		if c.log != nil {
			fmt.Fprintf(c.log, "flushvm crashtest: %s boot, attempt %d of %d: %s; running it again\n", name, attempt, bootAttempts, what)
		}
		r.crashes++
	}
}

// calibration is what a whole, uncut workload run sends to the disk.
type calibration struct {
	// Writes counts writes, discards and write-zeroes (what writes=N
	// counts); Flushes the flushes that reached the disk (flushes=N).
	Writes  uint64  `json:"writes"`
	Flushes uint64  `json:"flushes"`
	Acks    int     `json:"acks"`
	Seconds float64 `json:"seconds"`
	// GuestCrashes counts boots retried because the guest crashed or
	// hung.
	GuestCrashes int `json:"guest_crashes"`
}

// run runs the campaign's shard.
func (c *campaign) run(ctx context.Context, b booter, prog *progress) (*crashReport, error) {
	rep := newCrashReport(c)
	start := time.Now()
	defer func() { rep.finish(time.Since(start)) }()
	dir := c.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "flushvm-crashtest-")
		if err != nil {
			return rep, fmt.Errorf("work directory: %w", err)
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return rep, userErrorf("--dir: %v", err)
	}
	template := filepath.Join(dir, "template.img")
	defer os.Remove(template)
	prog.note("formatting a %s disk (ext4, in the guest)", formatSize(c.diskSize))
	if err := c.format(ctx, b, dir, template); err != nil {
		return rep, err
	}
	prog.note("calibrating: the whole %s workload, no power cut", c.workload)
	cal, err := c.calibrate(ctx, b, dir, template)
	if err != nil {
		return rep, err
	}
	rep.Calibration = cal
	prog.note("calibration: %d writes, %d flushes reach the disk, %d acknowledgements, %.1f s",
		cal.Writes, cal.Flushes, cal.Acks, cal.Seconds)
	for _, k := range c.shardCuts() {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		t0 := time.Now()
		res := c.cut(ctx, b, dir, template, k, cal)
		res.Seconds = time.Since(t0).Seconds()
		rep.add(res)
		prog.cut(res, rep)
	}
	prog.done()
	return rep, nil
}

// format makes the template image: a fresh file the guest formats.
func (c *campaign) format(ctx context.Context, b booter, dir, template string) error {
	args := c.bootArgs(guestCmdline("mkfs", nil), "path="+template+",cache=writeback")
	r, err := c.boot(ctx, b, dir, "format", args, func() error { return createImage(template, c.diskSize) })
	if err != nil {
		return err
	}
	if r.status != 0 || !bytes.Contains(r.out, []byte("flushvm-init: mkfs /dev/vda: ok")) {
		return fmt.Errorf("%w: the mkfs boot ended with status %d (is --initrd flushvm's guest image with e2fsprogs?): %s",
			errBootFailed, r.status, lastLines(r.out, 5))
	}
	return nil
}

// calibrate runs the workload to its end on a copy of the template and
// counts what reached the disk, to place the cuts inside the run.
func (c *campaign) calibrate(ctx context.Context, b booter, dir, template string) (calibration, error) {
	img := filepath.Join(dir, "calibration.img")
	stats := filepath.Join(dir, "calibration.stats.json")
	defer os.Remove(img)
	defer os.Remove(stats)
	t0 := time.Now()
	args := c.bootArgs(guestCmdline("crash:"+c.workload, c.workloadArgs),
		"path="+img+",cache="+string(c.cache)+",powercut="+c.policy, "--stats", stats)
	r, err := c.boot(ctx, b, dir, "calibration", args, func() error { return copySparse(template, img) })
	if err != nil {
		return calibration{}, err
	}
	if r.status != 0 {
		return calibration{}, fmt.Errorf("%w: the calibration boot (the %s workload without a power cut) ended with status %d: %s",
			errBootFailed, c.workload, r.status, lastLines(r.out, 5))
	}
	sb, err := os.ReadFile(stats)
	if err != nil {
		return calibration{}, fmt.Errorf("calibration --stats: %w", err)
	}
	var doc struct {
		Disks []struct {
			Writes      uint64 `json:"writes"`
			Discards    uint64 `json:"discards"`
			WriteZeroes uint64 `json:"write_zeroes"`
			HostSyncs   uint64 `json:"host_syncs"`
		} `json:"disks"`
	}
	if err := json.Unmarshal(sb, &doc); err != nil || len(doc.Disks) != 1 {
		return calibration{}, fmt.Errorf("calibration --stats %s: want one disk: %v", stats, err)
	}
	d := doc.Disks[0]
	cal := calibration{Writes: d.Writes + d.Discards + d.WriteZeroes, Flushes: d.HostSyncs,
		Acks: parseAcks(r.out).lines, Seconds: time.Since(t0).Seconds(), GuestCrashes: r.crashes}
	if cal.Writes == 0 {
		return cal, fmt.Errorf("%w: the calibration boot wrote nothing to the disk", errBootFailed)
	}
	return cal, nil
}

// cutPoint draws cut k's trigger from its seed: a write or (when the mode
// flushes at all) a flush, uniformly over the calibrated run.
func (c *campaign) cutPoint(seed uint64, cal calibration) protocol.Trigger {
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
func (c *campaign) cut(ctx context.Context, b booter, dir, template string, k int, cal calibration) (res cutResult) {
	seed := c.seed + uint64(k)
	at := c.cutPoint(seed, cal)
	res = cutResult{Cut: k, Seed: seed, At: at.String()}
	res.Repro = c.reproCommand(seed, at)
	name := fmt.Sprintf("cut-%d", k)
	img := filepath.Join(dir, name+".img")
	stats := filepath.Join(dir, name+".stats.json")
	defer func() {
		os.Remove(stats)
		if c.dir != "" && (res.Violation || res.Error != "") {
			res.Image = img
			return
		}
		os.Remove(img)
		os.Remove(filepath.Join(dir, name+".workload.log"))
		os.Remove(filepath.Join(dir, name+".check.log"))
	}()
	args := c.bootArgs(guestCmdline("crash:"+c.workload, c.workloadArgs),
		"path="+img+",cache="+string(c.cache)+",powercut="+c.policy,
		"--power-cut", at.String(), "--seed", strconv.FormatUint(seed, 10), "--stats", stats)
	r, err := c.boot(ctx, b, dir, name+".workload", args, func() error { return copySparse(template, img) })
	res.GuestCrashes += r.crashes
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.WorkloadStatus = r.status
	acks := parseAcks(r.out)
	res.Acked = acks.count()
	switch r.status {
	case exitPowerCut:
		res.PowerCut = true
		if err := res.readPowerCut(stats); err != nil {
			res.Error = err.Error()
			return res
		}
	case 0:
		// The guest's /init reported its exit status (c.boot saw to
		// it): the run sent fewer writes or flushes than the
		// calibration run and ended before its cut. Still check it.
	default:
		res.Error = fmt.Sprintf("the workload boot ended with status %d: %s", r.status, lastLines(r.out, 3))
		return res
	}
	// The guest's check mode adds -check and the mount point.
	checkArgs := append(append([]string{}, c.workloadArgs...), "-acked", acks.ackedArg(c.workload))
	// A crashed checker may have replayed part of the journal; replaying
	// the rest on the next attempt is what a second reboot would do.
	r, err = c.boot(ctx, b, dir, name+".check", c.bootArgs(guestCmdline("check:"+c.workload, checkArgs), "path="+img+",cache=writeback"), nil)
	res.GuestCrashes += r.crashes
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.judge(c.workload, r)
	return res
}

// reproCommand is the command that runs cut seed again at the same point.
func (c *campaign) reproCommand(seed uint64, at protocol.Trigger) string {
	a := []string{"flushvm", "crashtest", "--kernel", c.kernel, "--initrd", c.initrd, "--disk-size", c.diskSizeArg,
		"--workload", c.workload, "--cuts", "1", "--policy", c.policy, "--seed", strconv.FormatUint(seed, 10),
		"--cache", string(c.cache), "--at", at.String()}
	if c.records != 100 {
		a = append(a, "--records", strconv.Itoa(c.records))
	}
	if c.mem != "512M" {
		a = append(a, "--mem", c.mem)
	}
	if c.cpus != 2 {
		a = append(a, "--cpus", strconv.Itoa(c.cpus))
	}
	a = append(a, "--dir", "crash-"+strconv.FormatUint(seed, 10))
	for i, s := range a {
		a[i] = disk.ShellQuote(s)
	}
	return strings.Join(a, " ")
}

// lastLines returns the last n non-empty lines of out, joined by " | ".
func lastLines(out []byte, n int) string {
	var ls []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) != "" {
			ls = append(ls, strings.TrimSpace(l))
		}
	}
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	if len(ls) == 0 {
		return "(no output)"
	}
	return strings.Join(ls, " | ")
}

// createImage creates a sparse file of size bytes (replacing any).
func createImage(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("size %s: %w", path, err)
	}
	return f.Close()
}

// copySparse copies src to dst, skipping src's holes so a mostly empty
// image costs only its data.
func copySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy image: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("copy image: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("copy image: %w", err)
	}
	if err := copyData(in, out, fi.Size()); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

// copyData makes out (empty, or to be overwritten) a copy of in, size
// bytes long: it copies in's data extents to the same offsets, found with
// SEEK_DATA/SEEK_HOLE (without them, everything), and leaves in's holes as
// holes in out.
func copyData(in, out *os.File, size int64) error {
	for off := int64(0); off < size; {
		data, err := in.Seek(off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			break // only a hole from off to the end
		}
		if err != nil {
			data = off // no SEEK_DATA here: copy the rest whole
		}
		hole, err := in.Seek(data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		if _, err := out.Seek(data, io.SeekStart); err != nil {
			return err
		}
		if _, err := in.Seek(data, io.SeekStart); err != nil {
			return err
		}
		if _, err := io.CopyN(out, in, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return out.Truncate(size)
}
