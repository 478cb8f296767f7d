// Package crashtest is flushvm's crash-test campaign engine: it formats a
// disk in a guest, calibrates a workload, cuts the power at seeded points of
// its run, checks what the workload acknowledged against what survived, and
// reports. Boots go through a Booter (flushvm run as a child process, or a
// fake guest in tests); the report schema and exit statuses are package
// protocol's.
package crashtest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/internal/cli"
	"github.com/flushvm/flushvm/protocol"
)

// Workload is a built-in crash-test workload: its workload and checker
// commands (protocol/workload.go), sized by --records.
type Workload struct {
	// Label names it in the guest's console lines (flushvm.run=crash:LABEL).
	Label string
	// Run and Check return the workload's and the checker's command for
	// n records per writer (or n versions).
	Run, Check func(n int) string
	// Buggy marks a deliberately wrong workload: a campaign must catch it.
	Buggy bool
	// What says what it does, for --help.
	What string
}

// Arguments the built-in programs take from the protocol's environment.
const (
	dirArg   = ` -dir "$` + protocol.EnvDir + `"`
	ackedArg = ` -acked-file "$` + protocol.EnvAcked + `"`
)

// fsyncstress is the workload of /bin/fsyncstress with extra arguments.
func fsyncstress(extra string, buggy bool, what string) Workload {
	args := func(n int) string {
		return fmt.Sprintf(" -writers %d -records %d -size 4096", fsyncstressWriters, n)
	}
	return Workload{Label: "fsyncstress", Buggy: buggy, What: what,
		Run:   func(n int) string { return "/bin/fsyncstress" + dirArg + " -ack" + args(n) + extra },
		Check: func(n int) string { return "/bin/fsyncstress -check" + dirArg + ackedArg + args(n) },
	}
}

// rename is the workload of /bin/rename with extra arguments.
func rename(extra string, buggy bool, what string) Workload {
	return Workload{Label: "rename", Buggy: buggy, What: what,
		Run:   func(n int) string { return fmt.Sprintf("/bin/rename%s -versions %d -size 16384%s", dirArg, n, extra) },
		Check: func(n int) string { return "/bin/rename -check" + dirArg + ackedArg + extra },
	}
}

// sqlite is the workload of /bin/sqlitework (Debian's sqlite3 in the
// guest) with a journal mode and a synchronous setting.
func sqlite(journal, sync string, buggy bool, what string) Workload {
	args := " -journal " + journal + " -sync " + sync
	return Workload{Label: "sqlite", Buggy: buggy, What: what,
		Run:   func(n int) string { return fmt.Sprintf("/bin/sqlitework%s -ack -records %d%s", dirArg, n, args) },
		Check: func(int) string { return "/bin/sqlitework -check" + dirArg + ackedArg },
	}
}

// Workloads are the built-in workloads the guest image runs: the correct
// ones and deliberately buggy variants that prove the campaign catches
// bugs.
var Workloads = map[string]Workload{
	"fsyncstress": fsyncstress("", false, "4 writers append records, each acknowledged after its fdatasync"),
	"rename":      rename("", false, "atomic replace: write a temporary file, fsync, rename it over, fsync the dir"),
	"create":      rename(" -create", false, "each version a new file: write, fsync the file, fsync the directory"),
	"create-tmpfile": rename(" -create -tmpfile", false,
		"each version a new file made unnamed (O_TMPFILE): write, fsync, link it in, fsync the directory"),
	"sqlite-rollback": sqlite("delete", "full", false,
		"SQLite, rollback journal, synchronous=FULL: a row per transaction, acknowledged after COMMIT"),
	"sqlite-wal": sqlite("wal", "full", false,
		"SQLite, WAL, synchronous=FULL: a row per transaction, acknowledged after COMMIT"),
	"sqlite-sync-off": sqlite("wal", "off", true,
		"BUGGY: SQLite WAL with synchronous=OFF: COMMIT returns before the row is durable"),
	"fsyncstress-ack-early": fsyncstress(" -bug ack-early", true,
		"BUGGY: fsyncstress acknowledging each record before its fdatasync"),
	"rename-no-dirsync": rename(" -bug no-dir-fsync", true,
		"BUGGY: atomic replace without the directory fsync after the rename"),
	"create-no-dirsync": rename(" -create -bug no-dir-fsync", true,
		"BUGGY: create, fsync the new file but not its directory"),
	"create-tmpfile-no-dirsync": rename(" -create -tmpfile -bug no-dir-fsync", true,
		"BUGGY: O_TMPFILE create: fsync the new file, link it in, no directory fsync"),
}

// WorkloadNames lists the workloads, sorted.
func WorkloadNames() []string {
	names := make([]string, 0, len(Workloads))
	for n := range Workloads {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// fsyncstressWriters is the number of concurrent writers of the
// fsyncstress workload.
const fsyncstressWriters = 4

// Flags are the flags of `flushvm crashtest` (a contract: batch
// systems and `make crashtest` call it).
type Flags struct {
	// FS holds the flags; parse the command line with it.
	FS       *pflag.FlagSet
	kernel   string
	initrd   string
	diskSize string
	fs       string
	workload string
	checker  string
	// workloadDir is --workload-dir.
	workloadDir string
	cuts        int
	policy      string
	seed        uint64
	cache       string
	shard       string
	// Report is --report: where the command writes the report.
	Report      string
	dir         string
	mem         string
	cpus        int
	records     int
	at          string
	bootTimeout time.Duration
	mode        string
	k           int
	maxStates   int
	budget      time.Duration
	batch       int
	jobs        int
	reproduce   string
	torn        string
}

// NewFlags returns crashtest's flags with their defaults.
func NewFlags() *Flags {
	f := &Flags{FS: pflag.NewFlagSet("crashtest", pflag.ContinueOnError)}
	fs := f.FS
	fs.SortFlags = false
	fs.StringVar(&f.mode, "mode", protocol.CrashtestSystematic, "systematic (record once, check the crash states of the write log) or random\n"+
		"  (a workload boot per cut at a seeded random point, then a checker boot)\n  e.g. --mode random")
	fs.StringVar(&f.kernel, "kernel", "", "guest kernel, bzImage or ELF vmlinux (required)\n  e.g. --kernel /boot/vmlinuz-6.1.0-56-amd64")
	fs.StringVar(&f.initrd, "initrd", "", "flushvm's guest initramfs: its /init, the workloads, e2fsprogs (required;\n"+
		"  go run ./cmd/flushvm-harness artifacts builds it and prints its path)\n  e.g. --initrd build/cache/initramfs/x-88418736.cpio.gz")
	fs.StringVar(&f.diskSize, "disk-size", "", "size of the guest's disk, formatted by the guest (K/M/G suffixes; xfs needs\n"+
		"  300M, btrfs 128M) (required)\n  e.g. --disk-size 128M")
	fs.StringVar(&f.fs, "fs", protocol.FSExt4, "file system under test: ext4, xfs or btrfs (the guest's mkfs, its mount replays\n"+
		"  the journal or log, its read-only check: e2fsck -fn, xfs_repair -n, btrfs check\n  --readonly)\n  e.g. --fs xfs")
	fs.StringVar(&f.workload, "workload", "", "what the guest runs and acknowledges: one of the workloads above, or with\n"+
		"  --checker a shell command of your own (see \"Your own workload\") (required)\n  e.g. --workload fsyncstress")
	fs.StringVar(&f.checker, "checker", "", "your own workload's checker: a shell command run on each crashed file system\n"+
		"  with the keys it must find intact\n  e.g. --checker 'mycheck --keys \"$FLUSHVM_ACKED\"'")
	fs.StringVar(&f.workloadDir, "workload-dir", "", "copy DIR into the guest as "+protocol.WorkloadGuestDir+" (on the commands' PATH): programs,\n"+
		"  scripts, data; dynamic ELF programs bring their loader and libraries\n  e.g. --workload-dir ./myworkload")
	fs.IntVar(&f.cuts, "cuts", 0, "--mode random: power cuts in the campaign (across all shards) (required)\n  e.g. --cuts 20")
	fs.StringVar(&f.policy, "policy", "", "--mode random: which unstable writes survive each cut: lose-all, keep-all,\n"+
		"  random-subset, random-sectors[:512|:4k] or prefix (required)\n  e.g. --policy random-subset")
	fs.Uint64Var(&f.seed, "seed", 0, "campaign seed (required): systematic: the sampled subsets and torn pieces;\n"+
		"  random: cut K uses seed S+K for its cut point and its policy\n  e.g. --seed 1")
	fs.IntVar(&f.k, "k", 3, "systematic: windows between flushes with at most K writes get every subset of\n"+
		"  them; larger windows get every prefix and 2^K seeded subsets\n  e.g. --k 4")
	fs.IntVar(&f.maxStates, "max-states", 0, "systematic: check at most N states in this run (0: all); the rest are left\n"+
		"  for a run with the same --dir\n  e.g. --max-states 200")
	fs.DurationVar(&f.budget, "budget", 0, "systematic: start no checker boot after this long (0: no limit); the rest\n"+
		"  are left for a run with the same --dir\n  e.g. --budget 30m")
	fs.IntVar(&f.jobs, "jobs", 0, "systematic: checker boots at a time (default: the host's CPUs over --cpus, at\n"+
		"  least 1, at most 4)\n  e.g. --jobs 1")
	fs.StringVar(&f.torn, "torn", "4k", "systematic: torn-write states: 4k (a write of several 4 KiB blocks keeps some;\n"+
		"  the device's physical block is 4 KiB), 512 (also tears inside a block, at\n"+
		"  sectors) or off\n  e.g. --torn 512")
	fs.IntVar(&f.batch, "batch", 100, "systematic: crash states per checker boot\n  e.g. --batch 100")
	fs.StringVar(&f.reproduce, "reproduce", "", "rebuild crash state STATE of the record log LOG (base: template.img beside\n"+
		"  it), print its image hash, write it to state-STATE.img beside LOG, and check it\n"+
		"  again: --reproduce LOG STATE, with the campaign's other flags\n  e.g. --reproduce crash/record.wlog w12.s5")
	fs.StringVar(&f.cache, "cache", "writeback", "cache mode of the disk under test: writeback, writethrough, none, directsync\n"+
		"  or unsafe (none and directsync need O_DIRECT in --dir)\n  e.g. --cache none")
	fs.StringVar(&f.shard, "shard", "1/1", "run only shard i of n: the cuts K with K mod n = i-1\n  e.g. --shard 2/8")
	fs.StringVar(&f.Report, "report", "", "write the campaign's JSON report to FILE (a systematic campaign\n  also rewrites it every 10 s as it runs)\n  e.g. --report crashtest.json")
	fs.StringVar(&f.dir, "dir", "", "work directory: systematic: the template image, the record log and the\n"+
		"  explored-state file (a second run with the same --dir resumes); random: the\n"+
		"  failing cuts' images and logs (default: a temporary directory, removed\n"+
		"  afterwards unless a state violated)\n  e.g. --dir /var/tmp/crash")
	fs.StringVar(&f.mem, "mem", "512M", "guest memory of each boot\n  e.g. --mem 1G")
	fs.IntVar(&f.cpus, "cpus", 2, "vCPUs of each boot\n  e.g. --cpus 1")
	fs.IntVar(&f.records, "records", 100, "workload size: records per writer (fsyncstress, 4 writers) or versions (rename, create)\n  e.g. --records 50")
	fs.StringVar(&f.at, "at", "", "cut every cut at this point instead of a seeded random one (to reproduce a cut):\n"+
		"  writes=N or flushes=N, counted from the workload boot's start\n  e.g. --at writes=345")
	fs.DurationVar(&f.bootTimeout, "boot-timeout", 5*time.Minute, "bound on each guest boot\n  e.g. --boot-timeout 10m")
	fs.Usage = func() {}
	return f
}

// Usage writes `flushvm crashtest --help`.
func (f *Flags) Usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: flushvm crashtest --kernel K --initrd I --disk-size SIZE --workload NAME --seed S")
	fmt.Fprintln(w, "                         [--fs ext4|xfs|btrfs] [--checker CMD] [--workload-dir DIR]")
	fmt.Fprintln(w, "                         [--cache MODE] [--k K] [--max-states N] [--budget D] [--dir DIR]")
	fmt.Fprintln(w, "                         [--shard i/n] [--report FILE]")
	fmt.Fprintln(w, "       flushvm crashtest ... --reproduce LOG STATE")
	fmt.Fprintln(w, "       flushvm crashtest --mode random ... --cuts N --policy POLICY")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Runs a crash-test campaign. Systematic mode (the default): a guest formats a")
	fmt.Fprintln(w, "fresh disk (--fs); one record boot runs the workload to its end with a write log")
	fmt.Fprintln(w, "(dm-log-writes format) holding every write, every flush and, as MARK entries, every")
	fmt.Fprintln(w, "acknowledgement the workload printed. Off-line, the log's flushes cut it into")
	fmt.Fprintln(w, "windows; the crash states of window J keep every write before it and a subset of")
	fmt.Fprintln(w, "its writes (every subset when it has at most --k, else every prefix and 2^k seeded")
	fmt.Fprintln(w, "subsets; writes torn at 4 KiB, or 512 B with --torn 512), and must keep every")
	fmt.Fprintln(w, "acknowledgement logged before the flush that ends it. States with identical images")
	fmt.Fprintln(w, "(by content hash) are checked once. Checker boots check them in batches on a")
	fmt.Fprintln(w, "copy-on-write crash disk: mount (journal replay), the workload's checker, the file")
	fmt.Fprintln(w, "system's read-only check. A state violates durability when an acknowledged record")
	fmt.Fprintln(w, "is lost or damaged, or the check finds errors. State IDs (wJ.sMASK subset, wJ.pN")
	fmt.Fprintln(w, "prefix, wJ.tI.UNIT.MASK torn) name images exactly: --reproduce rebuilds one byte")
	fmt.Fprintln(w, "for byte and checks it again.")
	fmt.Fprintln(w, "With --dir, a second run resumes: it reuses the recording and skips the states")
	fmt.Fprintln(w, "checked before (DIR/explored.jsonl), and says when the space is exhausted.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Random mode (--mode random): a calibration boot, then per cut a boot on the")
	fmt.Fprintln(w, "power-cut model (powercut=POLICY) cut at a seeded random write or flush, and a")
	fmt.Fprintln(w, "checker boot on the crashed image.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Workloads:")
	for _, n := range WorkloadNames() {
		fmt.Fprintf(w, "  %-22s %s\n", n, Workloads[n].What)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Your own workload (the built-in ones follow the same protocol): --workload CMD runs")
	fmt.Fprintln(w, "the shell command CMD in the file system under test ($FLUSHVM_DIR, its working")
	fmt.Fprintln(w, "directory); it prints \"ACK KEY\" once something is durable. --checker CMD runs in the")
	fmt.Fprintln(w, "crashed file system after it mounted, reads the keys the state must keep on stdin")
	fmt.Fprintln(w, "(also in the file $FLUSHVM_ACKED), prints \"LOST KEY\" for each one missing, and exits")
	fmt.Fprintln(w, "0 when all are intact, 1 when some are not. --workload-dir DIR puts DIR in the guest")
	fmt.Fprintln(w, "as "+protocol.WorkloadGuestDir+", first on PATH (dynamic programs with their libraries).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every boot is a `flushvm run` of this binary, so this host needs a KVM that boots")
	fmt.Fprintln(w, "Linux (see README: on hosts without one, `go run ./cmd/flushvm-harness crashtest`")
	fmt.Fprintln(w, "runs it nested). Progress goes to stderr, the summary to stdout: coverage, states")
	fmt.Fprintln(w, "per minute, violations, the first violating state and the command that")
	fmt.Fprintln(w, "reproduces it.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Flags:")
	cli.FlagTable(w, f.FS)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Exit status:")
	for _, row := range protocol.CrashtestExitStatuses {
		fmt.Fprintf(w, "  %s  %s\n", row.Status, row.When)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Example:")
	fmt.Fprintln(w, "  flushvm crashtest --kernel vmlinuz --initrd guest.cpio.gz --disk-size 32M \\")
	fmt.Fprintln(w, "      --workload fsyncstress --records 65 --seed 1 --cache writeback \\")
	fmt.Fprintln(w, "      --dir crash-wb --budget 30m --report writeback.json")
}

// Campaign is a validated crashtest configuration.
type Campaign struct {
	kernel, initrd string
	diskSize       int64
	// fs is the file system under test (protocol.FileSystems).
	fs       string
	workload string
	// label names the workload in the guest's console lines; runCmd and
	// checkCmd are its commands (protocol/workload.go).
	label, runCmd, checkCmd string
	// checker and workloadDir are --checker and --workload-dir (a user's
	// own workload; checker "": a built-in one).
	checker, workloadDir string
	// bootInitrd is the initrd the boots use: initrd, with workloadDir
	// appended when given (set when the campaign runs).
	bootInitrd string
	// mode is protocol.CrashtestSystematic or CrashtestRandom.
	mode string
	// k, maxStates, budget, batch: the systematic mode's flags.
	k         int
	maxStates int
	budget    time.Duration
	batch     int
	jobs      int
	// tornUnits are --torn's units.
	tornUnits  []int64
	cuts       int
	policy     string
	seed       uint64
	cache      blk.CacheMode
	shardIndex int // 1-based
	shardCount int
	// dir is --dir: when given, failing cuts' files are kept there.
	dir string
	// report is --report: a systematic campaign rewrites it as it runs
	// (Report.snapshot); the caller writes the final one.
	report      string
	diskSizeArg string // --disk-size as given, for reproduce commands
	mem         string
	cpus        int
	records     int
	at          *protocol.Trigger
	bootTimeout time.Duration
	// log receives one line per retried boot, with its cause (nil: none).
	log io.Writer
	// workDir is the work directory of a running campaign.
	workDir string
	// reproduce is --reproduce: the log and the state ID ("": none).
	reproduceLog, reproduceState string
}

// defaultJobs is --jobs' default: a checker boot per cpus-vCPU share of
// the host's CPUs, at least 1, at most 4.
func defaultJobs(cpus int) int { return max(1, min(runtime.NumCPU()/max(cpus, 1), 4)) }

// modeFlags checks the flags that belong to one mode.
func (f *Flags) modeFlags(c *Campaign) error {
	random := map[string]bool{"cuts": true, "policy": true, "at": true}
	systematic := map[string]bool{"k": true, "max-states": true, "budget": true, "batch": true, "reproduce": true, "torn": true, "jobs": true}
	var err error
	f.FS.Visit(func(fl *pflag.Flag) {
		switch {
		case err != nil:
		case c.mode == protocol.CrashtestSystematic && random[fl.Name]:
			err = usageErrorf("--%s is a --mode random flag (the systematic mode explores every crash state)", fl.Name)
		case c.mode == protocol.CrashtestRandom && systematic[fl.Name]:
			err = usageErrorf("--%s is a --mode systematic flag", fl.Name)
		}
	})
	if err != nil {
		return err
	}
	switch c.mode {
	case protocol.CrashtestRandom:
		if f.policy == "" {
			return usageErrorf("--policy is required with --mode random")
		}
		if f.cuts < 1 {
			return usageErrorf("--cuts %d: want at least 1", f.cuts)
		}
		pol, err := blk.ParsePowerCutPolicy(f.policy)
		if err != nil {
			return usageErrorf("--policy: %v", err)
		}
		c.policy = pol.String()
	case protocol.CrashtestSystematic:
		return f.systematicFlags(c)
	default:
		return usageErrorf("--mode %q: want systematic or random", f.mode)
	}
	return nil
}

// systematicFlags checks the systematic mode's flags.
func (f *Flags) systematicFlags(c *Campaign) error {
	switch {
	case f.k < 0 || f.k > 10:
		return usageErrorf("--k %d: want 0..10 (2^k states per window)", f.k)
	case f.maxStates < 0:
		return usageErrorf("--max-states %d: want 0 (no limit) or more", f.maxStates)
	case f.budget < 0:
		return usageErrorf("--budget %v: want 0 (no limit) or more", f.budget)
	case f.batch < 1 || f.batch > 1000:
		return usageErrorf("--batch %d: want 1..1000", f.batch)
	case f.FS.Changed("jobs") && (f.jobs < 1 || f.jobs > 64):
		return usageErrorf("--jobs %d: want 1..64", f.jobs)
	}
	if !f.FS.Changed("jobs") {
		c.jobs = defaultJobs(f.cpus)
	}
	switch f.torn {
	case "4k":
		c.tornUnits = []int64{4096}
	case "512":
		c.tornUnits = []int64{4096, 512}
	case "off":
	default:
		return usageErrorf("--torn %q: want 4k, 512 or off", f.torn)
	}
	if f.reproduce != "" {
		args := f.FS.Args()
		if len(args) != 1 {
			return usageErrorf("--reproduce LOG STATE: want one STATE after the log, got %d arguments", len(args))
		}
		c.reproduceLog, c.reproduceState = f.reproduce, args[0]
		if _, err := os.Stat(f.reproduce); err != nil {
			return usageErrorf("--reproduce: %v", err)
		}
	} else if len(f.FS.Args()) > 0 {
		return usageErrorf("unexpected arguments %q", f.FS.Args())
	}
	return nil
}

// Campaign validates the flags and returns the campaign they describe;
// errors the user can fix are UsageError.
func (f *Flags) Campaign() (*Campaign, error) {
	for _, req := range []struct{ name, val string }{{"kernel", f.kernel}, {"initrd", f.initrd}, {"disk-size", f.diskSize},
		{"workload", f.workload}} {
		if req.val == "" {
			return nil, usageErrorf("--%s is required", req.name)
		}
	}
	if !f.FS.Changed("seed") {
		return nil, usageErrorf("--seed is required (the campaign is reproducible from it)")
	}
	c := &Campaign{workload: f.workload, cuts: f.cuts, policy: f.policy, seed: f.seed, dir: f.dir,
		diskSizeArg: f.diskSize, mem: f.mem, cpus: f.cpus, records: f.records, bootTimeout: f.bootTimeout,
		mode: f.mode, k: f.k, maxStates: f.maxStates, budget: f.budget, batch: f.batch, jobs: f.jobs}
	if err := f.modeFlags(c); err != nil {
		return nil, err
	}
	var err error
	if c.kernel, err = existingAbs("kernel", f.kernel); err != nil {
		return nil, err
	}
	if c.initrd, err = existingAbs("initrd", f.initrd); err != nil {
		return nil, err
	}
	c.bootInitrd = c.initrd
	size, err := protocol.ParseSize(f.diskSize)
	if err != nil || size < 16<<20 || size%512 != 0 {
		return nil, usageErrorf("--disk-size %q: want at least 16M, a multiple of 512 bytes", f.diskSize)
	}
	c.diskSize = int64(size)
	if err := protocol.CheckFileSystem(f.fs, c.diskSize); err != nil {
		return nil, usageErrorf("--fs: %v", err)
	}
	c.fs = f.fs
	if f.records < 1 || f.records > 100000 {
		return nil, usageErrorf("--records %d: want 1..100000", f.records)
	}
	if err := f.workloadFlags(c); err != nil {
		return nil, err
	}
	if c.cache, err = blk.ParseCacheMode(f.cache); err != nil {
		return nil, usageErrorf("--cache: %v", err)
	}
	if c.shardIndex, c.shardCount, err = parseShard(f.shard); err != nil {
		return nil, UsageError{err}
	}
	if err := cli.OutputDir("report", f.Report); err != nil {
		return nil, UsageError{err}
	}
	c.report = f.Report
	if c.mode == protocol.CrashtestRandom && len(c.ShardCuts()) == 0 {
		return nil, usageErrorf("--shard %s owns none of the %d cuts (shard i of n runs the cuts K with K mod n = i-1)", f.shard, c.cuts)
	}
	if f.at != "" {
		t, err := protocol.ParseTrigger(f.at)
		if err != nil || t.Kind == protocol.TriggerAfter {
			return nil, usageErrorf("--at %q: want writes=N or flushes=N", f.at)
		}
		c.at = &t
	}
	if f.cpus < 1 || f.cpus > 64 {
		return nil, usageErrorf("--cpus %d: want 1..64", f.cpus)
	}
	if _, err := protocol.ParseSize(f.mem); err != nil {
		return nil, usageErrorf("--mem %q: %v", f.mem, err)
	}
	if f.bootTimeout <= 0 {
		return nil, usageErrorf("--boot-timeout must be positive")
	}
	return c, nil
}

// existingAbs returns the absolute form of --flag's path, which must exist.
func existingAbs(flag, path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err == nil {
		_, err = os.Stat(abs)
	}
	if err != nil {
		return "", usageErrorf("--%s: %v", flag, err)
	}
	return abs, nil
}

// parseShard parses --shard i/n (1 <= i <= n).
func parseShard(s string) (int, int, error) {
	a, b, ok := strings.Cut(s, "/")
	i, err1 := strconv.Atoi(a)
	n, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || n < 1 || i < 1 || i > n {
		return 0, 0, fmt.Errorf("--shard %q: want i/n with 1 <= i <= n, e.g. 2/8", s)
	}
	return i, n, nil
}

// owns reports whether cut or distinct state number k belongs to this
// shard (K mod n = i-1 for --shard i/n).
func (c *Campaign) owns(k int) bool { return k%c.shardCount == c.shardIndex-1 }

// ShardCuts returns the campaign's cut numbers that belong to this shard.
func (c *Campaign) ShardCuts() []int {
	var ks []int
	for k := 0; k < c.cuts; k++ {
		if c.owns(k) {
			ks = append(ks, k)
		}
	}
	return ks
}

// errBootFailed reports a boot that did not end as the campaign needs
// (the template or calibration boot: the campaign cannot go on).
var errBootFailed = errors.New("boot failed")

// UsageError is an error in a campaign's flags, which the user can fix
// (flushvm crashtest exits with protocol.ExitUsage).
type UsageError struct{ Err error }

// Error returns the message.
func (e UsageError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e UsageError) Unwrap() error { return e.Err }

func usageErrorf(format string, a ...any) error { return UsageError{fmt.Errorf(format, a...)} }

// customLabel names a user's own workload in the guest's console lines.
const customLabel = "custom"

// workloadFlags checks --workload, --checker and --workload-dir: a
// built-in workload by name, or a user's pair of commands.
func (f *Flags) workloadFlags(c *Campaign) error {
	if f.workloadDir != "" {
		abs, err := existingAbs("workload-dir", f.workloadDir)
		if err != nil {
			return err
		}
		if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
			return usageErrorf("--workload-dir %s: not a directory", f.workloadDir)
		}
		c.workloadDir = abs
	}
	if f.checker == "" {
		wl, ok := Workloads[f.workload]
		if !ok {
			return usageErrorf("--workload %q: want one of %s, or a command of your own with --checker", f.workload, strings.Join(WorkloadNames(), ", "))
		}
		c.label, c.runCmd, c.checkCmd = wl.Label, wl.Run(f.records), wl.Check(f.records)
		return nil
	}
	c.label, c.runCmd, c.checkCmd, c.checker = customLabel, f.workload, f.checker, f.checker
	if _, err := protocol.FormatJob(protocol.Job{Workload: c.runCmd, Checker: c.checkCmd}); err != nil {
		return usageErrorf("--workload, --checker: %v", err)
	}
	return nil
}
