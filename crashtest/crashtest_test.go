package crashtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/internal/jsonschema"
	"github.com/flushvm/flushvm/protocol"
)

// fakeGuest stands in for `flushvm run` with flushvm's guest image: it
// follows the guest's console conventions and keeps its "file system" in
// the disk image, so the campaign's plumbing (template copies, cut
// points, acknowledgements, checker verdicts) is exercised without a VM.
//
// The image holds a line "fs <durable records>" after mkfs. The workload
// writes calWrites writes and calFlushes flushes; each flush makes the
// records acknowledged so far durable, unless the cache mode is unsafe.
type fakeGuest struct {
	mu sync.Mutex
	// silentOnce makes the first boot of that mode end without output
	// (an early guest crash).
	silentOnce map[string]bool
	// fail makes every boot of that mode end with status 1.
	fail map[string]bool
	// crashOnce makes the first boot of that mode crash after its /init
	// started: it scribbles over the disk and resets (status 0) without
	// reporting an exit status.
	crashOnce map[string]bool
	// hangOnce makes the first boot of that mode hang until its time
	// bound.
	hangOnce map[string]bool
	boots    []string
}

const (
	fakeWrites  = 200
	fakeFlushes = 50
	fakeRecords = 40 // acknowledged per flush interval: one per writer
)

// specKeys returns a --disk SPEC's keys and values.
func specKeys(spec string) map[string]string {
	kv := map[string]string{}
	kvs, _ := protocol.SplitDiskSpec(spec)
	for _, e := range kvs {
		kv[e.Key] = e.Value
	}
	return kv
}

func (g *fakeGuest) Boot(ctx context.Context, args []string) (int, []byte, error) {
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	appendLine := fs.String("append", "", "")
	disks := fs.StringArray("disk", nil, "")
	cut := fs.String("power-cut", "", "")
	stats := fs.String("stats", "", "")
	fs.String("kernel", "", "")
	fs.String("initrd", "", "")
	fs.String("mem", "", "")
	fs.String("cpus", "", "")
	fs.String("seed", "", "")
	fs.Duration("watchdog", 0, "")
	if err := fs.Parse(args); err != nil {
		return 2, nil, nil
	}
	spec := func(i int) map[string]string { return specKeys((*disks)[i]) }
	img, cache := spec(0)["path"], spec(0)["cache"]
	mode := ""
	for _, w := range strings.Fields(*appendLine) {
		if v, ok := strings.CutPrefix(w, "flushvm.run="); ok {
			mode = v
		}
	}
	var job protocol.Job
	if len(*disks) > 1 {
		b, _ := os.ReadFile(spec(1)["path"])
		var err error
		if job, err = protocol.ParseJob(b); err != nil {
			return 0, nil, fmt.Errorf("%q: %w", *disks, err)
		}
	} else if mode != "mkfs" {
		return 124, []byte("flushvm-init: no job disk\n"), nil
	}
	g.mu.Lock()
	g.boots = append(g.boots, mode)
	silent := g.silentOnce[mode]
	delete(g.silentOnce, mode)
	fail := g.fail[mode]
	crash := g.crashOnce[mode]
	delete(g.crashOnce, mode)
	hang := g.hangOnce[mode]
	delete(g.hangOnce, mode)
	g.mu.Unlock()
	if hang {
		<-ctx.Done()
		return 0, []byte("flushvm-init: kernel 6.1\n"), ctx.Err()
	}
	if silent {
		return 0, []byte("flushvm: vCPU 0 triple-faulted\n"), nil
	}
	var out bytes.Buffer
	out.WriteString("flushvm-init: kernel 6.1, 2 CPUs\n")
	if crash {
		if !strings.HasPrefix(mode, "check:") { // a checker only reads
			os.WriteFile(img, []byte("garbage"), 0o644)
		}
		out.WriteString("ACK fsyncstress 0 0\nKernel panic - not syncing\n")
		return 0, out.Bytes(), nil
	}
	if fail {
		return 1, out.Bytes(), nil
	}
	status, err := g.run(mode, img, cache, *cut, *stats, job, &out)
	if status != protocol.ExitPowerCut {
		fmt.Fprintf(&out, "flushvm-init: exit status %d\n", status)
	}
	return status, out.Bytes(), err
}

// run plays the guest's /init mode.
func (g *fakeGuest) run(mode, img, cache, cut, stats string, job protocol.Job, out *bytes.Buffer) (int, error) {
	switch {
	case mode == "mkfs":
		if err := os.WriteFile(img, []byte("fs 0\n"), 0o644); err != nil {
			return 0, err
		}
		out.WriteString("flushvm-init: mkfs /dev/vda: ok\n")
		return 0, nil
	case strings.HasPrefix(mode, "crash:"):
		b, err := os.ReadFile(img)
		if err != nil || !bytes.HasPrefix(b, []byte("fs ")) {
			out.WriteString("mount failed: not formatted\n")
			return 126, nil
		}
		limitW, limitF := fakeWrites+1, fakeFlushes+1
		if k, v, ok := strings.Cut(cut, "="); ok {
			n, _ := strconv.Atoi(v)
			if k == "writes" {
				limitW = n
			} else {
				limitF = n
			}
		}
		// Each flush interval: 4 writes (one record per writer), a
		// flush, then the 4 acknowledgements.
		durable, acked, writes, flushes := 0, 0, 0, 0
		for flushes < fakeFlushes {
			if writes+4 >= limitW || flushes+1 >= limitF {
				if cache != "unsafe" {
					os.WriteFile(img, fmt.Appendf(nil, "fs %d\n", durable), 0o644)
				}
				writeFakeStats(stats, writes, flushes, true)
				fmt.Fprintf(out, "flushvm: disk 0: power cut by --power-cut %s\n", cut)
				out.WriteString("ACK fsyncstress 0 ") // cut mid-line
				return protocol.ExitPowerCut, nil
			}
			writes += 4
			flushes++
			for w := 0; w < 4; w++ {
				fmt.Fprintf(out, "ACK fsyncstress %d %d\n", w, acked/4)
				acked++
			}
			durable = acked
		}
		if cache != "unsafe" {
			os.WriteFile(img, fmt.Appendf(nil, "fs %d\n", durable), 0o644)
		}
		writeFakeStats(stats, writes, flushes, false)
		return 0, nil
	case strings.HasPrefix(mode, "check:"):
		b, err := os.ReadFile(img)
		if err != nil || !bytes.HasPrefix(b, []byte("fs ")) {
			out.WriteString("flushvm-check: mount failed: bad superblock\nflushvm-check: fsck status 8\n")
			return 1, nil
		}
		durable, _ := strconv.Atoi(strings.TrimSpace(string(b[3:])))
		acked := job.States[0]
		lost := max(0, acked-durable)
		fmt.Fprintf(out, "flushvm-check: fsyncstress status %d\nCHECK fsyncstress acked=%d lost=%d extra=%d\nflushvm-check: fsck status 0\n",
			min(lost, 1), acked, lost, max(0, durable-acked))
		return min(lost, 1), nil
	}
	return 124, nil
}

func writeFakeStats(path string, writes, flushes int, cut bool) {
	d := map[string]any{"path": "x", "writes": writes, "host_syncs": flushes}
	if cut {
		d["power_cut"] = map[string]any{"cause": "test", "report": map[string]any{"policy": "lose-all", "unstable_writes": 1, "lost": 1}}
	}
	b, _ := json.Marshal(map[string]any{"disks": []any{d}})
	os.WriteFile(path, b, 0o644)
}

// testCampaign returns a validated campaign over fake kernel and initrd
// files, with the given extra flags.
func testCampaign(t *testing.T, extra ...string) *Campaign {
	t.Helper()
	dir := t.TempDir()
	k, i := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd")
	os.WriteFile(k, []byte("k"), 0o644)
	os.WriteFile(i, []byte("i"), 0o644)
	f := NewFlags()
	args := append([]string{"--mode", "random", "--kernel", k, "--initrd", i, "--disk-size", "64M", "--workload", "fsyncstress",
		"--policy", "lose-all", "--seed", "10", "--cuts", "1", "--dir", filepath.Join(dir, "work")}, extra...)
	if err := f.FS.Parse(args); err != nil {
		t.Fatal(err)
	}
	c, err := f.Campaign()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCrashtestCampaign(t *testing.T) {
	tests := []struct {
		name       string
		flags      []string
		guest      *fakeGuest
		wantCuts   []int
		wantViol   int
		wantErrors int
		wantStatus int
	}{
		{name: "writeback keeps every acknowledgement", flags: []string{"--cuts", "6"},
			wantCuts: []int{0, 1, 2, 3, 4, 5}, wantStatus: protocol.ExitOK},
		{name: "unsafe loses acknowledged records", flags: []string{"--cuts", "4", "--cache", "unsafe"},
			wantCuts: []int{0, 1, 2, 3}, wantViol: 4, wantStatus: protocol.CrashtestViolations},
		{name: "shard 2 of 3 runs cuts 1, 4", flags: []string{"--cuts", "7", "--shard", "2/3"},
			wantCuts: []int{1, 4}, wantStatus: protocol.ExitOK},
		{name: "an early guest crash is retried", flags: []string{"--cuts", "1"},
			guest:    &fakeGuest{silentOnce: map[string]bool{"crash:fsyncstress": true, "check:fsyncstress": true}},
			wantCuts: []int{0}, wantStatus: protocol.ExitOK},
		{name: "a guest crash mid-run is retried on a fresh copy", flags: []string{"--cuts", "1"},
			guest:    &fakeGuest{crashOnce: map[string]bool{"mkfs": true, "crash:fsyncstress": true, "check:fsyncstress": true}},
			wantCuts: []int{0}, wantStatus: protocol.ExitOK},
		{name: "a hung boot is retried", flags: []string{"--cuts", "1", "--boot-timeout", "100ms"},
			guest:    &fakeGuest{hangOnce: map[string]bool{"crash:fsyncstress": true, "check:fsyncstress": true}},
			wantCuts: []int{0}, wantStatus: protocol.ExitOK},
		{name: "a failing checker boot is an error, not a pass", flags: []string{"--cuts", "2"},
			guest:    &fakeGuest{fail: map[string]bool{"check:fsyncstress": true}},
			wantCuts: []int{0, 1}, wantErrors: 2, wantStatus: protocol.CrashtestFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := testCampaign(t, tc.flags...)
			g := tc.guest
			if g == nil {
				g = &fakeGuest{}
			}
			var progressOut bytes.Buffer
			rep, err := c.Run(context.Background(), g, NewProgress(&progressOut, c.ShardCuts()), nil)
			if err != nil {
				t.Fatalf("run: %v\nprogress:\n%s", err, progressOut.String())
			}
			var got []int
			for _, r := range rep.Results {
				got = append(got, r.Cut)
				if r.Seed != 10+uint64(r.Cut) {
					t.Errorf("cut %d seed %d, want %d", r.Cut, r.Seed, 10+r.Cut)
				}
				if r.Error == "" && r.FsckStatus != 0 {
					t.Errorf("cut %d fsck %d", r.Cut, r.FsckStatus)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.wantCuts) {
				t.Errorf("cuts %v, want %v", got, tc.wantCuts)
			}
			s := rep.Summary
			if s.Violations != tc.wantViol || s.Errors != tc.wantErrors || rep.ExitStatus() != tc.wantStatus {
				t.Errorf("violations %d errors %d status %d, want %d %d %d\nresults: %+v", s.Violations, s.Errors,
					rep.ExitStatus(), tc.wantViol, tc.wantErrors, tc.wantStatus, rep.Results)
			}
			if rep.Calibration.Writes != fakeWrites || rep.Calibration.Flushes != fakeFlushes || rep.Calibration.Acks != 4*fakeFlushes {
				t.Errorf("calibration %+v", rep.Calibration)
			}
			if tc.wantViol > 0 {
				f := s.FirstFailure
				if f == nil || f.LostAcked == 0 || !strings.Contains(f.Repro, "--seed "+strconv.FormatUint(f.Seed, 10)) ||
					!strings.Contains(f.Repro, "--at "+f.At) || !strings.Contains(f.Repro, "--mode random") || f.Image == "" {
					t.Errorf("first failure %+v: want lost records, a repro naming its seed and cut point, a kept image", f)
				} else if _, err := os.Stat(f.Image); err != nil {
					t.Errorf("failing cut's image: %v", err)
				}
				if s.Acked == 0 || s.LostAcked != s.Acked {
					t.Errorf("unsafe lose-all: acked %d lost %d, want all lost", s.Acked, s.LostAcked)
				}
			}
			var sum bytes.Buffer
			rep.PrintSummary(&sum)
			if want := map[int]string{protocol.ExitOK: "PASS", protocol.CrashtestViolations: "FAIL", protocol.CrashtestFailed: "INCOMPLETE"}[tc.wantStatus]; !strings.Contains(sum.String(), "result:      "+want) {
				t.Errorf("summary does not say %s:\n%s", want, sum.String())
			}
			if n := strings.Count(progressOut.String(), "crashtest: cut "); n != len(tc.wantCuts) {
				t.Errorf("%d progress lines for %d cuts:\n%s", n, len(tc.wantCuts), progressOut.String())
			}
			// Only a failing cut's files stay in --dir.
			left, _ := filepath.Glob(filepath.Join(c.dir, "cut-*.img"))
			if len(left) != tc.wantViol+tc.wantErrors {
				t.Errorf("images left in --dir: %v", left)
			}
		})
	}
}

func TestAckKeys(t *testing.T) {
	tests := []struct {
		name, out string
		want      []string
	}{
		{"in order", "ACK fsyncstress 0 0\nACK fsyncstress 1 0\nnoise\nACK row 7\n", []string{"fsyncstress 0 0", "fsyncstress 1 0", "row 7"}},
		{"a line cut off by the power cut is no acknowledgement", "ACK fsyncstress 2 0\nACK fsyncstress 2 1", []string{"fsyncstress 2 0"}},
		{"malformed lines are ignored", "ACK \nxACK a\nack b\n", nil},
		{"nothing acknowledged", "rename: starting\n", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ackKeys([]byte(tc.out)); !slices.Equal(got, tc.want) {
				t.Errorf("ackKeys = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestJudge(t *testing.T) {
	tests := []struct {
		name      string
		acked     int
		out       string
		violation bool
		wantErr   bool
	}{
		{"clean", 5, "CHECK fsyncstress acked=5 lost=0 extra=2\nflushvm-check: fsck status 0\n", false, false},
		{"lost records", 5, "CHECK fsyncstress acked=5 lost=2 extra=0\nflushvm-check: fsck status 0\n", true, false},
		{"fsck errors", 5, "CHECK fsyncstress acked=5 lost=0 extra=0\nflushvm-check: fsck status 4\n", true, false},
		{"unmountable", 5, "flushvm-check: mount failed: EUCLEAN\nflushvm-check: fsck status 4\n", true, false},
		{"no superblock left", 5, "flushvm-check: mount failed: EINVAL\nflushvm-check: fsck status 8\n", true, false},
		{"fsck could not run", 5, "CHECK fsyncstress acked=5 lost=0 extra=0\nflushvm-check: fsck status 8\n", false, true},
		{"no CHECK line", 5, "flushvm-check: fsck status 0\n", false, true},
		{"no fsck line", 5, "CHECK fsyncstress acked=5 lost=0 extra=0\n", false, true},
		{"damaged data, nothing acknowledged", 0, "flushvm-check: fsyncstress status 1\nCHECK fsyncstress acked=0 lost=0 extra=0\nflushvm-check: fsck status 0\n", true, false},
		{"checker could not read", 5, "flushvm-check: fsyncstress status 2\nflushvm-check: fsck status 0\n", false, true},
		{"LOST lines without a CHECK line", 5, "LOST a\nflushvm-check: fsyncstress status 1\nLOST b\nflushvm-check: fsck status 0\n", true, false},
		{"a checker without a CHECK line passes", 5, "flushvm-check: fsyncstress status 0\nflushvm-check: fsck status 0\n", false, false},
		{"checker saw other acknowledgements", 5, "CHECK fsyncstress acked=4 lost=0 extra=0\nflushvm-check: fsck status 0\n", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := protocol.CrashtestCheck{Acked: tc.acked}
			judge(&r, "fsyncstress", 0, []byte(tc.out))
			if r.Violation != tc.violation || (r.Error != "") != tc.wantErr {
				t.Errorf("violation %v (%s) error %q, want violation %v error %v", r.Violation, r.Reason, r.Error, tc.violation, tc.wantErr)
			}
		})
	}
}

func TestCutPoint(t *testing.T) {
	cal := protocol.CrashtestCalibration{Writes: 300, Flushes: 40}
	c := testCampaign(t)
	seen := map[protocol.TriggerKind]int{}
	for seed := uint64(0); seed < 200; seed++ {
		a, b := c.cutPoint(seed, cal), c.cutPoint(seed, cal)
		if a != b {
			t.Fatalf("seed %d: %v then %v", seed, a, b)
		}
		limit := cal.Writes
		if a.Kind == protocol.TriggerFlushes {
			limit = cal.Flushes
		}
		if a.N < 1 || a.N > limit {
			t.Fatalf("seed %d: %v outside 1..%d", seed, a, limit)
		}
		seen[a.Kind]++
	}
	if seen[protocol.TriggerWrites] == 0 || seen[protocol.TriggerFlushes] == 0 {
		t.Errorf("cut points %v: want both kinds", seen)
	}
	if p := c.cutPoint(7, protocol.CrashtestCalibration{Writes: 10}); p.Kind != protocol.TriggerWrites {
		t.Errorf("a mode that never flushes got %v", p)
	}
	pinned := testCampaign(t, "--at", "flushes=3")
	if p := pinned.cutPoint(7, cal); p.String() != "flushes=3" {
		t.Errorf("--at flushes=3 gave %v", p)
	}
}

// TestCampaignThatCheckedNothing checks that a campaign whose set-up
// fails (here the format boot, as on a host without a usable KVM) reports
// INCOMPLETE with 0 of N cuts checked, never PASS, in the summary, the
// report's status and the exit status.
func TestCampaignThatCheckedNothing(t *testing.T) {
	for _, mode := range []string{"mkfs", "crash:fsyncstress"} {
		t.Run(mode, func(t *testing.T) {
			c := testCampaign(t, "--cuts", "3")
			g := &fakeGuest{fail: map[string]bool{mode: true}}
			rep, err := c.Run(context.Background(), g, NewProgress(io.Discard, c.ShardCuts()), nil)
			if err == nil {
				t.Fatal("a campaign whose set-up boot failed ran")
			}
			var sum bytes.Buffer
			rep.PrintSummary(&sum)
			if rep.Status != protocol.CrashtestIncomplete || rep.ExitStatus() != protocol.CrashtestFailed ||
				rep.Summary.Planned != 3 || rep.Summary.Checked != 0 ||
				strings.Contains(sum.String(), "PASS") || !strings.Contains(sum.String(), "INCOMPLETE: no violation, but only 0 of 3") {
				t.Errorf("status %q exit %d planned %d checked %d; summary:\n%s", rep.Status, rep.ExitStatus(),
					rep.Summary.Planned, rep.Summary.Checked, sum.String())
			}
			if rep.Schema != protocol.CrashtestSchema || rep.FlushvmVersion == "" {
				t.Errorf("report schema %d version %q", rep.Schema, rep.FlushvmVersion)
			}
		})
	}
}

// TestReportSchema writes the reports of a passing, a violating and an
// incomplete campaign and checks them against the committed schema
// (protocol/schema/crashtest-report.schema.json).
func TestReportSchema(t *testing.T) {
	b, err := os.ReadFile("../protocol/schema/crashtest-report.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	schema, err := jsonschema.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		flags []string
		guest *fakeGuest
		want  string
	}{
		{"passed", []string{"--cuts", "2"}, &fakeGuest{}, protocol.CrashtestPassed},
		{"violations", []string{"--cuts", "2", "--cache", "unsafe"}, &fakeGuest{}, protocol.CrashtestViolated},
		{"incomplete", []string{"--cuts", "2"}, &fakeGuest{fail: map[string]bool{"mkfs": true}}, protocol.CrashtestIncomplete},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := testCampaign(t, tc.flags...)
			rep, _ := c.Run(context.Background(), tc.guest, NewProgress(io.Discard, c.ShardCuts()), nil)
			path := filepath.Join(t.TempDir(), "r.json")
			if err := rep.Write(path); err != nil {
				t.Fatal(err)
			}
			doc, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if errs := schema.Validate(doc); len(errs) > 0 {
				t.Errorf("report does not match its schema:\n%s", strings.Join(errs, "\n"))
			}
			if rep.Status != tc.want {
				t.Errorf("status %q, want %q", rep.Status, tc.want)
			}
		})
	}
}

// TestSystematicResultLine checks the systematic summary's verdict: a pass
// over states that expected no acknowledged record says that no record
// was tested instead of claiming every one survived.
func TestSystematicResultLine(t *testing.T) {
	tests := []struct {
		name     string
		workload string
		status   string
		sum      protocol.CrashtestTotals
		want     string
	}{
		{"records tested", "fsyncstress", protocol.CrashtestPassed, protocol.CrashtestTotals{Checked: 10, Acked: 25},
			"PASS: every acknowledged record survived in all 10 states"},
		{"nothing acknowledged", "fsyncstress", protocol.CrashtestPassed, protocol.CrashtestTotals{Checked: 10},
			"PASS: every file system is clean in all 10 states; none of them expected an acknowledged record"},
		{"a user's keys", "workload.sh 1", protocol.CrashtestPassed, protocol.CrashtestTotals{Checked: 3},
			"PASS: every file system is clean in all 3 states; none of them expected an acknowledged key (all lie before the first acknowledgement), so no key was tested"},
		{"violated", "fsyncstress", protocol.CrashtestViolated, protocol.CrashtestTotals{Checked: 10, Acked: 4, LostAcked: 1, Violations: 1},
			"FAIL: acknowledged data was lost"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &Report{CrashtestReport: protocol.CrashtestReport{Mode: protocol.CrashtestSystematic, Workload: tc.workload,
				Status: tc.status, Summary: tc.sum}}
			var b bytes.Buffer
			r.PrintSummary(&b)
			if !strings.Contains(b.String(), "result:      "+tc.want) {
				t.Errorf("summary does not say %q:\n%s", tc.want, b.String())
			}
		})
	}
}
