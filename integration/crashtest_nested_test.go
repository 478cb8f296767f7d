package integration

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/host/harness"
	"github.com/flushvm/flushvm/protocol"
)

// TestDebianLinuxCrashtestCampaignsNested runs two small `flushvm
// crashtest` campaigns of Debian guests running fsyncstress on ext4, in one
// harness session (one L1 boot when nested; the campaigns' images on the
// session's scratch disk): cache=writeback with random-subset cuts must
// keep every acknowledged record and leave file systems fsck accepts
// (exit status 0); cache=unsafe with lose-all, its cut placed after the
// workload's first acknowledgements, must lose acknowledged records and
// exit 1 — the oracle can fail. The reports come back with host paths, and
// the failing cut's image and logs, kept by --dir on L1's scratch disk,
// come back to the host directory.
func TestDebianLinuxCrashtestCampaignsNested(t *testing.T) {
	a := prepare(t)
	// The ELF kernel skips the bzImage's self-decompression in each of
	// the session's boots.
	vmlinux, err := a.Kernel.Vmlinux(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// 4 writers x 6 records keep each boot's workload short: the boots,
	// not the records, cost the time (and a 1-vCPU guest boots faster
	// nested).
	common := []string{"--kernel", vmlinux, "--initrd", a.Initramfs, "--disk-size", "32M",
		"--workload", "fsyncstress", "--records", "6", "--cpus", "1", "--boot-timeout", "2m"}
	kept := filepath.Join(dir, "kept")
	wbReport, unsafeReport := filepath.Join(dir, "writeback.json"), filepath.Join(dir, "unsafe.json")
	runs := []harness.Run{
		{Subcommand: harness.SubCrashtest, Args: append(append([]string{}, common...),
			"--cache", "writeback", "--policy", "random-subset", "--cuts", "2", "--seed", "11", "--report", wbReport)},
		// cache=unsafe acknowledges FLUSHes it never performs, so with
		// lose-all every record acknowledged before the cut is lost. A
		// seeded cut could fall before the first acknowledgement; --at
		// places it after the first records (see unsafeCutWrites).
		{Subcommand: harness.SubCrashtest, Args: append(append([]string{}, common...),
			"--cache", "unsafe", "--policy", "lose-all", "--cuts", "1", "--seed", "3",
			"--at", "writes="+strconv.Itoa(unsafeCutWrites), "--report", unsafeReport, "--dir", kept)},
	}
	const bound = 25 * time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	s, err := harness.Execute(ctx, harness.Options{Stdout: consoleWriter{}, Timeout: bound}, runs...)
	if errors.Is(err, harness.ErrNoStatus) && s.Mode == harness.Nested {
		// Rarely the TCG L1 itself dies under a nested guest (its kernel
		// crashed with recursive page faults on its GS base after a
		// nested VM exit, or QEMU just ended; seen twice while this was
		// written). Log it and run the session again.
		t.Logf("L1 died (%v) after %.1f s; console (end):\n%s\nretrying the session once", err, s.Wall.Seconds(), s.Console)
		s, err = harness.Execute(ctx, harness.Options{Stdout: consoleWriter{}, Timeout: bound}, runs...)
	}
	if s != nil {
		t.Logf("session: flushvm crashtest ran %s (%s); wall %.1f s", s.Mode, s.Reason, s.Wall.Seconds())
		if s.Mode == harness.Nested {
			t.Logf("session: one QEMU TCG L1 boot reached /init after %.1f s wall (L1 uptime %s)", s.L1Boot.Seconds(), s.L1Uptime)
		}
	}
	if err != nil {
		if s != nil && s.Console != "" {
			t.Logf("L1 console (end):\n%s", s.Console)
		}
		t.Fatalf("harness: %v", err)
	}
	read := func(t *testing.T, path string, r harness.Result) protocol.CrashtestReport {
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
		if strings.Contains(string(b), "/job/") {
			t.Errorf("--report names L1 paths: %s", b)
		}
		if strings.Contains(string(r.Output), "/job/in/") {
			t.Errorf("the campaign's output names L1 paths of its inputs:\n%s", r.Output)
		}
		t.Logf("calibration: %d writes, %d flushes, %d acknowledgements", rep.Calibration.Writes, rep.Calibration.Flushes, rep.Calibration.Acks)
		for _, c := range rep.Results {
			t.Logf("cut %d at %s: power cut %v, %d acknowledged, %d lost, fsck %d %s%s", c.Cut, c.At, c.PowerCut, c.Acked, c.LostAcked, c.FsckStatus, c.Reason, c.Error)
		}
		return rep
	}
	t.Run("writeback_random-subset_keeps_every_acknowledged_record", func(t *testing.T) {
		r := s.Results[0]
		rep := read(t, wbReport, r)
		sum := rep.Summary
		if r.Status != 0 || sum.Cuts != 2 || sum.Errors != 0 || sum.Violations != 0 || sum.LostAcked != 0 ||
			sum.FsckErrors != 0 || sum.MountFailures != 0 {
			t.Fatalf("exit status %d, summary %+v: want status 0, 2 cuts checked, no violation, no fsck error; output:\n%s", r.Status, sum, r.Output)
		}
		if sum.PowerCuts == 0 {
			t.Errorf("no cut cut the power (every workload ended before its cut point): nothing was tested")
		}
	})
	t.Run("unsafe_lose-all_loses_acknowledged_records", func(t *testing.T) {
		r := s.Results[1]
		rep := read(t, unsafeReport, r)
		sum := rep.Summary
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
	})
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
