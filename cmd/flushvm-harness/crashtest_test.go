package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/flushvm/flushvm/host/harness"
)

func TestTakeFlag(t *testing.T) {
	tests := []struct {
		args      []string
		name, val string
		rest      []string
		found     bool
		err       bool
	}{
		{[]string{"--modes", "a:1", "--seed", "3"}, "modes", "a:1", []string{"--seed", "3"}, true, false},
		{[]string{"--out=x", "--modes=b:2", "--out", "y"}, "out", "y", []string{"--modes=b:2"}, true, false},
		{[]string{"--outx", "1"}, "out", "", []string{"--outx", "1"}, false, false},
		{[]string{"--seed", "1", "--out"}, "out", "", nil, false, true},
	}
	for _, tt := range tests {
		val, rest, found, err := takeFlag(tt.args, tt.name)
		if (err != nil) != tt.err || val != tt.val || found != tt.found || (!tt.err && !slices.Equal(rest, tt.rest)) {
			t.Errorf("takeFlag(%q, %s) = %q, %q, %v, %v", tt.args, tt.name, val, rest, found, err)
		}
	}
}

func TestParseModes(t *testing.T) {
	ms, err := parseModes(defaultModes)
	if err != nil || len(ms) != 5 || ms[0] != (campaignMode{"writeback", 20}) || ms[4] != (campaignMode{"unsafe", 10}) {
		t.Errorf("parseModes(%q) = %v, %v", defaultModes, ms, err)
	}
	for _, bad := range []string{"", "writeback", "writeback:0", "writeback:x", ":3", "none:1,none:2", "none:every"} {
		if _, err := parseModes(bad); !errors.Is(err, errUsage) {
			t.Errorf("parseModes(%q) = %v, want a usage error", bad, err)
		}
	}
}

func TestCampaignRuns(t *testing.T) {
	sys, _, err := campaignRuns([]campaignMode{{"none", 0}, {"unsafe", 30}}, "out", []string{"--seed", "7"})
	if err != nil || !slices.Equal(sys[0].Args, []string{"--seed", "7", "--cache", "none", "--dir", "out/none.work", "--report", "out/none.json"}) ||
		!slices.Equal(sys[1].Args, []string{"--seed", "7", "--cache", "unsafe", "--max-states", "30", "--dir", "out/unsafe.work", "--report", "out/unsafe.json"}) {
		t.Errorf("systematic campaignRuns = %+v, %v", sys, err)
	}
	// A --dir given holds a directory per mode.
	own, _, err := campaignRuns([]campaignMode{{"none", 0}}, "out", []string{"--dir=keep", "--seed", "7"})
	if err != nil || !slices.Equal(own[0].Args, []string{"--seed", "7", "--cache", "none", "--dir", "keep/none", "--report", "out/none.json"}) {
		t.Errorf("systematic campaignRuns with --dir = %+v, %v", own, err)
	}
	if _, _, err := campaignRuns([]campaignMode{{"none", 0}}, "out", []string{"--mode", "random"}); !errors.Is(err, errUsage) {
		t.Errorf("a random campaign with every state: %v", err)
	}
	shared := []string{"--workload", "fsyncstress", "--mode", "random"}
	runs, reports, err := campaignRuns([]campaignMode{{"none", 3}, {"unsafe", 1}}, "out", shared)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"--workload", "fsyncstress", "--mode", "random", "--cache", "unsafe", "--cuts", "1", "--report", "out/unsafe.json"}
	if len(runs) != 2 || runs[1].Subcommand != harness.SubCrashtest || !slices.Equal(runs[1].Args, want) ||
		!slices.Equal(reports, []string{"out/none.json", "out/unsafe.json"}) {
		t.Errorf("campaignRuns = %+v, %q", runs, reports)
	}
	if !slices.Equal(runs[0].Args[:4], shared) || len(shared) != 4 {
		t.Errorf("runs share and modify one argument slice: %q", runs[0].Args)
	}
	for _, f := range []string{"--cache=none", "--cuts", "--report"} {
		if _, _, err := campaignRuns([]campaignMode{{"none", 1}}, "out", []string{f, "x"}); !errors.Is(err, errUsage) {
			t.Errorf("campaignRuns accepted %s: %v", f, err)
		}
	}
}

// writeReport writes a crashtest report as `flushvm crashtest --report`
// does (only the fields the table reads and a few it ignores).
func writeReport(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const reportUnsafe = `{"schema":3,"flushvm_version":"v1","workload":"fsyncstress","records":100,"cache":"unsafe","policy":"random-subset","seed":1,"cuts":10,
 "calibration":{"writes":900},"results":[],
 "summary":{"cuts":10,"power_cuts":9,"ended_before_cut":1,"errors":0,"acked":1500,"lost_acked":212,"fsck_errors":2,
  "mount_failures":1,"violations":8,"seconds":300,"cuts_per_minute":2}}`

func TestTable(t *testing.T) {
	dir := t.TempDir()
	shard := func(cuts, power, acked int, secs string) string {
		return `{"schema":3,"flushvm_version":"v1","workload":"fsyncstress","cache":"writeback","policy":"random-subset","summary":{"cuts":` + strconv.Itoa(cuts) +
			`,"power_cuts":` + strconv.Itoa(power) + `,"acked":` + strconv.Itoa(acked) + `,"seconds":` + secs + `}}`
	}
	paths := []string{
		writeReport(t, dir, "unsafe.json", reportUnsafe),
		writeReport(t, dir, "wb-1.json", shard(10, 10, 2000, "600")),
		writeReport(t, dir, "wb-2.json", shard(10, 9, 1800, "600")),
	}
	rows, err := readReports(paths)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].mode != "writeback" || rows[0].cuts != 20 || rows[0].powerCuts != 19 || rows[0].acked != 3800 {
		t.Fatalf("rows %+v: want writeback first, its two shards summed", rows)
	}
	var b strings.Builder
	printTable(&b, rows)
	got := b.String()
	want := `| mode      | fs   | workload    | cuts | power cuts | acked records | lost acked | fsck errors | violations | cuts/min | not checked |
|:----------|:-----|:------------|-----:|-----------:|--------------:|-----------:|------------:|-----------:|---------:|------------:|
| writeback | ext4 | fsyncstress |   20 |         19 |          3800 |          0 |           0 |          0 |     1.00 |           0 |
| unsafe    | ext4 | fsyncstress |   10 |          9 |          1500 |        212 |           2 |          8 |     2.00 |           0 |
| all       | -    | -           |   30 |         28 |          5300 |        212 |           2 |          8 |     1.20 |           0 |
workload fsyncstress, policy random-subset; cuts/min over each campaign's whole run (its format and calibration boots included)
1 crashed file systems did not mount (counted as violations)
`
	if got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}

	// Another file system or workload is a row of its own.
	xfs := strings.Replace(shard(5, 5, 100, "60"), `"workload":"fsyncstress"`, `"workload":"sqlite-wal","fs":"xfs"`, 1)
	rows, err = readReports(append(slices.Clone(paths), writeReport(t, dir, "xfs.json", xfs)))
	if err != nil || len(rows) != 3 || rows[1].fs != "xfs" || rows[1].workload != "sqlite-wal" || rows[1].cuts != 5 || rows[0].cuts != 20 {
		t.Errorf("rows with an xfs report: %+v, %v", rows, err)
	}

	// A missing or foreign report is named; the readable ones still make
	// rows.
	rows, err = readReports([]string{paths[0], filepath.Join(dir, "none.json"), writeReport(t, dir, "x.json", `{"disks":[]}`)})
	if err == nil || !strings.Contains(err.Error(), "none.json") || !strings.Contains(err.Error(), "x.json") || len(rows) != 1 {
		t.Errorf("readReports with bad reports = %+v, %v", rows, err)
	}
	// Reports of another schema, or shards written by different flushvm
	// builds, are not added up.
	for _, body := range []string{strings.Replace(reportUnsafe, `"schema":3`, `"schema":2`, 1),
		strings.Replace(reportUnsafe, `"flushvm_version":"v1"`, `"flushvm_version":"v2"`, 1)} {
		_, err := readReports([]string{paths[1], writeReport(t, dir, "other.json", body)})
		if err == nil || !strings.Contains(err.Error(), "other.json") {
			t.Errorf("readReports added up %s: %v", body[:60], err)
		}
	}
}

func TestJudgeCampaign(t *testing.T) {
	modes := []campaignMode{{"writeback", 2}, {"unsafe", 1}}
	ok := []tableRow{{mode: "writeback", cuts: 2}, {mode: "unsafe", cuts: 1, violations: 1, lostAcked: 5, policy: "lose-all"}}
	tests := []struct {
		name     string
		statuses []int
		rows     []tableRow
		readErr  error
		want     int
		says     string
	}{
		{"as expected", []int{0, 1}, ok, nil, 0, "the oracle can fail"},
		{"safe mode violates", []int{1, 1}, []tableRow{{mode: "writeback", cuts: 2, violations: 1}, ok[1]}, nil, 1, "cache=writeback: FAIL"},
		{"oracle never failed", []int{0, 0}, []tableRow{ok[0], {mode: "unsafe", cuts: 1, policy: "random-subset"}}, nil, 1, "never failed"},
		{"keep-all loses nothing", []int{0, 0}, []tableRow{ok[0], {mode: "unsafe", cuts: 1, policy: "keep-all"}}, nil, 0, "as they may"},
		{"no report", []int{3, 1}, ok[1:], errors.New("no report"), 3, "left no report"},
		{"could not run", []int{0, 3}, []tableRow{ok[0], {mode: "unsafe"}}, nil, 3, "cache=unsafe: the campaign could not run"},
		{"a buggy workload caught", []int{1, 1}, []tableRow{{mode: "writeback", cuts: 2, violations: 2, workload: "rename-no-dirsync", systematic: true}, ok[1]},
			nil, 0, "2 of 2 states violated durability"},
		{"a buggy workload not caught", []int{0, 1}, []tableRow{{mode: "writeback", cuts: 2, workload: "create-no-dirsync", systematic: true}, ok[1]},
			nil, 1, "create-no-dirsync: no state lost an acknowledged record"},
		{"unchecked cuts", []int{3, 1}, []tableRow{{mode: "writeback", cuts: 2, errors: 1}, ok[1]}, nil, 3, "1 of 2 cuts could not be checked"},
	}
	for _, tt := range tests {
		var b strings.Builder
		if got := judgeCampaign(&b, modes, tt.statuses, tt.rows, tt.readErr); got != tt.want || !strings.Contains(b.String(), tt.says) {
			t.Errorf("%s: judgeCampaign = %d, said %q; want %d, saying %q", tt.name, got, b.String(), tt.want, tt.says)
		}
	}
}

func TestParseSlurmFlags(t *testing.T) {
	tests := []struct {
		args  []string
		want  slurmFlags
		rest  []string
		error string
	}{
		{[]string{"--shards", "4", "--disk-size", "32M", "--shared=/s", "--local-cluster", "--workload", "w"},
			slurmFlags{shards: 4, shared: "/s", local: true}, []string{"--disk-size", "32M", "--workload", "w"}, ""},
		{[]string{"--sbatch-arg=--partition=p", "--sbatch-arg", "--time=1:00:00", "--seed", "1"},
			slurmFlags{shards: 2, shared: "build/crashtest-slurm", sbatch: []string{"--partition=p", "--time=1:00:00"}}, []string{"--seed", "1"}, ""},
		{[]string{"--shards", "0"}, slurmFlags{}, nil, "want 1..10000"},
		{[]string{"--shards"}, slurmFlags{}, nil, "needs a value"},
		{[]string{"--shard", "1/2"}, slurmFlags{}, nil, "set per shard"},
		{[]string{"--mode", "random"}, slurmFlags{}, nil, "is systematic"},
	}
	for _, tt := range tests {
		f, rest, err := parseSlurmFlags(tt.args)
		if tt.error != "" {
			if err == nil || !strings.Contains(err.Error(), tt.error) {
				t.Errorf("%q: %v, want %q", tt.args, err, tt.error)
			}
			continue
		}
		if err != nil || !slices.Equal(rest, tt.rest) || f.shards != tt.want.shards || f.shared != tt.want.shared ||
			f.local != tt.want.local || !slices.Equal(f.sbatch, tt.want.sbatch) {
			t.Errorf("%q: %+v %q %v; want %+v %q", tt.args, f, rest, err, tt.want, tt.rest)
		}
	}
}
