package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/kvm"
	"github.com/flushvm/flushvm/virtio"
	"github.com/flushvm/flushvm/vmm"
)

// defaultAppend is the kernel command line when --append is not given: the
// console on the serial port, no waiting on panic, a reboot through the
// keyboard controller (which ends the VMM with status 0), and no early PCI
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
}

func newRunFlags() *runFlags {
	f := &runFlags{fs: pflag.NewFlagSet("run", pflag.ContinueOnError)}
	fs := f.fs
	fs.SortFlags = false
	fs.StringVar(&f.kernel, "kernel", "", "Linux bzImage (or ELF vmlinux) to boot (required)\n  e.g. --kernel build/kernel/vmlinuz-6.1.0-56-amd64")
	fs.StringVar(&f.initrd, "initrd", "", "initial ramdisk (cpio, optionally compressed) given to the kernel\n  e.g. --initrd build/initramfs.cpio.gz")
	fs.StringVar(&f.append, "append", defaultAppend, "kernel command line\n  e.g. --append 'console=ttyS0 reboot=k panic=-1 pci=noearly quiet'")
	fs.StringVar(&f.mem, "mem", "512M", "guest RAM: a number with K, M or G (no suffix: MiB)\n  e.g. --mem 1G")
	fs.IntVar(&f.cpus, "cpus", 1, fmt.Sprintf("number of vCPUs (1-%d)\n  e.g. --cpus 2", vmm.MaxCPUs))
	fs.StringArrayVar(&f.disks, "disk", nil, "virtio-blk disk, repeatable: the guest sees vda, vdb, ... in order\n"+
		"  SPEC = path=FILE[,cache=writeback|writethrough|none|directsync|unsafe][,readonly=on|off][,serial=STRING]\n"+
		"  e.g. --disk path=disk.img,cache=none --disk path=ro.img,readonly=on,serial=data1")
	fs.StringVar(&f.stats, "stats", "", "write per-disk counters as JSON to FILE when the VMM exits\n  e.g. --stats stats.json")
	fs.Usage = func() {}
	return f
}

func (f *runFlags) usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: flushvm run --kernel FILE [--initrd FILE] [--append CMDLINE] [--mem 512M]")
	fmt.Fprintln(w, "                   [--cpus 1] [--disk SPEC]... [--stats FILE]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Boots a Linux bzImage (64-bit boot protocol) with a 16550 serial console on")
	fmt.Fprintln(w, "ttyS0 connected to stdin/stdout, and virtio-blk PCI disks.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Flags:")
	fmt.Fprint(w, f.fs.FlagUsagesWrapped(0))
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Ending the machine and exit status:")
	for _, row := range [][2]string{
		{"guest reboot (reboot=k, cf9 reset or triple fault)", "0"},
		{fmt.Sprintf("guest writes one byte v to I/O port %#x (debug exit)", vmm.DebugExitPort), "v"},
		{"Ctrl-A x on the console (when stdin is a terminal)", "0"},
		{"SIGINT/SIGTERM to flushvm", "128+signal"},
		{"KVM cannot run the guest (diagnostic on stderr)", "1"},
		{"usage or host-setup error (one line on stderr)", "2"},
	} {
		fmt.Fprintf(w, "  %-54s exit status %s\n", row[0], row[1])
	}
	fmt.Fprintln(w, "  debug exit from a guest shell: printf '\\x05' | dd of=/dev/port bs=1 seek=244")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Environment:")
	fmt.Fprintln(w, "  FLUSHVM_DEBUG=1   log to stderr why the machine stopped, timings, vCPU and")
	fmt.Fprintln(w, "                    interrupt state at exit, and the VMM's memory use")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "--kernel also accepts an uncompressed ELF vmlinux, which skips the kernel's")
	fmt.Fprintln(w, "self-decompression (seconds when the guest runs nested under emulation).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Example:")
	fmt.Fprintln(w, "  flushvm run --kernel vmlinuz --initrd initrd.cpio.gz --mem 1G --cpus 2 \\")
	fmt.Fprintln(w, "      --disk path=disk.img,cache=writeback --stats stats.json")
}

// userError is an error the user can fix; it ends flushvm with exitUsage.
type userError struct{ err error }

func (e userError) Error() string { return e.err.Error() }
func (e userError) Unwrap() error { return e.err }

func userErrorf(format string, a ...any) error { return userError{fmt.Errorf(format, a...)} }

func runCommand(args []string, stdout, stderr io.Writer) int {
	f := newRunFlags()
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			f.usage(stdout)
			return exitOK
		}
		fmt.Fprintf(stderr, "flushvm run: %s (see flushvm run --help)\n", oneLine(err))
		return exitUsage
	}
	if f.fs.NArg() > 0 {
		fmt.Fprintf(stderr, "flushvm run: unexpected argument %q (see flushvm run --help)\n", f.fs.Arg(0))
		return exitUsage
	}
	status, err := f.run(stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "flushvm run: %s\n", oneLine(err))
		var ue userError
		if errors.As(err, &ue) {
			return exitUsage
		}
		return exitFailure
	}
	return status
}

// run boots the machine and returns its exit status. Errors are user errors
// (userError) or failures of the VMM.
func (f *runFlags) run(stdout, stderr io.Writer) (status int, err error) {
	if f.kernel == "" {
		return 0, userErrorf("--kernel FILE is required")
	}
	mem, err := parseSize(f.mem)
	if err != nil {
		return 0, userErrorf("--mem: %v", err)
	}
	if f.cpus < 1 || f.cpus > vmm.MaxCPUs {
		return 0, userErrorf("--cpus %d: between 1 and %d", f.cpus, vmm.MaxCPUs)
	}
	specs := make([]blk.Spec, len(f.disks))
	for i, d := range f.disks {
		if specs[i], err = blk.ParseSpec(d); err != nil {
			return 0, userErrorf("--disk: %v", err)
		}
	}
	kernel, err := os.ReadFile(f.kernel)
	if err != nil {
		return 0, userErrorf("--kernel: %v", fileError(err))
	}
	var initrd []byte
	if f.initrd != "" {
		if initrd, err = os.ReadFile(f.initrd); err != nil {
			return 0, userErrorf("--initrd: %v", fileError(err))
		}
	}
	if err := kvm.Available(); err != nil {
		return 0, userError{err}
	}

	var disks []*blk.Device
	defer func() {
		// The stats file is written on every path out of run once disks
		// may exist, then the disks are closed.
		if f.stats != "" {
			if werr := writeStats(f.stats, disks); werr != nil && err == nil {
				err = werr
			}
		}
		for _, d := range disks {
			if cerr := d.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("closing disk: %w", cerr)
			}
		}
	}()
	devices := make([]virtio.Device, 0, len(specs))
	for i, sp := range specs {
		d, err := blk.Open(sp, blk.Options{})
		if err != nil {
			return 0, userErrorf("--disk %s: %v", f.disks[i], err)
		}
		disks = append(disks, d)
		devices = append(devices, d)
	}

	m, err := vmm.New(vmm.Config{
		Kernel:  kernel,
		Initrd:  initrd,
		Cmdline: f.append,
		MemSize: mem,
		CPUs:    f.cpus,
		Devices: devices,
		Console: os.Stdin,
		Output:  stdout,
		Diag:    stderr,
		Debug:   os.Getenv("FLUSHVM_DEBUG") != "",
	})
	if err != nil {
		if errors.Is(err, vmm.ErrBadKernel) || errors.Is(err, kvm.ErrNoKVM) || errors.Is(err, kvm.ErrPermission) {
			return 0, userErrorf("%s: %v", f.kernel, err)
		}
		return 0, err
	}
	defer func() {
		if cerr := m.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("closing machine: %w", cerr)
		}
	}()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	sigDone := make(chan struct{})
	go func() {
		defer close(sigDone)
		select {
		case s := <-sigs:
			m.Stop(128 + int(s.(syscall.Signal)))
		case <-done:
		}
	}()
	res := m.Run()
	close(done)
	<-sigDone
	signal.Stop(sigs)

	switch res.Kind {
	case vmm.ExitError:
		return exitFailure, res.Err
	default:
		return res.Status, nil
	}
}

// fileError drops the Go-specific "open" prefix clutter from a file error.
func fileError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %v", pe.Path, pe.Err)
	}
	return err
}

// writeStats writes the --stats document for disks.
func writeStats(path string, disks []*blk.Device) error {
	doc := blk.StatsFile{Disks: make([]blk.Stats, 0, len(disks))}
	for _, d := range disks {
		doc.Disks = append(doc.Disks, d.Stats())
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("--stats: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return userErrorf("--stats: %v", fileError(err))
	}
	return nil
}
