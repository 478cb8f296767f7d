package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/internal/cli"
	"github.com/flushvm/flushvm/kvm"
	"github.com/flushvm/flushvm/protocol"
	"github.com/flushvm/flushvm/vmm"
)

// defaultAppend is the kernel command line when --append is not given: the
// console on the serial port, no waiting on panic, a reboot through the
// keyboard controller (which ends the VMM with status 0; never a triple
// fault, which flushvm reports as a guest crash), and no early PCI
// scan (pci=noearly): on the AMD family 0xf CPU that QEMU's TCG presents to a
// nested guest, Linux otherwise probes all 256 buses for an AGP bridge, 16k
// port exits that cost seconds nested and find nothing in this machine.
const defaultAppend = "console=ttyS0 reboot=k panic=-1 pci=noearly"

func init() {
	registerCommand(command{
		name:    "run",
		summary: "boot a Linux kernel in a new virtual machine",
		run:     runCommand,
		usage:   func(w io.Writer) { newRunFlags().usage(w) },
	})
}

// runFlags are the flags of `flushvm run` (a contract: other tools call it).
type runFlags struct {
	fs     *pflag.FlagSet
	kernel string
	initrd string
	append string
	mem    string
	cpus   int
	disks  []string
	stats  string

	powerCut   string
	seed       uint64
	writeLog   string
	cacheBound string
	api        string
	watchdog   time.Duration
}

func newRunFlags() *runFlags {
	f := &runFlags{fs: pflag.NewFlagSet("run", pflag.ContinueOnError)}
	fs := f.fs
	fs.SortFlags = false
	fs.StringVar(&f.kernel, "kernel", "", "Linux bzImage (or ELF vmlinux) to boot (required)\n  e.g. --kernel build/kernel/vmlinuz-6.1.0-56-amd64")
	fs.StringVar(&f.initrd, "initrd", "", "initial ramdisk (cpio, optionally compressed) given to the kernel\n  e.g. --initrd build/initramfs.cpio.gz")
	fs.StringVar(&f.append, "append", defaultAppend, "kernel command line\n  e.g. --append 'console=ttyS0 reboot=k panic=-1 pci=noearly quiet'")
	fs.StringVar(&f.mem, "mem", "512M", "guest RAM: a number with K, M, G or T (no suffix: bytes, as in every size flag)\n  e.g. --mem 1G")
	fs.IntVar(&f.cpus, "cpus", 1, fmt.Sprintf("number of vCPUs (1-%d)\n  e.g. --cpus 2", vmm.MaxCPUs))
	fs.StringArrayVar(&f.disks, "disk", nil, "virtio-blk disk, repeatable: the guest sees vda, vdb, ... in order\n"+
		"  SPEC = path=FILE[,cache=writeback|writethrough|none|directsync|unsafe][,readonly=on|off][,serial=STRING]\n"+
		"         [,powercut=lose-all|keep-all|random-subset|random-sectors[:512|:4k]|prefix][,crashstates=FILE]\n"+
		"         [,faults=FILE][,werror=report|ignore|enospc|stop][,rerror=report|ignore|stop][,queues=N]\n"+
		"         [,aio=threads|io_uring]\n"+
		"  (queues=: request queues, each with its own interrupt vector; default one per vCPU;\n"+
		"  aio=io_uring: reads and writes batched through an io_uring per queue, threads the fallback)\n"+
		"  (faults=: fault-injection rules, one per line, e.g. \"write sectors=2048-2055 eio once\";\n"+
		"  werror=/rerror=stop pause the VM on a failed request until POST /resume: needs --api)\n"+
		"  e.g. --disk path=disk.img,cache=none --disk path=ro.img,readonly=on,serial=data1")
	fs.StringVar(&f.stats, "stats", "", "write per-disk counters as JSON to FILE when the VMM exits (after a power cut, each\n"+
		"  powercut= disk also has \"power_cut\": cause, completed_flushes, replay command, report)\n  e.g. --stats stats.json")
	fs.StringVar(&f.powerCut, "power-cut", "", "cut the power of the powercut= disks when WHEN happens: after=DURATION (from boot),\n"+
		"  writes=N (the N-th write, discard or write-zeroes never reaches the disk) or flushes=N (the\n"+
		"  N-th host flush, which includes write-through syncs, covers nothing); the VMM then stops\n"+
		"  at once, applies each disk's policy and exits with status 100\n  e.g. --power-cut flushes=10")
	fs.Uint64Var(&f.seed, "seed", 0, "seed of the power-cut policies' random choices and of fault rules' prob= (same seed, same image)\n  e.g. --seed 42")
	fs.StringVar(&f.writeLog, "write-log", "", "record the writes, discards and flushes of the powercut= disk (or of the only writable disk)\n"+
		"  in dm-log-writes format, for flushvm replay; console lines \"ACK ...\" become MARK entries\n"+
		"  e.g. --write-log run.wlog")
	fs.StringVar(&f.cacheBound, "cache-bound", "", "most unstable data the powercut= disks' volatile cache keeps before it destages\n"+
		"  the oldest writes (K, M or G; default 64M)\n  e.g. --cache-bound 16M")
	fs.DurationVar(&f.watchdog, "watchdog", 0, fmt.Sprintf("end the machine with status %d when a vCPU makes no progress for DURATION: it does not\n"+
		"  exit to flushvm and the same interrupt stays pending in its local APIC at every check\n"+
		"  (checked every DURATION/4; a report line on stderr); 0: off\n  e.g. --watchdog 60s", protocol.ExitGuestHang))
	fs.StringVar(&f.api, "api", "", "serve the control API (HTTP+JSON) on this unix socket: GET /stats,\n"+
		"  POST /disks/N/cache {\"wce\": false}, POST /power-cut, GET|PUT /disks/N/faults\n"+
		"  {\"rules\": [...]}, POST /resume, POST /disks/N/fail-held\n"+
		"  e.g. --api /tmp/flushvm.sock; curl --unix-socket /tmp/flushvm.sock -X POST http://vm/power-cut")
	fs.Usage = func() {}
	return f
}

func (f *runFlags) usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: flushvm run --kernel FILE [--initrd FILE] [--append CMDLINE] [--mem 512M]")
	fmt.Fprintln(w, "                   [--cpus 1] [--disk SPEC]... [--stats FILE] [--power-cut WHEN]")
	fmt.Fprintln(w, "                   [--seed N] [--write-log FILE] [--cache-bound SIZE] [--api SOCKET]")
	fmt.Fprintln(w, "                   [--watchdog DURATION]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Boots a Linux bzImage (64-bit boot protocol) with a 16550 serial console on")
	fmt.Fprintln(w, "ttyS0 connected to stdin/stdout, and virtio-blk PCI disks. The machine has ACPI")
	fmt.Fprintln(w, "tables (reset register, soft-off, pvpanic) and an MP table for kernels")
	fmt.Fprintln(w, "without ACPI.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Flags:")
	cli.FlagTable(w, f.fs)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Ending the machine and exit status:")
	for _, row := range protocol.RunExitStatuses {
		fmt.Fprintf(w, "  %-10s %s\n", row.Status, row.When)
	}
	fmt.Fprintln(w, "  debug exit from a guest shell: printf '\\x05' | dd of=/dev/port bs=1 seek=244")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "A triple fault is never a reboot: Linux reboots through the keyboard")
	fmt.Fprintln(w, "controller or the reset register (reboot=t would triple-fault on purpose and is")
	fmt.Fprintln(w, "reported as a crash). Nor is a kernel panic: Linux's pvpanic-mmio module reports")
	fmt.Fprintln(w, "it to the ACPI pvpanic device (_HID QEMU0001, port 0x505) before panic= reboots.")
	fmt.Fprintln(w, "A crash or hang prints one line on stderr, e.g.")
	fmt.Fprintln(w, "  "+protocol.CrashReport{Status: protocol.ExitGuestCrash, Detail: "vCPU 0 triple fault (KVM_EXIT_SHUTDOWN): RIP ... RSP ... RFLAGS ..."}.String())
	fmt.Fprintln(w, "  "+protocol.CrashReport{Status: protocol.ExitGuestCrash, Detail: "vCPU 0 " + protocol.KernelPanicEvent + ": RIP ... RSP ... RFLAGS ..."}.String())
	fmt.Fprintln(w, "  "+protocol.CrashReport{Status: protocol.ExitGuestHang, Detail: "vCPU 0 made no progress for 1m0s (...): RIP ...; LAPIC ... IRR [...]"}.String())
	fmt.Fprintln(w, "with the vCPU's RIP, RSP, RFLAGS, CR0/CR2/CR3/CR4, EFER and the code bytes at")
	fmt.Fprintln(w, "RIP (and, for a hang, its local APIC's TPR, ISR and IRR). A guest's debug exit")
	fmt.Fprintf(w, "can return any v, %d-%d included, but never prints that line: the line (and, for\n", protocol.ExitPowerCut, protocol.ExitGuestHang)
	fmt.Fprintln(w, "a power cut, the \"power_cut\" object in --stats) tells flushvm's statuses apart.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Environment:")
	fmt.Fprintln(w, "  FLUSHVM_DEBUG=1   log to stderr why the machine stopped, timings, vCPU and")
	fmt.Fprintln(w, "                    interrupt state at exit, and the VMM's memory use")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Power cuts: a disk with powercut=POLICY (lose-all, keep-all, random-subset,")
	fmt.Fprintln(w, "random-sectors[:512|:4k], prefix; any cache mode, not readonly=on) sits on a")
	fmt.Fprintln(w, "volatile write cache. When the power is cut the machine stops at once (requests")
	fmt.Fprintln(w, "in flight never complete), each policy decides from --seed which unstable writes")
	fmt.Fprintln(w, "reach the image, the write log gets the mark \""+protocol.PowerCutMark+"\", and flushvm prints")
	fmt.Fprintln(w, "one line per disk: counts kept/torn/lost and the flushvm replay command that")
	fmt.Fprintln(w, "rebuilds the image from the write log.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "--kernel also accepts an uncompressed ELF vmlinux, which skips the kernel's")
	fmt.Fprintln(w, "self-decompression (seconds when the guest runs nested under emulation).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Example:")
	fmt.Fprintln(w, "  flushvm run --kernel vmlinuz --initrd initrd.cpio.gz --mem 1G --cpus 2 \\")
	fmt.Fprintln(w, "      --disk path=disk.img,cache=writeback --stats stats.json")
	fmt.Fprintln(w, "  flushvm run --kernel vmlinuz --initrd initrd.cpio.gz \\")
	fmt.Fprintln(w, "      --disk path=disk.img,cache=writeback,powercut=random-sectors:4k \\")
	fmt.Fprintln(w, "      --power-cut flushes=20 --seed 7 --write-log run.wlog --stats stats.json")
}

// userError is an error the user can fix; it ends flushvm with exitUsage.
type userError struct{ err error }

func (e userError) Error() string { return e.err.Error() }
func (e userError) Unwrap() error { return e.err }

func userErrorf(format string, a ...any) error { return userError{fmt.Errorf(format, a...)} }

func runCommand(args []string, stdout, stderr io.Writer) int {
	f := newRunFlags()
	if status, ok := parseCommandFlags("run", f.fs, f.usage, args, stdout, stderr); !ok {
		return status
	}
	status, err := f.run(stdout, stderr)
	if err != nil {
		return commandFailed("run", err, stderr)
	}
	return status
}

// diskQueues is the number of request queues of a disk: its queues=, else
// one per vCPU (as QEMU's virtio-blk-pci does), so each vCPU's blk-mq
// context has a queue, an interrupt vector and a device loop of its own.
func diskQueues(sp blk.Spec, cpus int) int {
	if sp.Queues > 0 {
		return sp.Queues
	}
	return min(max(cpus, 1), blk.MaxQueues)
}

// run boots the machine and returns its exit status. Errors are user errors
// (userError) or failures of the VMM.
func (f *runFlags) run(stdout, stderr io.Writer) (status int, err error) {
	cfg, specs, pc, err := f.machineConfig(stdout, stderr)
	defer closeImage(cfg.Kernel)
	defer closeImage(cfg.Initrd)
	if err != nil {
		return 0, err
	}
	s := &runSession{f: f, pc: pc}
	defer func() { err = s.close(err) }()
	for i, sp := range specs {
		logPath := ""
		if i == pc.logDisk {
			logPath = f.writeLog
		}
		d, err := disk.Open(sp, disk.Options{WriteLog: logPath, CacheBound: pc.bound, Supply: pc.supply, Diag: stderr,
			Seed: f.seed, Device: blk.Options{Queues: diskQueues(sp, f.cpus), Stopped: s.errorStopped(i, stderr)}})
		if err != nil {
			return 0, userErrorf("--disk %s: %v", f.disks[i], err)
		}
		s.disks = append(s.disks, d)
		cfg.Devices = append(cfg.Devices, d.Dev)
	}
	cfg.ConsoleLine = s.consoleLine
	if s.m, err = vmm.New(cfg); err != nil {
		if errors.Is(err, vmm.ErrBadKernel) || errors.Is(err, kvm.ErrNoKVM) || errors.Is(err, kvm.ErrPermission) {
			return 0, userErrorf("%s: %v", f.kernel, err)
		}
		return 0, err
	}
	if pc.supply != nil {
		pc.supply.Stop = func() { s.m.Stop(exitPowerCut) }
	}
	if f.api != "" {
		if s.api, err = startAPI(f.api, newAPIHandler(&runController{diskControl: diskControl{disks: s.disks}, ps: pc.supply, m: s.m})); err != nil {
			return 0, userErrorf("--api: %v", err)
		}
	}
	res := s.runMachine(stderr)
	if pc.supply != nil && pc.supply.IsCut() {
		return s.applyPowerCut(stderr)
	}
	if res.Kind == vmm.ExitError {
		return exitFailure, res.Err
	}
	// A guest crash or hang (res.Err) is not flushvm's failure: the
	// machine printed its report and the status says which.
	return res.Status, nil
}

// machineConfig checks the flags and reads the kernel and initrd: the
// machine's configuration without its devices, the disks' specs and the
// power-cut set-up. Nothing is opened yet.
func (f *runFlags) machineConfig(stdout, stderr io.Writer) (vmm.Config, []blk.Spec, powerCutConfig, error) {
	var cfg vmm.Config
	var pc powerCutConfig
	if f.kernel == "" {
		return cfg, nil, pc, userErrorf("--kernel FILE is required")
	}
	mem, err := protocol.ParseSize(f.mem)
	if err == nil {
		err = vmm.CheckMemSize(mem)
	}
	if _, bare := strconv.ParseUint(strings.TrimSpace(f.mem), 10, 64); err != nil && bare == nil {
		err = fmt.Errorf("%w (a bare number is bytes: write %sM for MiB)", err, strings.TrimSpace(f.mem))
	}
	if err != nil {
		return cfg, nil, pc, userErrorf("--mem %s: %v", f.mem, err)
	}
	if f.cpus < 1 || f.cpus > vmm.MaxCPUs {
		return cfg, nil, pc, userErrorf("--cpus %d: between 1 and %d", f.cpus, vmm.MaxCPUs)
	}
	if f.watchdog < 0 {
		return cfg, nil, pc, userErrorf("--watchdog %v: must not be negative (0 turns it off)", f.watchdog)
	}
	specs := make([]blk.Spec, len(f.disks))
	for i, d := range f.disks {
		if specs[i], err = blk.ParseSpec(d); err != nil {
			return cfg, nil, pc, userErrorf("--disk: %v", err)
		}
	}
	for i, sp := range specs {
		if disk.HasStopPolicy(sp) && f.api == "" {
			return cfg, nil, pc, userErrorf("--disk %s: an error policy of stop pauses the VM until POST /resume: give --api SOCKET", f.disks[i])
		}
	}
	if pc, err = f.powerCutSetup(specs); err != nil {
		return cfg, nil, pc, err
	}
	for i, sp := range specs {
		if err := checkDiskPath(sp.Path); err != nil {
			return cfg, nil, pc, userErrorf("--disk %s: %v", f.disks[i], err)
		}
	}
	cfg = vmm.Config{Cmdline: f.append, MemSize: mem, CPUs: f.cpus, Console: os.Stdin, Output: stdout, Diag: stderr,
		Debug: os.Getenv("FLUSHVM_DEBUG") != "", Watchdog: f.watchdog}
	kernel, err := openBounded(f.kernel, mem)
	if err != nil {
		return cfg, nil, pc, userErrorf("--kernel: %v", err)
	}
	cfg.Kernel = kernel
	if f.initrd != "" {
		initrd, err := openBounded(f.initrd, mem)
		if err != nil {
			return cfg, nil, pc, userErrorf("--initrd: %v", err)
		}
		cfg.Initrd = initrd
	}
	if err := kvm.Available(); err != nil {
		return cfg, nil, pc, userError{err}
	}
	return cfg, specs, pc, nil
}

// runSession is one `flushvm run` once its disks open: the disks, the
// machine and the API server, which close in one place (close) in a fixed
// order.
type runSession struct {
	f     *runFlags
	pc    powerCutConfig
	disks []*disk.Disk
	m     *vmm.Machine
	api   *apiServer
}

// errorStopped is disk i's blk.Options.Stopped: it says on stderr what
// failed and pauses the machine until POST /resume.
func (s *runSession) errorStopped(i int, stderr io.Writer) func(blk.ErrorStopEvent) {
	return func(e blk.ErrorStopEvent) {
		fmt.Fprintln(stderr, "flushvm: "+protocol.FormatErrorStop(i, e.String(), true))
		if s.m != nil {
			s.m.Pause()
		}
	}
}

// consoleLine hands a line the guest printed to every disk (ACK marks in
// the write log, crash state requests), on the vCPU that printed it.
func (s *runSession) consoleLine(line []byte) {
	for _, d := range s.disks {
		d.ConsoleLine(line)
	}
}

// runMachine runs the machine to its end: the --power-cut after= timer,
// SIGINT/SIGTERM/SIGHUP (which stop it with 128+signal), then the API
// server closes, so no request sees the disks while a cut is applied.
func (s *runSession) runMachine(stderr io.Writer) vmm.Result {
	if s.pc.supply != nil {
		defer s.pc.supply.StartTimer(s.pc.trig)()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	sigDone := make(chan struct{})
	go func() {
		defer close(sigDone)
		select {
		case sig := <-sigs:
			s.m.Stop(128 + int(sig.(syscall.Signal)))
		case <-done:
		}
	}()
	res := s.m.Run()
	close(done)
	<-sigDone
	signal.Stop(sigs)
	if s.api != nil {
		cerr := s.api.Close()
		s.api = nil
		if cerr != nil {
			fmt.Fprintf(stderr, "flushvm run: --api: %s\n", oneLine(cerr))
		}
	}
	return res
}

// applyPowerCut decides, once the vCPUs are stopped, what each power-cut
// disk keeps, and prints one line per disk.
func (s *runSession) applyPowerCut(stderr io.Writer) (int, error) {
	ps := s.pc.supply
	// Now the held requests may fail: no guest sees them.
	ps.Release()
	var cutErr error
	for i, d := range s.disks {
		if !d.HasPowerCut() {
			continue
		}
		if _, err := d.PowerCut(ps.Why(), s.f.seed); err != nil {
			cutErr = errors.Join(cutErr, fmt.Errorf("power cut of disk %d: %w", i, err))
		}
		fmt.Fprintln(stderr, "flushvm: "+d.Summary(fmt.Sprintf("disk %d (%s)", i, d.Dev.Spec().Path)))
	}
	if cutErr != nil {
		return exitFailure, cutErr
	}
	return exitPowerCut, nil
}

// close ends the session in this order: the API server (if still open);
// the stats as the guest left them, taken before the machine closes
// (closing resets the devices, which would report the cache mode's default
// write cache instead of the guest's last choice); the machine; the held
// requests; the --stats file, written on every path out of run once disks
// may exist; the disks. It returns err, or the first error of these steps.
func (s *runSession) close(err error) error {
	keep := func(e error, format string) {
		if e != nil && err == nil {
			err = fmt.Errorf(format, e)
		}
	}
	if s.api != nil {
		keep(s.api.Close(), "--api: %w")
	}
	doc := disk.Collect(s.disks)
	if s.m != nil {
		keep(s.m.Close(), "closing machine: %w")
	}
	if s.pc.supply != nil {
		s.pc.supply.Release()
	}
	if s.f.stats != "" {
		if werr := disk.WriteStats(s.f.stats, doc); werr != nil && err == nil {
			err = userErrorf("--stats: %v", fileError(errors.Unwrap(werr)))
		}
	}
	for _, d := range s.disks {
		keep(d.Dev.Close(), "closing disk: %w")
	}
	return err
}

// imageFile is a --kernel or --initrd file as a vmm.Image: the loader
// reads it straight into guest memory (never into the VMM's heap); the
// run closes it.
type imageFile struct {
	*io.SectionReader
	f *os.File
}

// Close closes the file.
func (i *imageFile) Close() error { return i.f.Close() }

// closeImage closes img if it has a file behind it (an imageFile); nil
// and in-memory images are left alone.
func closeImage(img vmm.Image) {
	if c, ok := img.(io.Closer); ok {
		c.Close()
	}
}

// openBounded opens the regular file path, which must fit in limit bytes
// (the guest's memory), as an image of the size it has now: a file that
// shrinks while the loader reads it is an error, one that grows is read
// up to that size.
func openBounded(path string, limit uint64) (*imageFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fileError(err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fileError(err)
	}
	switch {
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("%s: not a regular file", path)
	case uint64(fi.Size()) > limit:
		err = fmt.Errorf("%s: %d bytes, more than the guest's %d bytes of memory", path, fi.Size(), limit)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &imageFile{SectionReader: io.NewSectionReader(f, 0, fi.Size()), f: f}, nil
}

// checkDiskPath checks, before anything is opened, that a disk's path is a
// regular file or a block device.
func checkDiskPath(path string) error {
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		return fileError(err)
	case fi.IsDir():
		return fmt.Errorf("%s: is a directory", path)
	case !fi.Mode().IsRegular() && (fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0):
		return fmt.Errorf("%s: not a regular file or a block device", path)
	}
	return nil
}

// fileError drops the Go-specific "open" prefix clutter from a file error.
func fileError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %v", pe.Path, pe.Err)
	}
	return err
}

// powerCutConfig is what the power-cut flags ask for, checked against the
// disks.
type powerCutConfig struct {
	trig protocol.Trigger // kind "" when --power-cut is not given
	// bound is --cache-bound (0: the default).
	bound int64
	// logDisk is the disk --write-log records (-1: none).
	logDisk int
	// supply is the machine's power supply (nil: no powercut= disk).
	supply *disk.PowerSupply
}

// powerCutSetup checks the power-cut flags against the disks.
func (f *runFlags) powerCutSetup(specs []blk.Spec) (powerCutConfig, error) {
	pc := powerCutConfig{logDisk: -1}
	var cutDisks []int
	for i, sp := range specs {
		if sp.HasPowerCut() {
			cutDisks = append(cutDisks, i)
		}
	}
	need := func(flag string) error {
		if len(cutDisks) == 0 {
			return userErrorf("%s needs a --disk with powercut=POLICY", flag)
		}
		return nil
	}
	if f.powerCut != "" {
		t, err := protocol.ParseTrigger(f.powerCut)
		if err != nil {
			return pc, userErrorf("--power-cut: %v", err)
		}
		if err := need("--power-cut"); err != nil {
			return pc, err
		}
		pc.trig = t
	}
	if f.fs.Changed("seed") && !slices.ContainsFunc(specs, func(sp blk.Spec) bool { return sp.Faults != "" }) {
		if err := need("--seed"); err != nil {
			return pc, fmt.Errorf("%w (or faults=FILE: the seed of its prob= rules)", err)
		}
	}
	if f.cacheBound != "" {
		b, err := protocol.ParseSize(f.cacheBound)
		if err != nil {
			return pc, userErrorf("--cache-bound: %v", err)
		}
		if err := need("--cache-bound"); err != nil {
			return pc, err
		}
		pc.bound = int64(b)
	}
	if f.writeLog != "" {
		var writable []int
		for i, sp := range specs {
			if !sp.ReadOnly {
				writable = append(writable, i)
			}
		}
		switch {
		case len(cutDisks) == 1:
			pc.logDisk = cutDisks[0]
		case len(cutDisks) > 1:
			return pc, userErrorf("--write-log: ambiguous: %d disks have powercut= (one write log records one disk)", len(cutDisks))
		case len(writable) == 1:
			// Read-only disks are never written: nothing to record.
			pc.logDisk = writable[0]
		case len(specs) == 0:
			return pc, userErrorf("--write-log needs a --disk")
		default:
			return pc, userErrorf("--write-log: ambiguous: %d writable disks and none has powercut= (give powercut= to the disk to record)", len(writable))
		}
	}
	if len(cutDisks) > 0 {
		pc.supply = disk.NewPowerSupply()
		pc.supply.Arm(pc.trig)
	}
	return pc, nil
}

// runController is the API's view of the running machine.
type runController struct {
	diskControl
	ps *disk.PowerSupply
	m  *vmm.Machine
}

// Resume retries the held requests, then lets the vCPUs run again.
func (c *runController) Resume() int {
	n := c.resumeDisks()
	c.m.Resume()
	return n
}

// PowerCut cuts the power now.
func (c *runController) PowerCut() error {
	if c.ps == nil {
		return errNoPowerCutDisk
	}
	if !c.ps.Cut("power cut by the API") {
		return errPowerAlreadyCut
	}
	return nil
}
