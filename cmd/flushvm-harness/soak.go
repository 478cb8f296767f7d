package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/host/harness"
)

// soak runs `flushvm-harness soak`: N nested L2 boots with fio verification,
// each classified, and a count of the failures with their diagnostics. It
// exits 0 only when every boot passed.
func soak(ctx context.Context, opts harness.Options, args []string) int {
	fs := pflag.NewFlagSet("soak", pflag.ContinueOnError)
	o := harness.SoakOptions{}
	fs.IntVar(&o.Boots, "boots", 100, "L2 boots to run, one after the other in one L1 session")
	fs.StringVar(&o.VMM, "vmm", "flushvm", "L2 monitor: flushvm, qemu (QEMU -enable-kvm inside L1, the control), or both in turn")
	fs.IntSliceVar(&o.CPUs, "cpus", []int{1}, "L2 vCPUs, or counts the boots take in turn (e.g. 1,2)")
	fs.StringVar(&o.Mem, "mem", "512M", "L2 memory")
	fs.StringVar(&o.Cache, "cache", "writethrough", "the L2 disk's cache mode, or modes the boots take in turn (e.g. writeback,writethrough)")
	fs.StringVar(&o.Append, "append", "", "added to L2's kernel command line (e.g. pci=nomsi)")
	fs.StringVar(&o.FioSize, "fio-size", "16M", "fio's verified random-write size per boot")
	fs.DurationVar(&o.BootTimeout, "boot-timeout", 3*time.Minute, "a boot that runs longer is a hang")
	fs.IntVar(&o.SessionBoots, "session-boots", 25, "boots per L1 session (an L1 that dies costs the rest of its session)")
	fs.StringVar(&opts.L1Accel, "l1-accel", harness.DefaultL1Accel, "QEMU -accel of L1")
	fs.StringVar(&opts.L1CPU, "l1-cpu", harness.DefaultL1CPU, "QEMU -cpu of L1")
	fs.StringVar(&opts.L1Append, "l1-append", "", "added to L1's kernel command line (e.g. kvm_amd.npt=0)")
	fs.DurationVar(&opts.Watchdog, "watchdog", harness.DefaultWatchdog,
		"flushvm's --watchdog bound; a vCPU stalled with an interrupt pending is kicked after a quarter of it (a short bound counts shorter stalls)")
	if status, ok := parseSub("soak", fs, args); !ok {
		return status
	}
	if o.VMM != "flushvm" && o.VMM != "qemu" && o.VMM != "both" {
		fmt.Fprintf(os.Stderr, "flushvm-harness soak: --vmm %q: want flushvm, qemu or both\n", o.VMM)
		return 2
	}
	o.Harness = opts
	rep, err := harness.Soak(ctx, o)
	if rep != nil {
		rep.Print(os.Stdout)
	}
	if err != nil {
		return fail(err)
	}
	if err := rep.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "flushvm-harness: %v\n", err)
		return 1
	}
	return 0
}
