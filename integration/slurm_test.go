package integration

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/host/slurm"
	"github.com/flushvm/flushvm/protocol"
)

// TestSlurmShardedCampaignNested runs a systematic crash-test campaign as
// two Slurm array shards on a single-node cluster that `flushvm-harness
// slurm-campaign --local-cluster` brings up on loopback (munge,
// slurmctld, slurmd, configured in the shared directory), then the same
// campaign unsharded over the same recording, and wants the shards to add
// up to it exactly: the same states (by ID and image hash), the same
// acknowledgements, losses and violations. It runs when Slurm is installed
// (.ci/run installs it; `make test-slurm` runs it alone).
func TestSlurmShardedCampaignNested(t *testing.T) {
	if err := slurm.Installed(); err != nil {
		t.Skip(err)
	}
	prepare(t)
	fh := buildHarness(t)
	mine, err := filepath.Abs(filepath.Join("..", "examples", "crashtest-workload"))
	if err != nil {
		t.Fatal(err)
	}
	// One record keeps the state space small (its mkfs and mount
	// windows dominate): the test is about the sharding.
	args := []string{"--disk-size", "32M", "--cpus", "1", "--boot-timeout", "2m", "--seed", "1", "--cache", "writeback",
		"--workload", "workload.sh 1", "--checker", "check.sh", "--workload-dir", mine}
	dir, err := os.MkdirTemp("", "flushvm-slurm-") // munge's socket path must be short
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	shared := filepath.Join(dir, "shared")
	t0 := time.Now()
	out, st := harnessCommand(t, fh, append([]string{"slurm-campaign", "--local-cluster", "--shards", "2", "--shared", shared}, args...)...)
	sharded := time.Since(t0)
	t.Logf("slurm-campaign: exit status %d after %.1f s:\n%s", st, sharded.Seconds(), out)
	if st != 0 || !strings.Contains(out, "| writeback | ext4 | workload.sh 1 |") {
		t.Fatalf("slurm-campaign: exit status %d; want 0 and the merged table", st)
	}
	shards := []protocol.CrashtestReport{readReport(t, filepath.Join(shared, "report-1.json")), readReport(t, filepath.Join(shared, "report-2.json"))}

	// The same campaign unsharded, from a copy of shard 1's recording.
	whole := filepath.Join(dir, "whole")
	if err := os.MkdirAll(whole, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"template.img", "record.wlog", "record.json"} {
		if b, err := exec.Command("cp", "--sparse=always", filepath.Join(shared, "shard-1", f), filepath.Join(whole, f)).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v: %s", f, err, b)
		}
	}
	t0 = time.Now()
	out, st = harnessCommand(t, fh, append([]string{"crashtest", "--dir", whole, "--report", filepath.Join(dir, "whole.json")}, args...)...)
	t.Logf("unsharded crashtest over the same recording: exit status %d after %.1f s", st, time.Since(t0).Seconds())
	if st != 0 {
		t.Fatalf("unsharded: exit status %d:\n%s", st, out)
	}
	compareShards(t, shards, readReport(t, filepath.Join(dir, "whole.json")))
}

// compareShards wants the shards' states to be the whole run's, split
// without overlap, with the same verdicts and sums.
func compareShards(t *testing.T, shards []protocol.CrashtestReport, whole protocol.CrashtestReport) {
	t.Helper()
	var ids, wholeIDs []string
	var sum protocol.CrashtestTotals
	for _, r := range shards {
		for _, s := range r.States {
			ids = append(ids, s.ID+" "+s.Hash)
		}
		sum.Acked += r.Summary.Acked
		sum.LostAcked += r.Summary.LostAcked
		sum.Violations += r.Summary.Violations
		if r.Coverage == nil || r.Coverage.Distinct != whole.Coverage.Distinct {
			t.Errorf("shard %s: coverage %+v, the whole run's distinct states %d", r.Shard, r.Coverage, whole.Coverage.Distinct)
		}
	}
	for _, s := range whole.States {
		wholeIDs = append(wholeIDs, s.ID+" "+s.Hash)
	}
	slices.Sort(ids)
	slices.Sort(wholeIDs)
	if !slices.Equal(ids, wholeIDs) || len(ids) != whole.Coverage.Distinct {
		t.Errorf("the shards checked %d states %q,\nthe whole run %d %q", len(ids), ids, len(wholeIDs), wholeIDs)
	}
	w := whole.Summary
	if sum.Acked != w.Acked || sum.LostAcked != w.LostAcked || sum.Violations != w.Violations || w.Acked == 0 {
		t.Errorf("shards sum to acked %d lost %d violations %d; the whole run %d, %d, %d (want equal, some acknowledged)",
			sum.Acked, sum.LostAcked, sum.Violations, w.Acked, w.LostAcked, w.Violations)
	}
	t.Logf("%d distinct states: shard 1 checked %d, shard 2 %d; %d acknowledged keys expected, %d lost",
		whole.Coverage.Distinct, len(shards[0].States), len(shards[1].States), w.Acked, w.LostAcked)
}

// buildHarness builds flushvm-harness for commands the test runs as a
// user would.
func buildHarness(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "flushvm-harness")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/flushvm-harness")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/flushvm-harness: %v: %s", err, out)
	}
	return bin
}

// harnessCommand runs flushvm-harness from the repository's root and
// returns its output and exit status.
func harnessCommand(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("flushvm-harness %s: %v: %s", strings.Join(args, " "), err, out)
	return "", 0
}

// readReport reads a crashtest report.
func readReport(t *testing.T, path string) protocol.CrashtestReport {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r protocol.CrashtestReport
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if r.Coverage == nil {
		t.Fatalf("%s: no coverage: not a systematic report", path)
	}
	return r
}
