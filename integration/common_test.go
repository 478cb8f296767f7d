package integration

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flushvm/flushvm/host/harness"
)

var (
	artifactsOnce sync.Once
	artifacts     *harness.Artifacts
	artifactsErr  error
)

// prepare fetches the kernel and builds the test initramfs once per test
// binary.
func prepare(t *testing.T) *harness.Artifacts {
	t.Helper()
	if testing.Short() {
		t.Skip("boots Linux guests; skipped with -short")
	}
	artifactsOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		artifacts, artifactsErr = harness.Prepare(ctx)
	})
	if artifactsErr != nil {
		t.Fatalf("guest artifacts: %v", artifactsErr)
	}
	return artifacts
}

// boot is one flushvm run in a session, with the checks on its result.
type boot struct {
	name  string
	args  []string
	check func(t *testing.T, r harness.Result)
}

// session runs every boot in one harness session (one L1 boot when
// nested), names each guest boot in the log, then runs each boot's checks
// as a subtest.
func session(t *testing.T, boots []boot) {
	t.Helper()
	const perRun = 4 * time.Minute
	runs := make([]harness.Run, len(boots))
	for i, b := range boots {
		runs[i] = harness.Run{Args: b.args, Timeout: perRun}
	}
	// L1's boot, then each run's bound and its slack in L1.
	bound := 3*time.Minute + time.Duration(len(runs))*(perRun+time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	s, err := harness.Execute(ctx, harness.Options{Stdout: consoleWriter{}, Log: testLog{t}, Timeout: bound}, runs...)
	if s != nil {
		t.Logf("session: flushvm ran %s (%s); wall %.1f s", s.Mode, s.Reason, s.Wall.Seconds())
		if s.Mode == harness.Nested {
			t.Logf("session: one QEMU TCG L1 boot reached /init after %.1f s wall (L1 uptime %s); L1's kvm_amd resumes after VMRUN at %s",
				s.L1Boot.Seconds(), s.L1Uptime, s.L1VMRunReturn)
			// The retry of a guest reported holding L1's registers needs
			// this address; without it such a hang would fail the run.
			if s.L1VMRunReturn.Addr == 0 {
				t.Errorf("L1 recorded no address for kvm_amd's return from VMRUN; L1 console:\n%s", s.Console)
			}
		}
	}
	if err != nil {
		if s != nil && s.Console != "" {
			t.Logf("L1 console (end):\n%s", s.Console)
		}
		t.Fatalf("harness: %v", err)
	}
	failed := false
	defer func() {
		if failed && s.Console != "" {
			t.Logf("L1 console (end):\n%s", s.Console)
		}
	}()
	for i, b := range boots {
		r := s.Results[i]
		where := "directly"
		if s.Mode == harness.Nested {
			where = "nested in L1"
		}
		t.Logf("guest boot %d/%d %q: flushvm run %s (%s): exit status %d after %.1f s%s",
			i+1, len(boots), b.name, strings.Join(b.args, " "), where, r.Status, r.Duration.Seconds(), initUptime(r.Output))
		if !t.Run(b.name, func(t *testing.T) {
			if r.Err != nil {
				t.Fatalf("%v; output:\n%s", r.Err, r.Output)
			}
			b.check(t, r)
		}) {
			failed = true
		}
	}
}

var uptimeRE = regexp.MustCompile(`uptime ([0-9.]+) s at /init`)

// initUptime extracts the guest's uptime at /init from its console.
func initUptime(out []byte) string {
	m := uptimeRE.FindSubmatch(out)
	if m == nil {
		return ""
	}
	return "; guest uptime at /init " + string(m[1]) + " s"
}

var machineRE = regexp.MustCompile(`flushvm-init: kernel (\S+), (\d+) CPUs, (\d+) MiB memory`)

// machine parses the /init machine line: kernel release, CPUs, MiB.
func machine(t *testing.T, out []byte) (string, int, int) {
	t.Helper()
	m := machineRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("guest never printed its machine line; console:\n%s", out)
	}
	cpus, _ := strconv.Atoi(string(m[2]))
	mem, _ := strconv.Atoi(string(m[3]))
	return string(m[1]), cpus, mem
}

// cmdline is the guest kernel command line for a workload.
func cmdline(workload string) string {
	return "console=ttyS0 panic=-1 quiet flushvm.run=" + workload
}

// testLog is a harness Options.Log that puts the harness's own lines in
// the test's log: above all a retried session's cause and the failed
// attempt's L1 console, which would otherwise leave nothing but a longer
// wall time.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

// consoleWriter shows the guests' consoles on stderr when
// FLUSHVM_TEST_CONSOLE is set; each run's output is kept in its Result
// either way and printed when a check fails.
type consoleWriter struct{}

func (consoleWriter) Write(p []byte) (int, error) {
	if os.Getenv("FLUSHVM_TEST_CONSOLE") != "" {
		os.Stderr.Write(p)
	}
	return len(p), nil
}
