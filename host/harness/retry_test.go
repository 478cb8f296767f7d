package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flushvm/flushvm/protocol"
)

func TestL0Failure(t *testing.T) {
	const tf = "flushvm: guest crashed (exit status 101): vCPU 0 triple fault (KVM_EXIT_SHUTDOWN): RIP 0xfff0\n"
	ret := protocol.L1VMRunReturn{Addr: 0xffffffffc052c20c, Symbol: "__svm_vcpu_run+0x9c"}
	hang := func(rip uint64) string {
		return fmt.Sprintf("flushvm: guest hung (exit status 102): vCPU 1 made no progress for 1m15s: RIP %#x RSP 0xff62fc300044fbc0 "+
			"CR3 0x27358000; code at RIP: unreadable\n", rip)
	}
	tests := []struct {
		name string
		s    *Session
		err  error
		want bool
	}{
		{"clean", &Session{Results: []Result{{Output: []byte("flushvm-init: exit status 0\n")}}}, nil, false},
		{"triple fault mid-run", &Session{Results: []Result{{}, {Status: 101, Output: []byte("fio...\n" + tf)}}}, nil, true},
		{"reboot=t on purpose", &Session{Results: []Result{{Status: 101, Output: []byte("[ 1.0] reboot: Restarting system\n" + tf)}}}, nil, false},
		{"kernel panic is not retried", &Session{Results: []Result{{Status: 101, Output: []byte(
			"flushvm: guest crashed (exit status 101): vCPU 0 guest kernel panic (pvpanic): RIP 0x1\n")}}}, nil, false},
		{"guest's own 101", &Session{Results: []Result{{Status: 101, Output: []byte("flushvm-init: exit status 101\n")}}}, nil, false},
		{"L1 died", &Session{}, errors.New("QEMU L1: exit status 1: x"), true},
		{"no status from L1", &Session{}, ErrNoStatus, true},
		{"L1 stuck", &Session{}, fmt.Errorf("QEMU L1: %w: run 3 started 6m0s ago", ErrL1Stuck), true},
		{"other harness error", &Session{}, errors.New("job dir: no space"), false},
		{"hang holding L1's registers", &Session{L1VMRunReturn: ret, Results: []Result{{Status: 102, Output: []byte(hang(ret.Addr))}}}, nil, true},
		{"hang elsewhere", &Session{L1VMRunReturn: ret, Results: []Result{{Status: 102, Output: []byte(hang(ret.Addr + 3))}}}, nil, false},
		{"hang, L1 address unknown", &Session{Results: []Result{{Status: 102, Output: []byte(hang(ret.Addr))}}}, nil, false},
		{"report without status 102", &Session{L1VMRunReturn: ret, Results: []Result{{Status: 0, Output: []byte(hang(ret.Addr))}}}, nil, false},
	}
	for _, tc := range tests {
		if _, got := l0Failure(context.Background(), tc.s, tc.err); got != tc.want {
			t.Errorf("%s: retry %v, want %v", tc.name, got, tc.want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, got := l0Failure(ctx, &Session{}, ErrNoStatus); got {
		t.Error("a cancelled session is not retried")
	}
}

// TestRetriedBound checks that a session failing below flushvm runs again
// up to L0Retries times, restoring its disks before each retry and logging
// each cause, and that other failures are not retried.
func TestRetriedBound(t *testing.T) {
	tests := []struct {
		name     string
		failures int   // how many runs fail below flushvm before one passes
		other    error // the failure of the run after those, if any
		runs     int
		wantErr  bool
	}{
		{"passes", 0, nil, 1, false},
		{"one L1 death", 1, nil, 2, false},
		{"two L1 deaths", 2, nil, 3, false},
		{"L1 dies every time", 10, nil, 1 + L0Retries, true},
		{"a flushvm failure is not retried", 0, errors.New("run 0: bad status"), 1, true},
	}
	for _, tc := range tests {
		var log strings.Builder
		runs, restores := 0, 0
		s := &Session{Mode: Nested}
		err := retried(context.Background(), &log, s, func() error { restores++; return nil }, func() error {
			runs++
			if runs <= tc.failures {
				s.Console = "panic line\nbacktrace line\n"
				return fmt.Errorf("run 0: %w (last console line: x)", ErrNoStatus)
			}
			return tc.other
		})
		if runs != tc.runs || restores != runs-1 || (err != nil) != tc.wantErr {
			t.Errorf("%s: %d runs, %d restores, err %v; want %d runs, err %v", tc.name, runs, restores, err, tc.runs, tc.wantErr)
		}
		if got := strings.Count(log.String(), "L1 died: "); got != runs-1 {
			t.Errorf("%s: %d causes logged for %d retries:\n%s", tc.name, got, runs-1, log.String())
		}
		if got := strings.Count(log.String(), "flushvm-harness: | backtrace line\n"); got != runs-1 {
			t.Errorf("%s: the failed attempt's console logged %d times for %d retries:\n%s", tc.name, got, runs-1, log.String())
		}
	}
}

func TestL1Failed(t *testing.T) {
	nested, direct := &Session{Mode: Nested}, &Session{Mode: Direct}
	tests := []struct {
		name string
		s    *Session
		err  error
		want bool
	}{
		{"L1 died", nested, fmt.Errorf("run 1: %w", ErrNoStatus), true},
		{"L1 stuck", nested, fmt.Errorf("QEMU L1: %w: x", ErrL1Stuck), true},
		{"a run failed", nested, errors.New("run 0: bad status"), false},
		{"direct", direct, ErrNoStatus, false},
		{"no session", nil, ErrNoStatus, false},
	}
	for _, tc := range tests {
		if got := L1Failed(tc.s, tc.err); got != tc.want {
			t.Errorf("%s: L1Failed = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRetryableAndWritableDisks(t *testing.T) {
	if retryable([]Run{{Args: []string{"--kernel", "k"}}, {Command: []string{"/bin/sh"}}}) {
		t.Error("a session with a command (a soak) must not be retried")
	}
	if !retryable([]Run{{Args: []string{"--kernel", "k"}}, {Command: []string{"/bin/sh"}, Rerun: true}}) {
		t.Error("a command marked Rerun is retried with the flushvm runs")
	}
	if retryable([]Run{{Subcommand: SubCrashtest}}) {
		t.Error("a campaign retries its own boots")
	}
	if !retryable([]Run{{Args: []string{"--kernel", "k"}}}) {
		t.Error("flushvm runs are retried")
	}
	got := writableDisks([]string{"--disk", "path=a.img,cache=none", "--disk=path=b.img", "--disk", "path=ro.img,readonly=on", "--kernel", "k"})
	if strings.Join(got, " ") != "a.img b.img" {
		t.Errorf("writable disks %v", got)
	}
}

func TestDiskSnapshotRestores(t *testing.T) {
	t.Setenv("FLUSHVM_CACHE", t.TempDir())
	disk := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(disk, []byte("before"), 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := snapshotDisks([]Run{{Args: []string{"--disk", "path=" + disk}}})
	if err != nil {
		t.Fatal(err)
	}
	defer snap.remove()
	if err := os.WriteFile(disk, []byte("after a crashed run"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := snap.restore(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(disk); string(b) != "before" {
		t.Errorf("restored disk holds %q", b)
	}
}

func TestLogConsoleEnd(t *testing.T) {
	numbered := func(n int) string {
		var b strings.Builder
		for i := 1; i <= n; i++ {
			fmt.Fprintf(&b, "line %d\n", i)
		}
		return b.String()
	}
	for _, tc := range []struct {
		name        string
		console     string
		lines       int    // marked lines logged
		first, last string // the first and last marked lines
	}{
		{"empty", "", 0, "", ""},
		{"short", "a\nb", 2, "flushvm-harness: | a", "flushvm-harness: | b"},
		{"the whole history", numbered(keepLines), keepLines, "flushvm-harness: | line 1", fmt.Sprintf("flushvm-harness: | line %d", keepLines)},
		{"longer is cut at the front", numbered(keepLines + 50), keepLines, "flushvm-harness: | line 51", fmt.Sprintf("flushvm-harness: | line %d", keepLines+50)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			logConsoleEnd(&out, tc.console)
			var marked []string
			for _, l := range strings.Split(strings.TrimRight(out.String(), "\n"), "\n") {
				if strings.HasPrefix(l, "flushvm-harness: | ") {
					marked = append(marked, l)
				}
			}
			if len(marked) != tc.lines {
				t.Fatalf("%d marked lines, want %d:\n%s", len(marked), tc.lines, out.String())
			}
			if tc.lines == 0 {
				if out.Len() != 0 {
					t.Fatalf("an empty console logged %q", out.String())
				}
				return
			}
			if marked[0] != tc.first || marked[len(marked)-1] != tc.last {
				t.Errorf("logged %q .. %q, want %q .. %q", marked[0], marked[len(marked)-1], tc.first, tc.last)
			}
		})
	}
}
