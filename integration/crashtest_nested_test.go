package integration

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flushvm/flushvm/host/harness"
	"github.com/flushvm/flushvm/protocol"
)

// TestDebianLinuxCrashtestCampaignsNested runs three small `flushvm
// crashtest` campaigns of Debian guests on ext4 in one harness session (one
// L1 boot when nested; the campaigns' files on the session's scratch
// disk), then reproduces a violation in a second session:
//
//   - systematic, fsyncstress, cache=writeback: one record boot, a few
//     twenty crash states checked in one checker boot; every state keeps
//     every acknowledged record and passes fsck (exit status 0). Nested,
//     the harness kills L1 (QEMU quits through its monitor, as a dying TCG
//     L1 ends) when this campaign has judged 10 states: the harness
//     recovers its --dir from the dead L1's scratch disk and a new session
//     resumes it, and its report covers all 20 states;
//   - systematic, fsyncstress-ack-early (a workload that acknowledges
//     before its fdatasync): caught (exit status 1) within its first 8
//     states, with the first violating state's image hash and reproduce
//     command; its --dir (the record log, the base image) comes back to the
//     host;
//   - random, cache=unsafe with lose-all, its cut placed after the
//     workload's first acknowledgements: acknowledged records lost (exit
//     status 1) — the random mode's oracle can fail too;
//   - the reproduce command of the ack-early violation, run in a new
//     session from the host --dir: the same image (hash) and the same
//     violation.
func TestDebianLinuxCrashtestCampaignsNested(t *testing.T) {
	a := prepare(t)
	// The ELF kernel skips the bzImage's self-decompression in each of
	// the session's boots.
	vmlinux := a.Vmlinux
	dir := t.TempDir()
	// 4 writers x 6 records keep each workload short: the boots, not the
	// records, cost the time (and a 1-vCPU guest boots faster nested).
	common := []string{"--kernel", vmlinux, "--initrd", a.Initramfs, "--disk-size", "32M",
		"--records", "6", "--cpus", "1", "--boot-timeout", "2m"}
	kept, bugDir, wbDir := filepath.Join(dir, "kept"), filepath.Join(dir, "bug"), filepath.Join(dir, "wb")
	wbReport, bugReport, unsafeReport := filepath.Join(dir, "writeback.json"), filepath.Join(dir, "bug.json"), filepath.Join(dir, "unsafe.json")
	with := func(extra ...string) []string { return append(append([]string{}, common...), extra...) }
	runs := []harness.Run{
		{Subcommand: harness.SubCrashtest, Args: with("--workload", "fsyncstress", "--cache", "writeback",
			"--seed", "11", "--max-states", "20", "--dir", wbDir, "--report", wbReport)},
		{Subcommand: harness.SubCrashtest, Args: with("--workload", "fsyncstress-ack-early", "--cache", "writeback",
			"--seed", "5", "--max-states", "8", "--dir", bugDir, "--report", bugReport)},
		// cache=unsafe acknowledges FLUSHes it never performs, so with
		// lose-all every record acknowledged before the cut is lost. A
		// seeded cut could fall before the first acknowledgement; --at
		// places it after the first records (see unsafeCutWrites).
		{Subcommand: harness.SubCrashtest, Args: with("--workload", "fsyncstress", "--mode", "random",
			"--cache", "unsafe", "--policy", "lose-all", "--cuts", "1", "--seed", "3",
			"--at", "writes="+strconv.Itoa(unsafeCutWrites), "--report", unsafeReport, "--dir", kept)},
	}
	var killed atomic.Bool
	var log syncBuffer
	results := campaignSession(t, runs, &log, func(line string) bool {
		return strings.Contains(line, "crashtest: state 10/20 ") && !killed.Swap(true)
	})
	t.Run("systematic_writeback_keeps_every_acknowledged_record", func(t *testing.T) {
		r := results[0]
		rep := readCrashReport(t, wbReport, r)
		sum, cov := rep.Summary, rep.Coverage
		if r.Status != 0 || cov == nil || len(rep.States) != 20 || cov.Checked+cov.Explored != 20 || sum.Errors != 0 ||
			sum.Violations != 0 || sum.LostAcked != 0 || sum.FsckErrors != 0 || sum.MountFailures != 0 {
			t.Fatalf("exit status %d, summary %+v, coverage %+v: want status 0, 20 states judged, no violation; output:\n%s", r.Status, sum, cov, r.Output)
		}
		if killed.Load() && (cov.Explored < 10 || !strings.Contains(log.String(), "replayed its journal and copied back the kept directories")) {
			t.Errorf("L1 was killed at state 10: want the campaign resumed after the states it judged, coverage %+v; harness log:\n%s", cov, log.String())
		}
		if sum.Acked == 0 {
			t.Errorf("no state expected an acknowledged record: nothing was tested")
		}
		t.Logf("record %+v; coverage %+v; %.1f states/min", *rep.Record, *cov, sum.StatesPerMinute)
	})
	var first *protocol.CrashtestState
	t.Run("systematic_ack_early_is_caught", func(t *testing.T) {
		r := results[1]
		rep := readCrashReport(t, bugReport, r)
		first = rep.Summary.FirstViolation
		if r.Status != 1 || first == nil || first.Index >= 8 || first.LostAcked == 0 || first.Hash == "" {
			t.Fatalf("exit status %d, first violation %+v: want status 1 and a lost record within 8 states; output:\n%s", r.Status, first, r.Output)
		}
		if !strings.Contains(first.Repro, "--reproduce "+filepath.Join(bugDir, "record.wlog")+" "+first.ID) {
			t.Errorf("reproduce command %q does not name the host --dir's log and the state", first.Repro)
		}
		t.Logf("first violating state %s (#%d): %s; image hash %s", first.ID, first.Index, first.Reason, first.Hash)
	})
	t.Run("random_unsafe_lose-all_loses_acknowledged_records", func(t *testing.T) {
		checkUnsafeRandom(t, results[2], unsafeReport, kept)
	})
	t.Run("reproduce_rebuilds_the_same_image", func(t *testing.T) {
		if first == nil {
			t.Skip("no violation to reproduce")
		}
		args := strings.Fields(first.Repro)[2:]
		r := campaignSession(t, []harness.Run{{Subcommand: harness.SubCrashtest, Args: args}}, io.Discard, nil)[0]
		out := string(r.Output)
		if r.Status != 1 || !strings.Contains(out, "hash "+first.Hash) || !strings.Contains(out, "FAIL: lost") {
			t.Fatalf("exit status %d: want 1, the image hash %s and the violation again; output:\n%s", r.Status, first.Hash, out)
		}
		img := filepath.Join(bugDir, "state-"+first.ID+".img")
		if fi, err := os.Stat(img); err != nil || fi.Size() != 32<<20 {
			t.Errorf("the rebuilt image did not come back to %s: %v", img, err)
		}
	})
}

// TestDebianLinuxCrashtestWorkloadsNested runs, in one harness session,
// the workloads beyond fsyncstress on the same engine:
//
//   - a user's own workload on the workload protocol (README's example in
//     examples/crashtest-workload: shell scripts on busybox, --workload-dir
//     mapped into L1), in its buggy form that skips the directory fsync
//     after a rename: caught, with a reproduce command naming the host
//     directory;
//   - sqlite-wal (Debian's sqlite3 in the guest), a quarter of the states:
//     every state keeps every acknowledged row and passes integrity_check
//     and fsck;
//   - fsyncstress on xfs: a seventh of the states (at most 10) pass, and
//     some expect acknowledged records.
func TestDebianLinuxCrashtestWorkloadsNested(t *testing.T) {
	a := prepare(t)
	vmlinux := a.Vmlinux
	dir := t.TempDir()
	mine, err := filepath.Abs(filepath.Join("..", "examples", "crashtest-workload"))
	if err != nil {
		t.Fatal(err)
	}
	mineReport, sqliteReport, xfsReport := filepath.Join(dir, "mine.json"), filepath.Join(dir, "sqlite.json"), filepath.Join(dir, "xfs.json")
	with := func(extra ...string) []string {
		return append([]string{"--kernel", vmlinux, "--initrd", a.Initramfs, "--disk-size", "32M",
			"--cpus", "1", "--boot-timeout", "2m", "--cache", "writeback", "--seed", "1"}, extra...)
	}
	runs := []harness.Run{
		{Subcommand: harness.SubCrashtest, Args: with("--workload", "workload.sh 6 nodirsync", "--checker", "check.sh",
			"--workload-dir", mine, "--max-states", "16", "--report", mineReport)},
		// The first windows are mkfs, mount and the database's creation:
		// a quarter of the states, spread over the whole log (shard 1 of
		// 4: states 0, 4, 8, ...), reaches the acknowledged rows.
		{Subcommand: harness.SubCrashtest, Args: with("--workload", "sqlite-wal", "--records", "6", "--shard", "1/4", "--report", sqliteReport)},
		// Another file system: mkfs.xfs, its log replayed by the mount,
		// xfs_repair -n (mkfs.xfs wants 300M; the disk is sparse). Not
		// btrfs: its checker boots load raid6_pq and xor, and two CI runs
		// lost an L2 or the whole L1 while checking btrfs states (see the
		// issue 11 note).
		// A seventh of its states (about 70 distinct here), spread over
		// the log as for SQLite: the first ten alone are all mkfs and
		// mount, before any record is acknowledged.
		{Subcommand: harness.SubCrashtest, Args: append(with("--workload", "fsyncstress", "--records", "6", "--shard", "1/7", "--max-states", "10",
			"--report", xfsReport), "--fs", "xfs", "--disk-size", "300M")},
	}
	results := campaignSession(t, runs, io.Discard, nil)
	t.Run("own_workload_without_dir_fsync_is_caught", func(t *testing.T) {
		r := results[0]
		rep := readCrashReport(t, mineReport, r)
		v := rep.Summary.FirstViolation
		// check.sh prints no CHECK line: LostAcked counts its LOST lines.
		if r.Status != 1 || v == nil || v.LostAcked == 0 {
			t.Fatalf("exit status %d, first violation %+v: want status 1 and a LOST record; output:\n%s", r.Status, v, r.Output)
		}
		if !strings.Contains(v.Repro, "--workload-dir "+mine) || !strings.Contains(v.Repro, "--checker check.sh") {
			t.Errorf("reproduce command %q does not carry the workload's directory and checker", v.Repro)
		}
		t.Logf("first violating state %s (#%d): %s", v.ID, v.Index, v.Reason)
	})
	t.Run("sqlite_wal_keeps_every_acknowledged_row", func(t *testing.T) {
		r := results[1]
		rep := readCrashReport(t, sqliteReport, r)
		sum := rep.Summary
		if r.Status != 0 || sum.Checked == 0 || sum.Violations != 0 || sum.LostAcked != 0 || sum.FsckErrors != 0 || sum.Errors != 0 {
			t.Fatalf("exit status %d, summary %+v: want status 0, no violation; output:\n%s", r.Status, sum, r.Output)
		}
		if sum.Acked == 0 {
			t.Errorf("no state expected an acknowledged row: nothing was tested")
		}
	})
	t.Run("xfs_keeps_every_acknowledged_record", func(t *testing.T) {
		r := results[2]
		rep := readCrashReport(t, xfsReport, r)
		sum := rep.Summary
		// A state that killed two checker guests stays unchecked (the
		// campaign is INCOMPLETE, status 3): it says nothing about the
		// disk. A CI run saw it once on btrfs (two triple faults at
		// mounting the same state); the test names such states and wants
		// every other one checked and passed.
		var killers []string
		for _, st := range rep.States {
			if st.Error != "" && st.CheckerDeaths >= 2 {
				killers = append(killers, st.ID)
			}
		}
		status := r.Status == 0 || (r.Status == protocol.CrashtestFailed && len(killers) == sum.Errors)
		if !status || rep.FS != "xfs" || sum.Checked+len(killers) > 10 || sum.Checked < 7 || sum.Violations != 0 ||
			sum.Acked == 0 || !strings.Contains(string(r.Output), "fsyncstress on xfs") {
			t.Fatalf("exit status %d, fs %q, summary %+v, states that killed their checkers %q: want xfs, 7 to 10 states "+
				"checked (at most 2 left unchecked by checker deaths), acknowledged records among them, no violation; output:\n%s",
				r.Status, rep.FS, sum, killers, r.Output)
		}
		if len(killers) > 0 {
			t.Logf("states left unchecked: each killed two checker guests: %q", killers)
		}
	})
}

// campaignSession runs crashtest campaigns as flushvm-harness campaign
// does (harness.ExecuteCampaigns: a campaign whose L1 dies resumes in a new
// session), with fault as the harness's L1 fault (nil: none); the
// harness's log goes to the test log and to log.
func campaignSession(t *testing.T, runs []harness.Run, log io.Writer, fault func(string) bool) []harness.Result {
	t.Helper()
	const bound = 35 * time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	opts := harness.Options{Stdout: consoleWriter{}, Log: io.MultiWriter(testLog{t}, log), Timeout: bound, L1Fault: fault}
	results, err := harness.ExecuteCampaigns(ctx, opts, runs)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return results
}

// readCrashReport reads a campaign's --report, which must name host
// paths only.
func readCrashReport(t *testing.T, path string, r harness.Result) protocol.CrashtestReport {
	t.Helper()
	t.Logf("campaign ran %.1f s; its summary:\n%s", r.Duration.Seconds(), summaryOf(r.Output))
	if r.Err != nil {
		t.Fatalf("%v; output:\n%s", r.Err, r.Output)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("--report was not copied back: %v; output:\n%s", err, r.Output)
	}
	var rep protocol.CrashtestReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("--report: %v: %s", err, b)
	}
	if strings.Contains(string(b), "/job/") || strings.Contains(string(b), "/scratch/run-") {
		t.Errorf("--report names L1 paths: %s", b)
	}
	if strings.Contains(string(r.Output), "/job/in/") {
		t.Errorf("the campaign's output names L1 paths of its inputs:\n%s", r.Output)
	}
	return rep
}

// checkUnsafeRandom checks the random-mode cache=unsafe campaign: it lost
// acknowledged records, and its failing cut's files came back to kept.
func checkUnsafeRandom(t *testing.T, r harness.Result, report, kept string) {
	rep := readCrashReport(t, report, r)
	sum := rep.Summary
	t.Logf("calibration: %d writes, %d flushes, %d acknowledgements", rep.Calibration.Writes, rep.Calibration.Flushes, rep.Calibration.Acks)
	if rep.Calibration.Writes <= unsafeCutWrites {
		t.Fatalf("the workload made only %d writes: the cut at writes=%d is past its end; lower unsafeCutWrites", rep.Calibration.Writes, unsafeCutWrites)
	}
	if sum.Acked == 0 {
		t.Fatalf("nothing was acknowledged before the cut at writes=%d: raise unsafeCutWrites; output:\n%s", unsafeCutWrites, r.Output)
	}
	if r.Status != 1 || sum.PowerCuts != 1 || sum.LostAcked == 0 || sum.Violations != 1 {
		t.Fatalf("exit status %d, summary %+v: want status 1 (violations), acknowledged records lost; output:\n%s", r.Status, sum, r.Output)
	}
	t.Logf("cache=unsafe lost %d of %d acknowledged records", sum.LostAcked, sum.Acked)
	img := rep.Results[0].Image
	if filepath.Dir(img) != kept {
		t.Fatalf("the failing cut's image is %q, want it in --dir %s", img, kept)
	}
	fi, err := os.Stat(img)
	if err != nil || fi.Size() != 32<<20 {
		t.Fatalf("the failing cut's image did not come back from the scratch disk: %v", err)
	}
	logs, _ := filepath.Glob(filepath.Join(kept, "cut-0.*.log"))
	if len(logs) != 2 {
		t.Errorf("kept logs %q, want the workload's and the checker's", logs)
	}
}

// unsafeCutWrites places the unsafe campaign's cut: past the writes of
// mounting ext4 and the first records' fdatasyncs, well before the end of
// the 24-record workload (measured here: 47-49 writes in all, about two
// per record; a cut at the 40th write followed 19 acknowledgements).
const unsafeCutWrites = 24

// summaryOf returns crashtest's human summary from its output.
func summaryOf(out []byte) string {
	s := string(out)
	if i := strings.Index(s, "flushvm crashtest: "); i >= 0 {
		return s[i:]
	}
	return "(no summary)"
}
