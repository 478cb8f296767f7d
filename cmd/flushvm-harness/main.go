// Command flushvm-harness runs flushvm where it can boot Linux and prepares
// the guest artifacts it boots.
//
//	flushvm-harness [--mode auto|direct|nested] [--timeout 10m] run FLUSHVM-RUN-ARGS...
//	    flushvm run with host paths: directly on a host with hardware
//	    virtualization, else nested inside a QEMU TCG L1 guest.
//	flushvm-harness [--timeout D] l1 CMD ARGS...
//	    run a command inside the nested L1 guest (flushvm is /job/flushvm).
//	flushvm-harness artifacts
//	    fetch the kernel, build the test initramfs, print their paths.
//	flushvm-harness [--timeout D] qemu FLUSHVM-RUN-ARGS...
//	    boot the same guest under plain QEMU TCG (a stand-in for flushvm).
//	flushvm-harness demo [--cpus N] [--mem SIZE] [--disk] [--cache MODE]
//	    what `make run` does: boot the test guest with sensible defaults.
//	flushvm-harness [--timeout D] [--scratch-size SIZE] crashtest FLUSHVM-CRASHTEST-ARGS...
//	    flushvm crashtest with host paths, as one run (nested: in one L1
//	    session, its images on a scratch disk); --kernel and --initrd
//	    default to the test guest's.
//	flushvm-harness campaign [--modes MODE:N,...] [--out DIR] FLUSHVM-CRASHTEST-ARGS...
//	    one crashtest per cache mode in one session (what `make crashtest`
//	    does), reports in DIR/MODE.json, then the per-mode table.
//	flushvm-harness crashtest-table REPORT...
//	    the per-mode table of crashtest reports (shards of a mode add up).
//	flushvm-harness slurm-campaign [--shards N] [--shared DIR] [--local-cluster] FLUSHVM-CRASHTEST-ARGS...
//	    one systematic crashtest split into N Slurm tasks (each a
//	    flushvm-harness crashtest --shard I/N), the reports merged.
//	flushvm-harness soak [--boots N] [--vmm flushvm|qemu] [--cpus N] [--cache MODE] ...
//	    N nested L2 boots with fio verification in one L1 session; the
//	    failures with their diagnostics, and a count (what `make soak` does).
//
// The exit status is that of flushvm (or the command); 2 means a usage
// error, 3 a harness failure.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/host/harness"
	"github.com/flushvm/flushvm/host/l1qemu"
	"github.com/flushvm/flushvm/internal/cli"
	"github.com/flushvm/flushvm/protocol"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func usage(w io.Writer, fs *pflag.FlagSet) {
	fmt.Fprint(w, `Usage: flushvm-harness [--mode auto|direct|nested] [--timeout 10m] [--flushvm BIN] COMMAND ARGS...

Commands:
  run ARGS...      flushvm run ARGS (host paths) directly or nested in a QEMU L1 guest
                   e.g. flushvm-harness run --kernel vmlinuz --initrd initrd.gz --append "console=ttyS0"
  l1 CMD ARGS...   run CMD inside the nested L1 guest (flushvm is /job/flushvm)
                   e.g. flushvm-harness l1 /bin/sh -c 'ls -l /dev/kvm'
  artifacts        fetch the kernel, build the test initramfs, print their paths
  qemu ARGS...     boot what flushvm run ARGS would, under plain QEMU TCG
  demo [--cpus N] [--mem SIZE] [--disk] [--cache MODE]
                   boot the test guest with sensible defaults (make run)
  crashtest ARGS...
                   flushvm crashtest ARGS (host paths) directly or nested in one L1 session,
                   with a scratch ext4 disk for its images; --kernel/--initrd default to the
                   test guest's. e.g. flushvm-harness crashtest --disk-size 128M \
                     --workload fsyncstress --max-states 100 --seed 1 --report r.json
  campaign [--modes MODE:N,...] [--out DIR] ARGS...
                   a crashtest per cache mode in one session (default modes
                   `+defaultModes+`,
                   out build/crashtest), then the per-mode table (make crashtest)
  crashtest-table REPORT...
                   print the per-mode table of crashtest --report files
  slurm-campaign [--shards 2] [--shared DIR] [--local-cluster] [--sbatch-arg ARG]... ARGS...
                   one systematic crashtest as N Slurm tasks (shard I of N each; shard 1
                   records, the others start from a copy of its recording), reports in
                   DIR/report-I.json, then the merged table (DIR/table.md); --local-cluster
                   runs it on a single-node cluster on loopback in DIR/cluster
  soak [--boots 100] [--vmm flushvm|qemu] [--cpus 1] [--cache writethrough] [--append ARGS]
       [--l1-accel tcg,thread=multi] [--l1-cpu max] [--l1-append ARGS]
                   N L2 boots with fio verification in one L1 session; failures with
                   their diagnostics, then a count (make soak)
  help             this help

Global flags:
`)
	cli.FlagTable(w, fs)
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Environment (nested): %s=system|PATH runs L1 on that QEMU instead of QEMU %d or later\n", l1qemu.Env, l1qemu.MinMajor)
	fmt.Fprintf(w, "(the system's when it is that new, else the one from %s, unpacked in the cache);\n", l1qemu.Suite)
	fmt.Fprintf(w, "%s=WORDS adds WORDS to L1's kernel command line. See docs/nested.md.\n", harness.L1AppendEnv)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Exit status: flushvm's (or the command's); 2 a usage error, 1 a harness failure.")
}

func run(args []string) int {
	fs := pflag.NewFlagSet("flushvm-harness", pflag.ContinueOnError)
	fs.SetInterspersed(false)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	modeName := fs.String("mode", "auto", "where flushvm runs: auto (nested when the host's KVM cannot run Linux), direct or nested\n  e.g. --mode nested")
	timeout := fs.Duration("timeout", harness.DefaultTimeout, "bound on the whole run\n  e.g. --timeout 20m")
	flushvm := fs.String("flushvm", "", "flushvm binary to run (default: build ./cmd/flushvm, static)\n  e.g. --flushvm build/bin/flushvm")
	scratch := fs.String("scratch-size", "", "nested: give L1 a scratch ext4 disk of this size at "+harness.ScratchMount+
		"\n  (default: sized for the crashtest runs, none otherwise)\n  e.g. --scratch-size 8G")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			usage(os.Stdout, fs)
			return 0
		}
		fmt.Fprintf(os.Stderr, "flushvm-harness: %v (see flushvm-harness --help)\n", err)
		return 2
	}
	if fs.NArg() > 0 && fs.Arg(0) == "help" {
		usage(os.Stdout, fs)
		return 0
	}
	mode, err := harness.ParseMode(*modeName)
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "flushvm-harness: %v (see flushvm-harness --help)\n", err)
		return 2
	case fs.NArg() == 0:
		fmt.Fprintln(os.Stderr, "flushvm-harness: a COMMAND is required (see flushvm-harness --help)")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	if (cmd != "crashtest" && cmd != "campaign" && cmd != "soak" && cmd != "slurm-campaign") || fs.Changed("timeout") {
		// Campaigns and soaks without --timeout size their own bound from
		// their cuts or boots (harness.Options.Timeout bounds the session).
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	opts := harness.Options{Mode: mode, Stdout: os.Stdout, Log: os.Stderr, Timeout: *timeout, Flushvm: *flushvm}
	if *scratch != "" {
		size, err := protocol.ParseSize(*scratch)
		if opts.ScratchSize = int64(size); err != nil || opts.ScratchSize < 16<<20 {
			fmt.Fprintf(os.Stderr, "flushvm-harness: --scratch-size %q: want at least 16M\n", *scratch)
			return 2
		}
	}
	if passThroughHelp(cmd, rest) {
		return 0
	}
	return dispatch(ctx, opts, cmd, rest, fs.Changed("timeout"))
}

// dispatch runs command cmd with its arguments; timeoutSet says whether
// --timeout was given (campaigns and soaks otherwise size their own).
func dispatch(ctx context.Context, opts harness.Options, cmd string, rest []string, timeoutSet bool) int {
	switch cmd {
	case "run":
		return session(ctx, opts, harness.Run{Args: rest})
	case "l1":
		if len(rest) == 0 {
			fmt.Fprintln(os.Stderr, "flushvm-harness: l1 needs a command to run in L1 (see flushvm-harness --help)")
			return 2
		}
		opts.Mode = harness.Nested
		return session(ctx, opts, harness.Run{Command: rest})
	case "artifacts":
		a, err := harness.Prepare(ctx)
		if err != nil {
			return fail(err)
		}
		fmt.Printf("kernel %s %s\nbzImage %s\ninitramfs %s\n", a.Kernel.Package, a.Kernel.Version, a.Kernel.BzImage, a.Initramfs)
		return 0
	case "qemu":
		st, _, err := harness.QEMU(ctx, os.Stdout, rest)
		if err != nil {
			return fail(err)
		}
		return st
	case "demo":
		return demo(ctx, opts, rest)
	case "crashtest":
		return crashtest(ctx, opts, timeoutSet, rest)
	case "campaign":
		return campaign(ctx, opts, timeoutSet, rest)
	case "crashtest-table":
		return crashtestTable(rest)
	case "slurm-campaign":
		return slurmCampaign(ctx, opts, rest)
	case "soak":
		if !timeoutSet {
			opts.Timeout = 0
		}
		return soak(ctx, opts, rest)
	}
	fmt.Fprintf(os.Stderr, "flushvm-harness: unknown command %q (see flushvm-harness --help)\n", cmd)
	return 2
}

func session(ctx context.Context, opts harness.Options, r harness.Run) int {
	s, err := harness.Execute(ctx, opts, r)
	if err != nil {
		return fail(err)
	}
	res := s.Results[0]
	if res.Err != nil {
		return fail(res.Err)
	}
	if s.Mode == harness.Nested {
		fmt.Fprintf(os.Stderr, "flushvm-harness: L1 reached /init after %.1f s wall (L1 uptime %s); job started at %.1f s, ran %.1f s; flushvm max RSS %d MiB; exit status %d\n",
			s.L1Boot.Seconds(), s.L1Uptime, res.Start.Seconds(), res.Duration.Seconds(), res.MaxRSSKiB>>10, res.Status)
	}
	return res.Status
}

func fail(err error) int {
	fmt.Fprintf(os.Stderr, "flushvm-harness: %v\n", err)
	return 3
}

// demo boots the test guest with defaults: it prints the machine line
// from /init and, with --disk, runs fsyncstress on a fresh sparse ext4
// disk.
func demo(ctx context.Context, opts harness.Options, args []string) int {
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	cpus := fs.Int("cpus", 2, "guest CPUs")
	mem := fs.String("mem", "512M", "guest memory")
	withDisk := fs.Bool("disk", false, "attach a fresh sparse ext4 disk and run fsyncstress on it")
	cache := fs.String("cache", "writeback", "the disk's cache mode")
	size := fs.String("disk-size", "1G", "the fresh disk's size")
	qemu := fs.Bool("qemu", false, "boot under plain QEMU TCG instead of flushvm")
	faults := fs.String("faults", "", "fault rules for the disk, separated by ';' (flushvm's faults=FILE)\n"+
		"  e.g. --faults 'write from=300 prob=0.02 eio'")
	if status, ok := parseSub("demo", fs, args); !ok {
		return status
	}
	a, err := harness.Prepare(ctx)
	if err != nil {
		return fail(err)
	}
	fmt.Fprintf(os.Stderr, "flushvm-harness: kernel %s (%s), initramfs %s\n", a.Kernel.Release, a.Kernel.Version, a.Initramfs)
	run := []string{"--kernel", a.Kernel.BzImage, "--mem", *mem, "--cpus", fmt.Sprint(*cpus)}
	cmdline := "console=ttyS0 panic=-1 quiet"
	initrd := a.Initramfs
	var stats string
	if *withDisk {
		dir, err := os.MkdirTemp(a.Cache, "demo-disk-")
		if err != nil {
			return fail(err)
		}
		defer os.RemoveAll(dir)
		img := filepath.Join(dir, "disk.img")
		if err := harness.FreshExt4(ctx, img, *size); err != nil {
			return fail(err)
		}
		initrd, err = harness.WithScript(a.Cache, a.Initramfs, harness.FsyncstressScript)
		if err != nil {
			return fail(err)
		}
		spec := "path=" + img + ",cache=" + *cache
		if *faults != "" {
			rules := filepath.Join(dir, "faults.rules")
			if err := os.WriteFile(rules, []byte(strings.ReplaceAll(*faults, ";", "\n")+"\n"), 0o644); err != nil {
				return fail(err)
			}
			spec += ",faults=" + rules
		}
		run = append(run, "--disk", spec)
		if !*qemu {
			stats = filepath.Join(dir, "stats.json")
			run = append(run, "--stats", stats)
		}
		cmdline += " flushvm.run=script"
		fmt.Fprintf(os.Stderr, "flushvm-harness: disk %s (%s sparse, ext4, cache=%s)\n", img, *size, *cache)
	}
	run = append(run, "--initrd", initrd, "--append", cmdline)
	if *qemu {
		st, _, err := harness.QEMU(ctx, os.Stdout, run)
		if err != nil {
			return fail(err)
		}
		return st
	}
	fmt.Fprintf(os.Stderr, "flushvm-harness: flushvm run %s\n", strings.Join(run, " "))
	st := session(ctx, opts, harness.Run{Args: run})
	if stats != "" {
		printStats(stats)
	}
	return st
}

// printStats summarises a --stats document: what the guest asked of each
// disk against what reached the host.
func printStats(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "flushvm-harness: no --stats from flushvm: %v\n", err)
		return
	}
	var doc struct {
		Disks []map[string]any `json:"disks"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // print counters as integers
	if err := dec.Decode(&doc); err != nil {
		fmt.Fprintf(os.Stderr, "flushvm-harness: --stats: %v\n", err)
		return
	}
	for i, d := range doc.Disks {
		fmt.Fprintf(os.Stderr, "flushvm-harness: disk vd%c cache=%v: writes %v, flushes %v, host_syncs %v, bytes_written %v, errors %v\n",
			'a'+i, d["cache"], d["writes"], d["flushes"], d["host_syncs"], d["bytes_written"], d["errors"])
		if f, ok := d["faults"].(map[string]any); ok {
			b, _ := json.Marshal(f)
			fmt.Fprintf(os.Stderr, "flushvm-harness: disk vd%c faults: %s\n", 'a'+i, b)
		}
	}
}
