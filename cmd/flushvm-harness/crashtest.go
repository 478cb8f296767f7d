package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	crashtestlib "github.com/flushvm/flushvm/crashtest"
	"github.com/flushvm/flushvm/host/harness"
	"github.com/flushvm/flushvm/protocol"
)

// errUsage marks a command line the crashtest commands reject.
var errUsage = errors.New("usage")

// takeFlag removes --name (either "--name V" or "--name=V") from args and
// returns its last value.
func takeFlag(args []string, name string) (val string, rest []string, found bool, err error) {
	for k := 0; k < len(args); k++ {
		a := args[k]
		switch {
		case a == "--"+name:
			if k+1 >= len(args) {
				return "", nil, false, fmt.Errorf("%w: --%s needs a value", errUsage, name)
			}
			k++
			val, found = args[k], true
		case strings.HasPrefix(a, "--"+name+"="):
			val, found = a[len(name)+3:], true
		default:
			rest = append(rest, a)
		}
	}
	return val, rest, found, nil
}

// hasFlag reports whether args set --name.
func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == "--"+name || strings.HasPrefix(a, "--"+name+"=") {
			return true
		}
	}
	return false
}

// withGuestDefaults adds --kernel and --initrd (the cached Debian kernel and
// the test guest's initramfs) when args lack them.
func withGuestDefaults(ctx context.Context, args []string) ([]string, error) {
	if hasFlag(args, "kernel") && hasFlag(args, "initrd") {
		return args, nil
	}
	a, err := harness.Prepare(ctx)
	if err != nil {
		return nil, err
	}
	var add []string
	if !hasFlag(args, "kernel") {
		// The ELF kernel skips the bzImage's self-decompression: seconds
		// of every nested boot, and a campaign boots twice per cut.
		add = append(add, "--kernel", a.Vmlinux)
	}
	if !hasFlag(args, "initrd") {
		add = append(add, "--initrd", a.Initramfs)
	}
	return append(add, args...), nil
}

// crashtestTimeout bounds a session of crashtest runs when --timeout is
// not given: L1's boot, and for each campaign its set-up boots at a
// generous 3 minutes each plus, in random mode, two boots per cut, and in
// systematic mode --budget or 20 s per --max-states state (a nested boot
// takes 20-60 s here, a state's check 1-3 s); a systematic campaign with
// neither gets two hours.
func crashtestTimeout(runs []harness.Run) time.Duration {
	d := 15 * time.Minute
	for _, r := range runs {
		num := func(flag string) int {
			v, _ := harness.FlagValue(r.Args, flag)
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return 0
			}
			return n
		}
		d += 2 * 3 * time.Minute
		switch {
		case isRandom(r.Args):
			d += time.Duration(2*max(1, num("cuts"))) * 3 * time.Minute
		case hasFlag(r.Args, "budget"):
			v, _ := harness.FlagValue(r.Args, "budget")
			b, _ := time.ParseDuration(v)
			d += b + 5*time.Minute
		case num("max-states") > 0:
			d += time.Duration(num("max-states")) * 20 * time.Second
		default:
			d += 2 * time.Hour
		}
	}
	return d
}

// isRandom reports whether crashtest args select --mode random.
func isRandom(args []string) bool {
	v, _ := harness.FlagValue(args, "mode")
	return v == protocol.CrashtestRandom
}

// crashtest runs one `flushvm crashtest` campaign as one run: directly, or
// nested in one L1 session with a scratch disk for its images, run again
// in a new session when L1 itself failed under it (as campaign does).
func crashtest(ctx context.Context, opts harness.Options, timeoutSet bool, args []string) int {
	args, err := withGuestDefaults(ctx, args)
	if err != nil {
		return fail(err)
	}
	r := harness.Run{Subcommand: harness.SubCrashtest, Args: args}
	if !timeoutSet {
		opts.Timeout = crashtestTimeout([]harness.Run{r})
	}
	results, err := harness.ExecuteCampaigns(ctx, opts, []harness.Run{r})
	if err != nil {
		return fail(err)
	}
	if res := results[0]; res.Err != nil {
		return fail(res.Err)
	}
	return results[0].Status
}

// campaignMode is one cache mode of a campaign and its number of cuts
// (random mode) or its --max-states (systematic; 0: all).
type campaignMode struct {
	cache string
	cuts  int
}

// parseModes parses --modes: MODE:N,MODE:N,... (N: cuts in random mode,
// the most states to check in systematic mode, where "all" is every one).
func parseModes(s string) ([]campaignMode, error) {
	var ms []campaignMode
	for _, part := range strings.Split(s, ",") {
		c, n, ok := strings.Cut(strings.TrimSpace(part), ":")
		cuts, err := strconv.Atoi(n)
		if n == "all" {
			cuts, err = 0, nil
		} else if err == nil && cuts < 1 {
			err = errUsage
		}
		if !ok || c == "" || err != nil {
			return nil, fmt.Errorf("%w: --modes %q: want MODE:N,... e.g. writeback:20,unsafe:10 (N: cuts, or states; all: every state)", errUsage, s)
		}
		for _, m := range ms {
			if m.cache == c {
				return nil, fmt.Errorf("%w: --modes %q: %s twice", errUsage, s, c)
			}
		}
		ms = append(ms, campaignMode{cache: c, cuts: cuts})
	}
	return ms, nil
}

// defaultModes is the full campaign of issue 5: every safe cache mode, and
// cache=unsafe to show the oracle can fail.
const defaultModes = "writeback:20,writethrough:20,none:20,directsync:20,unsafe:10"

// campaignRuns builds one crashtest run per mode: the shared flags, the
// mode's --cache and --cuts (random) or --max-states (systematic), and
// --report OUT/MODE.json. A systematic campaign also gets its own --dir
// (DIR/MODE under a --dir given, else workDir(OUT, MODE)), where it keeps
// its recording and explored states: a campaign whose L1 dies resumes
// there, and its violations' reproduce commands find the recording.
func campaignRuns(modes []campaignMode, out string, shared []string) ([]harness.Run, []string, error) {
	for _, f := range []string{"cache", "cuts", "max-states", "report"} {
		if hasFlag(shared, f) {
			return nil, nil, fmt.Errorf("%w: --%s is set per mode by campaign (use --modes and --out)", errUsage, f)
		}
	}
	random := isRandom(shared)
	dir, rest, ownDir, err := takeFlag(shared, "dir")
	if err != nil {
		return nil, nil, err
	}
	if !random {
		shared = rest
	}
	var runs []harness.Run
	var reports []string
	for _, m := range modes {
		if random && m.cuts == 0 {
			return nil, nil, fmt.Errorf("%w: --modes %s:all: a random campaign needs a number of cuts", errUsage, m.cache)
		}
		rep := filepath.Join(out, m.cache+".json")
		a := append(slices.Clone(shared), "--cache", m.cache)
		switch {
		case random:
			a = append(a, "--cuts", strconv.Itoa(m.cuts))
		case m.cuts > 0:
			a = append(a, "--max-states", strconv.Itoa(m.cuts))
		}
		switch {
		case random:
		case ownDir:
			a = append(a, "--dir", filepath.Join(dir, m.cache))
		default:
			a = append(a, "--dir", workDir(out, m.cache))
		}
		a = append(a, "--report", rep)
		runs = append(runs, harness.Run{Subcommand: harness.SubCrashtest, Args: a})
		reports = append(reports, rep)
	}
	return runs, reports, nil
}

// workDir is the work directory campaign gives a systematic mode when no
// --dir was given; each campaign starts it afresh.
func workDir(out, mode string) string { return filepath.Join(out, mode+".work") }

// campaign runs a crashtest per cache mode in one session (one L1 boot
// when nested), then prints the per-mode table from their reports.
func campaign(ctx context.Context, opts harness.Options, timeoutSet bool, args []string) int {
	modesArg, args, _, err := takeFlag(args, "modes")
	if err == nil && modesArg == "" {
		modesArg = defaultModes
	}
	var out string
	var outSet bool
	if err == nil {
		out, args, outSet, err = takeFlag(args, "out")
	}
	if !outSet {
		out = filepath.Join("build", "crashtest")
	}
	var modes []campaignMode
	if err == nil {
		modes, err = parseModes(modesArg)
	}
	var runs []harness.Run
	var reports []string
	if err == nil {
		runs, reports, err = campaignRuns(modes, out, args)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "flushvm-harness campaign: %v\n", err)
		return 2
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fail(err)
	}
	for i, r := range reports {
		// A stale report must not stand in for a campaign that failed,
		// nor a stale work directory resume one.
		if err := os.Remove(r); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fail(err)
		}
		if d, _ := harness.FlagValue(runs[i].Args, "dir"); d == workDir(out, modes[i].cache) {
			if err := os.RemoveAll(d); err != nil {
				return fail(err)
			}
		}
	}
	for i := range runs {
		if runs[i].Args, err = withGuestDefaults(ctx, runs[i].Args); err != nil {
			return fail(err)
		}
	}
	if !timeoutSet {
		opts.Timeout = crashtestTimeout(runs)
	}
	results, err := harness.ExecuteCampaigns(ctx, opts, runs)
	if err != nil {
		// The campaigns that finished still make their rows.
		fmt.Fprintf(os.Stderr, "flushvm-harness: %v\n", err)
	}
	statuses := make([]int, len(runs))
	for i := range statuses {
		statuses[i] = protocol.CrashtestFailed
	}
	for i, res := range results {
		statuses[i] = res.Status
		if res.Err != nil {
			fmt.Fprintf(os.Stderr, "flushvm-harness: campaign cache=%s: %v\n", modes[i].cache, res.Err)
			statuses[i] = protocol.CrashtestFailed
		}
	}
	rows, err := readReports(reports)
	if err != nil {
		fmt.Fprintf(os.Stderr, "flushvm-harness: %v\n", err)
	}
	// The table and the verdict also go to OUT/table.md, to quote.
	var doc bytes.Buffer
	w := io.MultiWriter(os.Stdout, &doc)
	fmt.Println()
	if len(rows) > 0 {
		printTable(w, rows)
	}
	status := judgeCampaign(w, modes, statuses, rows, err)
	table := filepath.Join(out, "table.md")
	if werr := os.WriteFile(table, doc.Bytes(), 0o644); werr != nil {
		fmt.Fprintf(os.Stderr, "flushvm-harness: %v\n", werr)
	} else {
		fmt.Fprintf(os.Stderr, "flushvm-harness: reports and table.md in %s\n", out)
	}
	return status
}

// judgeCampaign states what the campaign proved and returns its exit
// status: 0 when every safe mode kept every acknowledged record and left
// clean file systems and cache=unsafe (if run) lost acknowledged data; 1
// when a safe mode violated durability or unsafe's oracle never failed; 3
// when a campaign could not run to its end.
func judgeCampaign(w io.Writer, modes []campaignMode, statuses []int, rows []tableRow, readErr error) int {
	status := 0
	byMode := map[string]tableRow{}
	for _, r := range rows {
		byMode[r.mode] = r
	}
	for i, m := range modes {
		r, ok := byMode[m.cache]
		switch {
		case !ok:
			fmt.Fprintf(w, "cache=%s: the campaign left no report (flushvm crashtest exit status %d)\n", m.cache, statuses[i])
			status = max(status, protocol.CrashtestFailed)
		case r.cuts == 0 || (r.errors == 0 && statuses[i] != 0 && statuses[i] != protocol.CrashtestViolations):
			fmt.Fprintf(w, "cache=%s: the campaign could not run to its end (flushvm crashtest exit status %d; its output says why)\n",
				m.cache, statuses[i])
			status = max(status, protocol.CrashtestFailed)
		case r.errors > 0:
			fmt.Fprintf(w, "cache=%s: %d of %d cuts could not be checked (flushvm crashtest exit status %d)\n",
				m.cache, r.errors, r.cuts, statuses[i])
			status = max(status, protocol.CrashtestFailed)
		case mustFail(m.cache, r) && r.violations == 0:
			fmt.Fprintf(w, "cache=%s, %s: no %s lost an acknowledged record: the oracle never failed\n", m.cache, r.workload, r.unit())
			status = max(status, protocol.CrashtestViolations)
		case mustFail(m.cache, r):
			fmt.Fprintf(w, "cache=%s, %s: %d of %d %ss violated durability (%d acknowledged records lost), as they may: the oracle can fail\n",
				m.cache, r.workload, r.violations, r.cuts, r.unit(), r.lostAcked)
		case m.cache == "unsafe":
			fmt.Fprintf(w, "cache=unsafe: %d of %d %ss violated durability (%d acknowledged records lost), as they may\n",
				r.violations, r.cuts, r.unit(), r.lostAcked)
		case r.violations > 0:
			fmt.Fprintf(w, "cache=%s: FAIL: %d of %d cuts violated durability\n", m.cache, r.violations, r.cuts)
			status = max(status, protocol.CrashtestViolations)
		}
	}
	if readErr != nil {
		status = max(status, protocol.CrashtestFailed)
	}
	if status == 0 {
		fmt.Fprintln(w, "every safe cache mode kept every acknowledged record; every crashed file system was clean")
	}
	return status
}

// mustFail reports a campaign the oracle must fail: cache=unsafe (but for
// the keep-all policy, which keeps what unsafe did not sync) or a
// deliberately buggy workload.
func mustFail(cache string, r tableRow) bool {
	return cache == "unsafe" && r.policy != "keep-all" || crashtestlib.Workloads[r.workload].Buggy
}

// unit is what a row counts: cuts or states.
func (t tableRow) unit() string {
	if t.systematic {
		return "state"
	}
	return "cut"
}

// tableRow is one cache mode of the table: the sum of its reports (shards
// of one campaign add up).
type tableRow struct {
	// systematic rows count states (cuts: states checked; distinct:
	// distinct states in the space).
	systematic                 bool
	distinct                   int
	mode, fs, workload, policy string
	cuts, powerCuts            int
	acked, lostAcked           int
	fsckErrors, unmounted      int
	violations, errors         int
	seconds                    float64
}

// add adds o's counts and time to t.
func (t *tableRow) add(o tableRow) {
	t.cuts += o.cuts
	t.distinct = max(t.distinct, o.distinct)
	t.powerCuts += o.powerCuts
	t.acked += o.acked
	t.lostAcked += o.lostAcked
	t.fsckErrors += o.fsckErrors
	t.unmounted += o.unmounted
	t.violations += o.violations
	t.errors += o.errors
	t.seconds += o.seconds
}

// modeOrder lists the cache modes in table order; others follow in the
// order their reports were given.
var modeOrder = []string{"writeback", "writethrough", "none", "directsync", "unsafe"}

// readReports reads crashtest reports into one row per cache mode, file
// system and workload (shards of one campaign add up). It returns the rows
// it could read and an error naming those it could not.
func readReports(paths []string) ([]tableRow, error) {
	var rows []tableRow
	var bad []string
	version := "" // the flushvm build of the first report read
	for _, p := range paths {
		b, err := os.ReadFile(p)
		var r protocol.CrashtestReport
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err == nil && r.Cache == "" {
			err = errors.New("no cache mode: not a flushvm crashtest report")
		}
		if err == nil && r.Schema != protocol.CrashtestSchema {
			err = fmt.Errorf("report schema %d, this table reads schema %d (a report from another flushvm version)", r.Schema, protocol.CrashtestSchema)
		}
		sys := r.Mode == protocol.CrashtestSystematic
		if err == nil && len(rows)+len(bad) > 0 && len(rows) > 0 && rows[0].systematic != sys {
			err = fmt.Errorf("a %s campaign's report among %s ones: one table per mode", r.Mode, map[bool]string{true: "systematic", false: "random"}[rows[0].systematic])
		}
		if err == nil && version != "" && r.FlushvmVersion != version {
			err = fmt.Errorf("written by flushvm %s, the other reports by %s: shards of different builds do not add up", r.FlushvmVersion, version)
		}
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		version = r.FlushvmVersion
		fs := r.FileSystem()
		i := slices.IndexFunc(rows, func(t tableRow) bool { return t.mode == r.Cache && t.fs == fs && t.workload == r.Workload })
		if i < 0 {
			rows = append(rows, tableRow{mode: r.Cache, fs: fs, workload: r.Workload, policy: r.Policy, systematic: sys})
			i = len(rows) - 1
		}
		t, s := &rows[i], r.Summary
		if t.policy != r.Policy {
			t.policy = "mixed"
		}
		o := tableRow{cuts: s.Cuts, powerCuts: s.PowerCuts, acked: s.Acked, lostAcked: s.LostAcked,
			fsckErrors: s.FsckErrors, unmounted: s.MountFailures, violations: s.Violations, errors: s.Errors,
			seconds: s.Seconds}
		if sys {
			o.cuts = len(r.States)
			if r.Coverage != nil {
				o.distinct = r.Coverage.Distinct
			}
		}
		t.add(o)
	}
	rank := func(m string) int {
		if i := slices.Index(modeOrder, m); i >= 0 {
			return i
		}
		return len(modeOrder)
	}
	slices.SortStableFunc(rows, func(a, b tableRow) int { return rank(a.mode) - rank(b.mode) })
	if len(bad) > 0 {
		return rows, fmt.Errorf("crashtest reports: %s", strings.Join(bad, "; "))
	}
	return rows, nil
}

// printTable prints the table, a row per cache mode, file system and
// workload (a Markdown table, so it can be quoted as it is).
func printTable(w io.Writer, rows []tableRow) {
	cells := [][]string{{"mode", "fs", "workload", "cuts", "power cuts", "acked records", "lost acked", "fsck errors", "violations", "cuts/min", "not checked"}}
	sys := len(rows) > 0 && rows[0].systematic
	if sys {
		cells[0] = []string{"mode", "fs", "workload", "states checked", "distinct states", "acked records (summed)", "lost acked", "fsck errors", "violations", "states/min", "not checked"}
	}
	total := tableRow{systematic: sys, fs: "-", workload: "-"}
	distinct := 0
	for _, r := range rows {
		cells = append(cells, row(r.mode, r))
		total.add(r)
		distinct += r.distinct
	}
	total.distinct = distinct // the modes' spaces add up
	if len(rows) > 1 {
		cells = append(cells, row("all", total))
	}
	width := make([]int, len(cells[0]))
	for _, r := range cells {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	for n, r := range cells {
		var b strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", width[i]-len(c))
			if i < 3 {
				fmt.Fprintf(&b, "| %s%s ", c, pad) // names left, numbers right
			} else {
				fmt.Fprintf(&b, "| %s%s ", pad, c)
			}
		}
		fmt.Fprintln(w, b.String()+"|")
		if n == 0 {
			b.Reset()
			for i := range r {
				dash := strings.Repeat("-", width[i]+1)
				if i < 3 {
					fmt.Fprintf(&b, "|:%s", dash)
				} else {
					fmt.Fprintf(&b, "|%s:", dash)
				}
			}
			fmt.Fprintln(w, b.String()+"|")
		}
	}
	printTableNotes(w, rows, sys, total)
}

// printTableNotes prints the lines under the table.
func printTableNotes(w io.Writer, rows []tableRow, sys bool, total tableRow) {
	if len(rows) > 0 {
		var wl, pol []string
		for _, r := range rows {
			if !slices.Contains(wl, r.workload) {
				wl = append(wl, r.workload)
			}
			if !slices.Contains(pol, r.policy) {
				pol = append(pol, r.policy)
			}
		}
		if sys {
			fmt.Fprintf(w, "workload %s, systematic; states/min over each campaign's whole run (its format and record boots included)\n",
				strings.Join(wl, ", "))
		} else {
			fmt.Fprintf(w, "workload %s, policy %s; cuts/min over each campaign's whole run (its format and calibration boots included)\n",
				strings.Join(wl, ", "), strings.Join(pol, ", "))
		}
		if total.unmounted > 0 {
			fmt.Fprintf(w, "%d crashed file systems did not mount (counted as violations)\n", total.unmounted)
		}
	}
}

// row is the table's cells for one mode.
func row(name string, r tableRow) []string {
	rate := "-"
	if r.seconds > 0 {
		rate = strconv.FormatFloat(float64(r.cuts)/(r.seconds/60), 'f', 2, 64)
	}
	c := []string{name, r.fs, r.workload}
	second := r.powerCuts
	if r.systematic {
		second = r.distinct
	}
	for _, n := range []int{r.cuts, second, r.acked, r.lostAcked, r.fsckErrors, r.violations} {
		c = append(c, strconv.Itoa(n))
	}
	return append(c, rate, strconv.Itoa(r.errors))
}

// crashtestTable prints the table of the given reports.
func crashtestTable(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: flushvm-harness crashtest-table REPORT.json...")
		return 2
	}
	rows, err := readReports(args)
	printTable(os.Stdout, rows)
	if err != nil {
		return fail(err)
	}
	return 0
}
