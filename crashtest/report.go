package crashtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/internal/atomicfile"
	"github.com/flushvm/flushvm/internal/lines"
	"github.com/flushvm/flushvm/protocol"
)

// ackKeys collects the keys of the acknowledgement lines of out, in
// order. Only whole lines count: an acknowledgement cut off by the power
// cut was never made.
func ackKeys(out []byte) []string {
	var keys []string
	whole := out[:bytes.LastIndexByte(out, '\n')+1]
	for _, line := range strings.Split(string(whole), "\n") {
		if k, ok := protocol.AckKey(line); ok {
			keys = append(keys, k)
		}
	}
	return keys
}

// readPowerCut fills in the model's report from the workload boot's
// --stats.
func readPowerCut(r *protocol.CrashtestCut, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("workload --stats: %w", err)
	}
	var doc disk.Stats
	// Disk 0 is the disk under test; the job disk follows it.
	if err := json.Unmarshal(b, &doc); err != nil || len(doc.Disks) == 0 {
		return fmt.Errorf("workload --stats %s: want the disk under test: %v", path, err)
	}
	pc := doc.Disks[0].PowerCut
	if pc == nil || pc.Report == nil {
		return fmt.Errorf("workload --stats %s: the power cut left no report", path)
	}
	if pc.Error != "" {
		return fmt.Errorf("the power cut failed to apply: %s", pc.Error)
	}
	r.Unstable, r.Kept, r.Torn, r.Lost = pc.Report.Unstable, pc.Report.Kept, pc.Report.Torn, pc.Report.Lost
	return nil
}

// judge reads a checker's console lines (out; status is the checker boot's
// exit status, or the state's end status in a batch) and decides. The
// checker's counts come from its CHECK line when it prints one, else from
// its LOST lines (protocol/workload.go).
func judge(r *protocol.CrashtestCheck, workload string, status int, out []byte) {
	r.CheckStatus = status
	v := protocol.CheckVerdict{CheckerStatus: -1, FsckStatus: -1}
	sawCheck, lost := false, 0
	for _, line := range strings.Split(string(out), "\n") {
		if protocol.ParseCheckLine(&v, line, workload) {
			continue
		}
		if _, ok := protocol.LostKey(line); ok {
			lost++
		}
		if c, ok := protocol.ParseAnyCheck(line); ok {
			sawCheck = true
			r.LostAcked, r.Extra = c.Lost, c.Extra
			if c.Acked != r.Acked {
				r.Error = fmt.Sprintf("the checker counted %d acknowledged keys, the console showed %d", c.Acked, r.Acked)
			}
		}
	}
	if !sawCheck {
		r.LostAcked = lost
	}
	r.FsckStatus, r.MountFailed = v.FsckStatus, v.MountFailed
	checker := v.CheckerStatus
	var why []string
	if r.MountFailed {
		why = append(why, "the crashed file system does not mount")
	} else if checker < 0 && !sawCheck && r.Error == "" {
		r.Error = "the guest printed no checker status: " + lines.Last(out, 3)
	}
	switch {
	case r.LostAcked > 0:
		why = append(why, fmt.Sprintf("lost %d of %d acknowledged", r.LostAcked, r.Acked))
	case checker == 1:
		// rename: a torn target file is a violation even when no
		// version was acknowledged yet.
		why = append(why, "the workload's checker found damaged data")
	case checker > 1 && r.Error == "" && !r.MountFailed:
		r.Error = fmt.Sprintf("the workload's checker failed (status %d): %s", checker, lines.Last(out, 3))
	}
	switch {
	case r.FsckStatus > 0 && r.FsckStatus < 8:
		why = append(why, fmt.Sprintf("the file system check found errors (status %d)", r.FsckStatus))
	case r.FsckStatus >= 8 && r.MountFailed:
		why = append(why, fmt.Sprintf("the file system check cannot open it (status %d)", r.FsckStatus))
	case r.FsckStatus >= 8:
		if r.Error == "" {
			r.Error = fmt.Sprintf("the file system check could not run (status %d)", r.FsckStatus)
		}
	case r.FsckStatus < 0 && r.Error == "":
		r.Error = "the checker printed no fsck status: " + lines.Last(out, 3)
	}
	r.Violation = len(why) > 0
	r.Reason = strings.Join(why, "; ")
}

// Report is a campaign's report as it runs: the --report document plus the
// verdict and summary that follow from it.
type Report struct {
	protocol.CrashtestReport
	start time.Time
	// before is the time the runs this one resumed spent (resume).
	before time.Duration
	// snapshotAt is when snapshot last wrote the report.
	snapshotAt time.Time
}

// snapshotEvery is how often a running systematic campaign rewrites its
// --report with what it has judged so far.
const snapshotEvery = 10 * time.Second

// snapshot writes the report as it stands to path ("": none), as finish
// would leave it if the campaign ended now (so incomplete, with the
// states not judged yet counted as skipped), at most every snapshotEvery.
// A campaign that dies with its machine (a nested L1 that
// QEMU TCG loses) then leaves a report of the states it judged, which
// its resumed run (same --dir) does not check again.
func (r *Report) snapshot(path string) error {
	now := time.Now()
	if path == "" || now.Sub(r.snapshotAt) < snapshotEvery {
		return nil
	}
	r.snapshotAt = now
	snap := *r
	if r.Coverage != nil {
		cov := *r.Coverage
		cov.Skipped = max(0, r.Summary.Planned-len(r.States))
		snap.Coverage = &cov
	}
	snap.finish(now.Sub(r.start))
	return snap.Write(path)
}

func newReport(c *Campaign) *Report {
	r := &Report{CrashtestReport: protocol.CrashtestReport{Schema: protocol.CrashtestSchema, FlushvmVersion: protocol.Version(),
		Mode: c.mode, Workload: c.workload, FS: c.fs, Records: c.records, Cache: string(c.cache), Policy: c.policy, Seed: c.seed,
		Cuts: c.cuts, Shard: fmt.Sprintf("%d/%d", c.shardIndex, c.shardCount), DiskSize: c.diskSize,
		Kernel: c.kernel, Initrd: c.initrd, Results: []protocol.CrashtestCut{}}, start: time.Now()}
	if c.mode == protocol.CrashtestRandom {
		r.Summary.Planned = len(c.ShardCuts())
	} else {
		r.States = []protocol.CrashtestState{}
	}
	return r
}

// elapsed is the campaign's time so far, over every run of it.
func (r *Report) elapsed() time.Duration { return r.before + time.Since(r.start) }

// resume makes the report cover the campaign so far: the states earlier
// runs judged (explored, in their order), when this shard owns them (a
// run with other --k or --torn explores other states), as planned and
// judged, and the time those runs spent. repro gives each state's
// reproduce command as this run would write it: an earlier run may have
// seen the campaign's directory under another path (a nested campaign
// resumed in a new L1 session runs on another scratch directory), and a
// command naming that path would reproduce nothing.
func (r *Report) resume(owned map[string]bool, explored []protocol.CrashtestExplored, repro func(id string) string) {
	seen := map[string]bool{}
	for _, e := range explored {
		if !owned[e.ID] || seen[e.ID] || e.Kind == "" {
			continue
		}
		seen[e.ID] = true
		r.Summary.Planned++
		st := e.CrashtestState
		if st.Repro != "" {
			st.Repro = repro(st.ID)
		}
		r.judged(st)
		r.before = max(r.before, time.Duration(e.Elapsed*float64(time.Second)))
	}
}

// addState records a state this run judged (systematic mode).
func (r *Report) addState(st protocol.CrashtestState) {
	if r.Coverage != nil && st.Error == "" {
		r.Coverage.Checked++
	}
	r.judged(st)
}

// judged adds a judged state to the states and the totals.
func (r *Report) judged(st protocol.CrashtestState) {
	r.States = append(r.States, st)
	s := totals{&r.Summary}
	if st.Error != "" {
		s.Errors++
	}
	s.addCheck(st.CrashtestCheck)
	if st.Violation {
		if s.FirstViolation == nil {
			first := st
			s.FirstViolation = &first
		}
	}
}

// totals is protocol.CrashtestTotals with the sums both modes share.
type totals struct{ *protocol.CrashtestTotals }

// addCheck adds one checked image's verdict to the totals.
func (s totals) addCheck(c protocol.CrashtestCheck) {
	s.Acked += c.Acked
	s.LostAcked += c.LostAcked
	if c.FsckStatus > 0 && c.FsckStatus < 8 {
		s.FsckErrors++
	}
	if c.MountFailed {
		s.MountFailures++
	}
	if c.Violation {
		s.Violations++
	}
}

// add records a cut of the random mode.
func (r *Report) add(res protocol.CrashtestCut) {
	r.Results = append(r.Results, res)
	s := totals{&r.Summary}
	s.Cuts++
	switch {
	case res.Error != "":
		s.Errors++
	case res.PowerCut:
		s.PowerCuts++
	default:
		s.NoCut++
	}
	s.GuestCrashes += res.GuestCrashes
	s.addCheck(res.CrashtestCheck)
	if res.Violation {
		if s.FirstFailure == nil {
			first := res
			s.FirstFailure = &first
		}
	}
}

// finish records the campaign's time (d, this run's; the runs it resumed
// add theirs) and its verdict: passed only when
// every planned cut was checked.
func (r *Report) finish(d time.Duration) {
	d += r.before
	s := &r.Summary
	s.Seconds = d.Seconds()
	if d > 0 {
		s.CutsPerMinute = float64(s.Cuts) / d.Minutes()
	}
	s.Checked = s.Cuts - s.Errors
	if r.Mode == protocol.CrashtestSystematic {
		s.Checked = len(r.States) - s.Errors
		if d > 0 {
			s.StatesPerMinute = float64(s.Checked) / d.Minutes()
		}
	}
	switch {
	case s.Violations > 0:
		r.Status = protocol.CrashtestViolated
	case s.Checked == s.Planned && s.Planned > 0:
		r.Status = protocol.CrashtestPassed
	default:
		r.Status = protocol.CrashtestIncomplete
	}
}

// ExitStatus is crashtest's exit status for a finished campaign.
func (r *Report) ExitStatus() int {
	switch r.Status {
	case protocol.CrashtestViolated:
		return protocol.CrashtestViolations
	case protocol.CrashtestPassed:
		return protocol.ExitOK
	}
	return protocol.CrashtestFailed
}

// Write writes the report as JSON to path, atomically (a temporary file
// renamed over path): a reader never sees half a report.
func (r *Report) Write(path string) error {
	if err := atomicfile.WriteJSON(path, r); err != nil {
		return fmt.Errorf("--report: %w", err)
	}
	return nil
}

// unit names what the workload acknowledges.
func (r *Report) unit() string {
	if w, ok := Workloads[r.Workload]; !ok {
		return "keys"
	} else if w.Label == "rename" {
		return "versions"
	}
	return "records"
}

// PrintSummary writes the human summary.
func (r *Report) PrintSummary(w io.Writer) {
	if r.Mode == protocol.CrashtestSystematic {
		r.printSystematic(w)
		return
	}
	s := r.Summary
	fmt.Fprintf(w, "flushvm crashtest: %s on %s, cache=%s, policy %s, seed %d, shard %s of %d cuts\n",
		r.Workload, r.FileSystem(), r.Cache, r.Policy, r.Seed, r.Shard, r.Cuts)
	fmt.Fprintf(w, "  cuts:        %d planned, %d checked; %d run: %d power cuts, %d ended before their cut point, %d could not be checked\n",
		s.Planned, s.Checked, s.Cuts, s.PowerCuts, s.NoCut, s.Errors)
	fmt.Fprintf(w, "  time:        %s, %.1f cuts/min (calibration: %d writes, %d flushes per run)\n",
		time.Duration(s.Seconds*float64(time.Second)).Round(time.Second), s.CutsPerMinute, r.Calibration.Writes, r.Calibration.Flushes)
	fmt.Fprintf(w, "  acknowledged %s: %d, lost: %d; fsck errors: %d; unmountable: %d\n",
		r.unit(), s.Acked, s.LostAcked, s.FsckErrors, s.MountFailures)
	if n := s.GuestCrashes + r.Calibration.GuestCrashes; n > 0 {
		fmt.Fprintf(w, "  guest crashes: %d boots crashed or hung before their guest reported its status and were run again\n", n)
	}
	fmt.Fprintf(w, "  violations:  %d", s.Violations)
	if s.Violations > 0 {
		var ks []string
		for _, res := range r.Results {
			if res.Violation {
				ks = append(ks, strconv.Itoa(res.Cut))
			}
		}
		fmt.Fprintf(w, " (cuts %s)", strings.Join(ks, ", "))
	}
	fmt.Fprintln(w)
	for _, res := range r.Results {
		if res.Error != "" {
			fmt.Fprintf(w, "  cut %d (seed %d, %s) not checked: %s\n", res.Cut, res.Seed, res.At, res.Error)
		}
	}
	if f := s.FirstFailure; f != nil {
		fmt.Fprintf(w, "  first failing cut: %d (seed %d, cut at %s): %s\n", f.Cut, f.Seed, f.At, f.Reason)
		fmt.Fprintf(w, "  reproduce:   %s\n", f.Repro)
		if f.Image != "" {
			fmt.Fprintf(w, "  its image:   %s\n", f.Image)
		}
	}
	switch r.Status {
	case protocol.CrashtestViolated:
		fmt.Fprintln(w, "  result:      FAIL: acknowledged data was lost or a file system was damaged")
	case protocol.CrashtestIncomplete:
		fmt.Fprintf(w, "  result:      INCOMPLETE: no violation, but only %d of %d planned cuts were checked: nothing is proven\n", s.Checked, s.Planned)
	default:
		fmt.Fprintln(w, "  result:      PASS: every acknowledged record survived every cut; every file system is clean")
	}
}

// printSystematic writes the systematic mode's summary.
func (r *Report) printSystematic(w io.Writer) {
	s := r.Summary
	fmt.Fprintf(w, "flushvm crashtest: %s on %s, cache=%s, systematic, seed %d, shard %s\n", r.Workload, r.FileSystem(), r.Cache, r.Seed, r.Shard)
	if rec := r.Record; rec != nil {
		fmt.Fprintf(w, "  record:      %d writes, %d flushes, %d acknowledgements in %s (%d windows, the largest %d writes)\n",
			rec.Writes, rec.Flushes, rec.Acks, rec.Log, rec.Windows, rec.MaxWindow)
	}
	if c := r.Coverage; c != nil {
		fmt.Fprintf(w, "  coverage:    %s states in the space (k=%d), %d generated, %d distinct, %d duplicates; %d other shards', %d checked before, %d checked now, %d left\n",
			formatSpace(c.Space), c.K, c.Generated, c.Distinct, c.Deduplicated, c.OtherShards, c.Explored, c.Checked, c.Skipped)
		if c.Exhausted {
			fmt.Fprintln(w, "  space:       exhausted: every distinct state of this shard has been checked")
		}
	}
	fmt.Fprintf(w, "  time:        %s, %.1f states/min\n", time.Duration(s.Seconds*float64(time.Second)).Round(time.Second), s.StatesPerMinute)
	fmt.Fprintf(w, "  acknowledged %s expected (summed over states): %d, lost: %d; fsck errors: %d; unmountable: %d\n",
		r.unit(), s.Acked, s.LostAcked, s.FsckErrors, s.MountFailures)
	fmt.Fprintf(w, "  violations:  %d\n", s.Violations)
	for _, st := range r.States {
		if st.Error != "" {
			fmt.Fprintf(w, "  state %s not checked: %s\n", st.ID, st.Error)
		}
	}
	if f := s.FirstViolation; f != nil {
		fmt.Fprintf(w, "  first violating state: %s (#%d, window %d, %s, image hash %s): %s\n", f.ID, f.Index, f.Window, f.Kind, f.Hash, f.Reason)
		fmt.Fprintf(w, "  reproduce:   %s\n", f.Repro)
	}
	switch r.Status {
	case protocol.CrashtestViolated:
		fmt.Fprintln(w, "  result:      FAIL: acknowledged data was lost or a file system was damaged")
	case protocol.CrashtestIncomplete:
		fmt.Fprintf(w, "  result:      INCOMPLETE: no violation, but only %d of %d planned states were checked: nothing is proven\n", s.Checked, s.Planned)
	default:
		r.printPass(w)
	}
}

// printPass writes a passing systematic campaign's verdict. A pass over
// states that expected no acknowledged record tested only the file
// system's own metadata, and says so rather than claim the records.
func (r *Report) printPass(w io.Writer) {
	s := r.Summary
	if s.Acked == 0 {
		one := strings.TrimSuffix(r.unit(), "s")
		fmt.Fprintf(w, "  result:      PASS: every file system is clean in all %d states; none of them expected an acknowledged %s (all lie before the first acknowledgement), so no %s was tested\n",
			s.Checked, one, one)
		return
	}
	fmt.Fprintf(w, "  result:      PASS: every acknowledged record survived in all %d states; every file system is clean\n", s.Checked)
}

// Progress shows the campaign's progress on stderr: a bar redrawn in place
// on a terminal, one line per cut otherwise (logs, CI, nested consoles).
type Progress struct {
	w       io.Writer
	tty     bool
	total   int
	n       int
	cutTime time.Duration // the finished cuts' time
}

func NewProgress(w io.Writer, cuts []int) *Progress {
	p := &Progress{w: w, total: len(cuts)}
	if f, ok := w.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			p.tty = true
		}
	}
	return p
}

// note prints a line about the campaign's set-up.
func (p *Progress) note(format string, a ...any) {
	fmt.Fprintf(p.w, "crashtest: "+format+"\n", a...)
}

// cut reports a finished cut.
func (p *Progress) cut(res protocol.CrashtestCut, rep *Report) {
	p.n++
	p.cutTime += time.Duration(res.Seconds * float64(time.Second))
	s := rep.Summary
	// The rate and the estimate count the cuts' own time, not the
	// campaign's format and calibration boots.
	rate := float64(p.n) / p.cutTime.Minutes()
	eta := time.Duration(float64(p.total-p.n) / rate * float64(time.Minute)).Round(time.Second)
	if p.tty {
		const width = 30
		done := width * p.n / max(p.total, 1)
		fmt.Fprintf(p.w, "\r[%s%s] %d/%d cuts, %d violations, %d errors, %.1f cuts/min, ETA %v   ",
			strings.Repeat("#", done), strings.Repeat(".", width-done), p.n, p.total, s.Violations, s.Errors, rate, eta)
		return
	}
	verdict := "ok"
	switch {
	case res.Error != "":
		verdict = "NOT CHECKED: " + res.Error
	case res.Violation:
		verdict = "VIOLATION: " + res.Reason
	}
	what := "ended before the cut"
	if res.PowerCut {
		what = fmt.Sprintf("power cut, %d of %d unstable writes kept, %d torn", res.Kept, res.Unstable, res.Torn)
	}
	fmt.Fprintf(p.w, "crashtest: cut %d/%d (#%d, seed %d, at %s): %s; %d acknowledged; fsck %d: %s [%.0f s, ETA %v]\n",
		p.n, p.total, res.Cut, res.Seed, res.At, what, res.Acked, res.FsckStatus, verdict, res.Seconds, eta)
}

// state reports a judged crash state (systematic mode).
func (p *Progress) state(st protocol.CrashtestState, rep *Report) {
	p.n++
	s := rep.Summary
	elapsed := time.Since(rep.start)
	rate := float64(p.n) / max(elapsed.Minutes(), 1e-9)
	cov := rep.Coverage
	if p.tty {
		const width = 30
		done := width * p.n / max(p.total, 1)
		fmt.Fprintf(p.w, "\r[%s%s] %d/%d states (%d distinct in the space), %d violations, %d errors, %.1f states/min   ",
			strings.Repeat("#", done), strings.Repeat(".", width-done), p.n, p.total, cov.Distinct, s.Violations, s.Errors, rate)
		return
	}
	verdict := "ok"
	switch {
	case st.Error != "":
		verdict = "NOT CHECKED: " + st.Error
	case st.Violation && rep.Summary.Violations == 1:
		verdict = "VIOLATION: " + st.Reason + "; reproduce: " + st.Repro
	case st.Violation:
		verdict = "VIOLATION: " + st.Reason
	}
	fmt.Fprintf(p.w, "crashtest: state %d/%d %s (%s): %d acknowledged; fsck %d: %s [%.1f states/min]\n",
		p.n, p.total, st.ID, st.Kind, st.Acked, st.FsckStatus, verdict, rate)
}

// done ends the bar.
func (p *Progress) done() {
	if p.tty && p.n > 0 {
		fmt.Fprintln(p.w)
	}
}

// formatSpace prints the size of a state space: whole below a billion,
// else like 1.2e+252 (a window of n writes has 2^n subsets).
func formatSpace(n float64) string {
	if n < 1e9 {
		return strconv.FormatFloat(n, 'f', 0, 64)
	}
	return strconv.FormatFloat(n, 'g', 3, 64)
}

// formatSize prints a byte count with a binary suffix.
func formatSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + " GiB"
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + " MiB"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}
