package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flushvm/flushvm/host"
	"github.com/flushvm/flushvm/host/initramfs"
	"github.com/flushvm/flushvm/internal/lines"
	"github.com/flushvm/flushvm/protocol"
)

// SoakOptions configure a soak: many L2 boots with disk I/O, one after the
// other in one session, each classified, to measure how often a guest
// fails to run to its end.
type SoakOptions struct {
	// Boots is how many L2 boots to run.
	Boots int
	// VMM is the L2 monitor: "flushvm" (default) or "qemu" (QEMU with
	// -enable-kvm inside L1, the control that shares everything below
	// the monitor with flushvm), or "both": qemu and flushvm in turn, so
	// that both see the same host load over the session.
	VMM string
	// CPUs are the L2 vCPU counts the boots take in turn ([1] if empty),
	// changing every len(Cache modes) boots so that every count meets
	// every mode; Mem is L2's memory (512M if empty).
	CPUs []int
	Mem  string
	// Cache is the disk's cache mode (writethrough if empty), or a
	// comma-separated list of modes the boots take in turn.
	Cache string
	// Append is added to L2's kernel command line (e.g. pci=nomsi).
	Append string
	// FioSize is the fio verify job's size (16M if empty).
	FioSize string
	// BootTimeout bounds one L2 boot; one that runs longer is a hang.
	BootTimeout time.Duration
	// SessionBoots is how many boots share one L1 boot (25 if zero), so
	// that an L1 that dies costs one boot, not the rest of the soak.
	SessionBoots int
	// Harness are the session's options (L1 CPU model, accel, flushvm
	// binary, output); its Timeout is derived from Boots when zero.
	Harness Options
}

// SoakOutcome is how one soak boot ended.
type SoakOutcome string

// The outcomes of a soak boot.
const (
	// SoakPass: the guest ran fio with verification to the end and
	// ended the VM with status 0.
	SoakPass SoakOutcome = "pass"
	// SoakWorkload: the guest ended normally but fio failed (a
	// verification error is data corruption).
	SoakWorkload SoakOutcome = "workload-failed"
	// SoakCrash: the VM ended without the guest's /init reporting its
	// status: a panic, a reset or a triple fault.
	SoakCrash SoakOutcome = "crash"
	// SoakHang: the boot ran past its time bound.
	SoakHang SoakOutcome = "hang"
	// SoakError: the monitor itself failed to run.
	SoakError SoakOutcome = "error"
	// SoakL1: the L1 guest (QEMU TCG) itself died during the boot.
	SoakL1 SoakOutcome = "l1-died"
)

// SoakBoot is one classified boot.
type SoakBoot struct {
	Index    int
	VMM      string
	Outcome  SoakOutcome
	Status   int
	Duration time.Duration
	// Stalls counts flushvm's watchdog notes: times a vCPU made no exit
	// for a quarter of the bound with an interrupt requested and had to
	// be kicked (flushvm only; the boot may still pass).
	Stalls int
	// Detail is the diagnostic of a failed boot: the error and the last
	// lines of its console and stderr.
	Detail string
}

// SoakReport is a whole soak.
type SoakReport struct {
	Options SoakOptions
	// Sessions are the L1 sessions the boots ran in, in order.
	Sessions []*Session
	// Boots are the boots that ran, in order: Options.Boots of them unless
	// the context ended, an L1 death counting as the failed boot it ended.
	Boots []SoakBoot
}

// Failures counts the boots that did not pass.
func (r *SoakReport) Failures() int {
	n := 0
	for _, b := range r.Boots {
		if b.Outcome != SoakPass {
			n++
		}
	}
	return n
}

// soakScript is L2's /run.sh: fio random writes with a data-integrity
// flush every 16 writes and crc32c verification of everything written.
const soakScript = `#!/bin/sh
fio --name=soak --filename=/dev/vda --size=%s --rw=randwrite --bs=4k \
	--ioengine=libaio --iodepth=8 --direct=1 --fdatasync=16 \
	--verify=crc32c --verify_fatal=1 --randrepeat=0 \
	--output-format=terse --terse-version=3 >/tmp/fio.out 2>&1
st=$?
if [ $st -ne 0 ]; then cat /tmp/fio.out; echo "SOAK fio failed: status $st"; exit 10; fi
echo "SOAK fio ok"
`

// Soak runs the soak: one nested session whose runs each boot L2 once
// under the chosen monitor with a disk on L1's tmpfs and run fio with
// verification. It needs the nested harness.
func Soak(ctx context.Context, o SoakOptions) (*SoakReport, error) {
	o = o.withDefaults()
	a, err := Prepare(ctx)
	if err != nil {
		return nil, err
	}
	img, err := soakImage(a, o.FioSize)
	if err != nil {
		return nil, err
	}
	k := a.Kernel
	hopts := o.Harness
	hopts.Mode = Nested
	hopts.JobFiles = map[string]string{"soak/bzImage": k.BzImage, "soak/initrd": img}
	if o.VMM != "flushvm" {
		if err := qemuBundle(hopts.JobFiles); err != nil {
			return nil, err
		}
	}
	rep := &SoakReport{Options: o}
	return rep, rep.sessions(ctx, Execute, hopts)
}

// executeFunc runs one L1 session: Execute, or a stand-in in tests.
type executeFunc func(ctx context.Context, o Options, runs ...Run) (*Session, error)

// sessions runs every boot of the soak in as many L1 sessions as it takes.
func (rep *SoakReport) sessions(ctx context.Context, exec executeFunc, hopts Options) error {
	o := rep.Options
	for first := 0; first < o.Boots; {
		ran, err := rep.session(ctx, exec, hopts, first, min(o.SessionBoots, o.Boots-first))
		if err != nil {
			return err
		}
		if ran == 0 {
			return fmt.Errorf("soak: the L1 session for boots from %d ended without running one", first)
		}
		first += ran
	}
	return nil
}

// session runs boots first..first+n-1 in one L1 session and returns how
// many boots it used. An L1 that dies (its QEMU exits before every run
// reported) fails the boot it was running, and the session ends there: the
// next session starts a fresh L1 at the boot after it, so every boot of the
// soak runs. Only the caller's context ending stops the soak.
func (rep *SoakReport) session(ctx context.Context, exec executeFunc, hopts Options, first, n int) (int, error) {
	o := rep.Options
	if hopts.Timeout == 0 {
		hopts.Timeout = 5*time.Minute + time.Duration(n)*(o.BootTimeout+time.Minute)
	}
	runs := make([]Run, n)
	for k := range runs {
		runs[k] = Run{Command: []string{"/bin/sh", "-c", o.command(first + k)}, Timeout: o.BootTimeout}
	}
	s, err := exec(ctx, hopts, runs...)
	if s != nil {
		rep.Sessions = append(rep.Sessions, s)
		for k, r := range s.Results {
			rep.Boots = append(rep.Boots, classifySoak(first+k, r, o.vmm(first+k), s.L1VMRunReturn))
		}
	}
	done := 0
	if s != nil {
		done = len(s.Results)
	}
	if err == nil {
		return done, nil
	}
	if ctx.Err() != nil {
		return done, err
	}
	if done < n {
		// The boot L1 was running when it died.
		rep.Boots = append(rep.Boots, SoakBoot{Index: first + done, VMM: o.vmm(first + done), Outcome: SoakL1,
			Detail: err.Error() + l1Tail(s)})
		done++
	}
	return done, nil
}

// l1Tail is the end of a session's L1 console, for a boot whose L1 died.
func l1Tail(s *Session) string {
	if s == nil || s.Console == "" {
		return ""
	}
	return "; L1 console: " + lines.Last([]byte(s.Console), 6)
}

func (o SoakOptions) withDefaults() SoakOptions {
	if o.Boots <= 0 {
		o.Boots = 1
	}
	if o.VMM == "" {
		o.VMM = "flushvm"
	}
	if len(o.CPUs) == 0 {
		o.CPUs = []int{1}
	}
	if o.Mem == "" {
		o.Mem = "512M"
	}
	if o.Cache == "" {
		o.Cache = "writethrough"
	}
	if o.FioSize == "" {
		o.FioSize = "16M"
	}
	if o.BootTimeout == 0 {
		o.BootTimeout = 3 * time.Minute
	}
	if o.SessionBoots <= 0 {
		o.SessionBoots = 25
	}
	return o
}

// soakDisk is the L2 disk, a sparse file on L1's tmpfs recreated per boot.
const soakDisk = "/tmp/soak.img"

// vmm is the monitor of boot i.
func (o SoakOptions) vmm(i int) string {
	if o.VMM == "both" {
		return [2]string{"qemu", "flushvm"}[i%2]
	}
	return o.VMM
}

// cache is the cache mode of boot i.
func (o SoakOptions) cache(i int) string {
	modes := strings.Split(o.Cache, ",")
	if o.VMM == "both" {
		i /= 2 // each VMM takes every mode in turn
	}
	return modes[i%len(modes)]
}

// cpus is the vCPU count of boot i.
func (o SoakOptions) cpus(i int) int {
	if o.VMM == "both" {
		i /= 2
	}
	return o.CPUs[(i/len(strings.Split(o.Cache, ",")))%len(o.CPUs)]
}

// command is the L1 shell command of boot i.
func (o SoakOptions) command(i int) string {
	cmdline := strings.TrimSpace("console=ttyS0 reboot=k panic=-1 quiet pci=noearly flushvm.run=script " + o.Append)
	prep := fmt.Sprintf("rm -f %s && truncate -s 256M %s && ", soakDisk, soakDisk)
	var argv []string
	if o.vmm(i) == "qemu" {
		prep += "[ -d /tmp/qemu ] || cp -a /job/qemu /tmp/qemu; "
		argv = QEMUCommand{Exec: []string{"/tmp/qemu/lib/" + qemuLoader, "--library-path", "/tmp/qemu/lib", "/tmp/qemu/qemu-system-x86_64"},
			Accel: "kvm", CPU: "host", Mem: o.Mem, SMP: o.cpus(i), BIOS: "/tmp/qemu/share/qboot.rom", DebugExit: true,
			Kernel: "/job/soak/bzImage", Initrd: "/job/soak/initrd", Append: cmdline,
			Extra: []string{"-L", "/tmp/qemu/share", "-drive", "file=" + soakDisk + ",if=virtio,format=raw,cache=" + o.cache(i)}}.Args()
	} else {
		argv = []string{"/job/flushvm", "run", "--watchdog", o.watchdog().String(),
			"--kernel", "/job/soak/bzImage", "--initrd", "/job/soak/initrd",
			"--mem", o.Mem, "--cpus", strconv.Itoa(o.cpus(i)), "--append", cmdline,
			"--disk", "path=" + soakDisk + ",cache=" + o.cache(i)}
	}
	q := make([]string, len(argv))
	for k, a := range argv {
		q[k] = host.ShellQuote(a)
	}
	return prep + "echo 'flushvm-soak: boot " + strconv.Itoa(i) + " " + o.vmm(i) + " cpus=" + strconv.Itoa(o.cpus(i)) + " cache=" + o.cache(i) + "'; exec " + strings.Join(q, " ")
}

// watchdog is the --watchdog bound of the flushvm boots: the harness's
// (DefaultWatchdog unless set; a soak always runs one).
func (o SoakOptions) watchdog() time.Duration {
	if o.Harness.Watchdog > 0 {
		return o.Harness.Watchdog
	}
	return DefaultWatchdog
}

// soakImage is the test guest's image with fio (and its libraries) and the
// soak script as /run.sh.
func soakImage(a *Artifacts, size string) (string, error) {
	fio, err := exec.LookPath("fio")
	if err != nil {
		return "", fmt.Errorf("soak: fio is not installed (Debian: apt-get install fio): %w", err)
	}
	x := initramfs.Extra()
	x.Dynamic("/usr/bin/fio", fio)
	x.Bytes("/run.sh", []byte(fmt.Sprintf(soakScript, size)), 0o755)
	if err := x.Err(); err != nil {
		return "", fmt.Errorf("soak image: %w", err)
	}
	return initramfs.Append(a.Cache, a.Initramfs, x)
}

// qemuLoader is the x86-64 dynamic loader's file name.
const qemuLoader = "ld-linux-x86-64.so.2"

// qemuBundle adds the host's QEMU, its shared libraries and the firmware
// an L2 boot needs to files, under qemu/ (L1 runs it through the loader
// with --library-path, so nothing of L1's own root is needed).
func qemuBundle(files map[string]string) error {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return fmt.Errorf("soak: %w", err)
	}
	objs, err := initramfs.SharedObjects(bin, bin, initramfs.LibraryDirs)
	if err != nil {
		return fmt.Errorf("soak: %w", err)
	}
	files["qemu/qemu-system-x86_64"] = bin
	for _, o := range objs {
		files["qemu/lib/"+filepath.Base(o.Path)] = o.Source
	}
	for _, fw := range []string{"qboot.rom", "linuxboot_dma.bin", "kvmvapic.bin"} {
		p := filepath.Join("/usr/share/qemu", fw)
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return fmt.Errorf("soak: QEMU firmware: %w", err)
		}
		files["qemu/share/"+fw] = real
	}
	return nil
}

// classifySoak decides how boot i ended from its run result; ret (where L1
// resumes after VMRUN) names the hangs and crashes that hold L1's registers.
func classifySoak(i int, r Result, vmm string, ret protocol.L1VMRunReturn) SoakBoot {
	b := SoakBoot{Index: i, VMM: vmm, Status: r.Status, Duration: r.Duration,
		Stalls: protocol.CountWatchdogKicks(r.Output)}
	_, ended := protocol.FindInitExit(r.Output)
	status := r.Status
	if vmm == "qemu" && status&1 == 1 {
		status >>= 1 // isa-debug-exit: (v << 1) | 1
	}
	report, reported := protocol.FindCrashReport(r.Output)
	switch {
	case vmm == "flushvm" && protocol.Crashed(status, r.Output) && report.Status == protocol.ExitGuestHang:
		b.Outcome = SoakHang
	case vmm == "flushvm" && protocol.Crashed(status, r.Output):
		b.Outcome = SoakCrash
	case r.Err != nil && strings.Contains(r.Err.Error(), "timed out"):
		b.Outcome = SoakHang
	case r.Err != nil:
		b.Outcome = SoakError
	case !ended:
		b.Outcome = SoakCrash
	case status == 0 && bytes.Contains(r.Output, []byte("SOAK fio ok")):
		b.Outcome = SoakPass
	default:
		b.Outcome = SoakWorkload
	}
	if b.Outcome != SoakPass {
		msg := ""
		if r.Err != nil {
			msg = r.Err.Error() + "; "
		}
		if reported {
			if why, ok := ret.Holds(report); ok {
				msg += why + "; "
			}
			msg += report.String() + "; "
		}
		b.Detail = msg + "last output: " + lines.Last(r.Output, 8)
	}
	return b
}

// Print writes the report: one line per failed boot with its diagnostic,
// then the count.
func (r *SoakReport) Print(w io.Writer) {
	o := r.Options
	counts := map[SoakOutcome]int{}
	for _, b := range r.Boots {
		counts[b.Outcome]++
		if b.Outcome != SoakPass {
			fmt.Fprintf(w, "soak: boot %d (%s): %s (status %d, %.1f s): %s\n", b.Index, b.VMM, b.Outcome, b.Status, b.Duration.Seconds(), b.Detail)
		}
		if b.Stalls > 0 {
			fmt.Fprintf(w, "soak: boot %d (%s): %s after %d watchdog kick(s) of a vCPU stalled with an interrupt pending\n", b.Index, b.VMM, b.Outcome, b.Stalls)
		}
	}
	fmt.Fprintf(w, "soak: vmm=%s cpus=%v cache=%s append=%q l1-accel=%s l1-cpu=%s l1-append=%q\n",
		o.VMM, o.CPUs, o.Cache, o.Append, orDefault(o.Harness.L1Accel, DefaultL1Accel), orDefault(o.Harness.L1CPU, DefaultL1CPU), o.Harness.L1Append)
	if len(r.Sessions) > 0 {
		fmt.Fprintf(w, "soak: %d L1 sessions on %s\n", len(r.Sessions), r.Sessions[0].L1QEMU)
	}
	for _, vmm := range []string{"flushvm", "qemu"} {
		var c [6]int
		n := 0
		for _, b := range r.Boots {
			if b.VMM != vmm {
				continue
			}
			n++
			for k, oc := range []SoakOutcome{SoakPass, SoakCrash, SoakHang, SoakWorkload, SoakError, SoakL1} {
				if b.Outcome == oc {
					c[k]++
				}
			}
		}
		if n > 0 {
			fmt.Fprintf(w, "soak: %s: %d boots: %d passed, %d failed (crash %d, hang %d, workload %d, error %d, L1 died %d)\n",
				vmm, n, c[0], n-c[0], c[1], c[2], c[3], c[4], c[5])
		}
	}
	fmt.Fprintf(w, "soak: %d boots: %d passed, %d failed\n", len(r.Boots), len(r.Boots)-r.Failures(), r.Failures())
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// errSoakFailed reports a soak with failed boots.
var errSoakFailed = errors.New("soak: boots failed")

// Err is nil when every boot passed.
func (r *SoakReport) Err() error {
	if n := r.Failures(); n > 0 || len(r.Boots) < r.Options.Boots {
		return fmt.Errorf("%w: %d of %d (%d ran)", errSoakFailed, n, r.Options.Boots, len(r.Boots))
	}
	return nil
}
