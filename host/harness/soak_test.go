package harness

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/protocol"
)

func TestClassifySoak(t *testing.T) {
	const initOK = "flushvm-init: kernel x\nSOAK fio ok\nflushvm-init: exit status 0\n"
	tests := []struct {
		name   string
		vmm    string
		r      Result
		want   SoakOutcome
		stalls int
	}{
		{"pass", "flushvm", Result{Output: []byte(initOK)}, SoakPass, 0},
		{"pass after a kick", "flushvm", Result{Output: []byte(initOK +
			"flushvm: watchdog: vCPU 0: no exit for at least 15s with vectors [236] requested; kicked it (x)\n")}, SoakPass, 1},
		{"qemu pass, isa-debug-exit status", "qemu", Result{Status: 1, Output: []byte(initOK)}, SoakPass, 0},
		{"fio failed", "flushvm", Result{Status: 10, Output: []byte("SOAK fio failed: status 1\nflushvm-init: exit status 10\n")}, SoakWorkload, 0},
		{"silent reset", "qemu", Result{Output: []byte("flushvm-init: kernel x\n")}, SoakCrash, 0},
		{"triple fault report", "flushvm", Result{Status: 101, Output: []byte("flushvm-init: kernel x\n" +
			"flushvm: guest crashed (exit status 101): vCPU 0 triple fault (KVM_EXIT_SHUTDOWN): RIP 0xfff0\n")}, SoakCrash, 0},
		{"watchdog report", "flushvm", Result{Status: 102, Output: []byte(
			"flushvm: guest hung (exit status 102): vCPU 0 made no progress for 1m0s: RIP 0x1\n")}, SoakHang, 0},
		{"guest's own 101 is no crash report", "flushvm", Result{Status: 101, Output: []byte("flushvm-init: exit status 101\n")}, SoakWorkload, 0},
		{"timeout", "flushvm", Result{Err: errors.New("run 3 in L1: /bin/sh: timed out after 180 s")}, SoakHang, 0},
		{"monitor failed", "flushvm", Result{Err: errors.New("run 3 in L1: start: no such file")}, SoakError, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := classifySoak(3, tc.r, tc.vmm, protocol.L1VMRunReturn{})
			if b.Outcome != tc.want || b.Stalls != tc.stalls {
				t.Errorf("outcome %s, %d stalls; want %s, %d (detail %q)", b.Outcome, b.Stalls, tc.want, tc.stalls, b.Detail)
			}
			if (b.Outcome == SoakPass) != (b.Detail == "") {
				t.Errorf("detail %q for outcome %s", b.Detail, b.Outcome)
			}
		})
	}
}

func TestClassifySoakNamesL1State(t *testing.T) {
	ret := protocol.L1VMRunReturn{Addr: 0xffffffffc04b320c, Symbol: "__svm_vcpu_run+0x9c"}
	r := Result{Status: 102, Output: []byte("flushvm: guest hung (exit status 102): vCPU 0 made no progress for 1m0s: " +
		"RIP 0xffffffffc04b320c RSP 0xff564bbac0583a00 CR3 0x5e42c000\n")}
	b := classifySoak(3, r, "flushvm", ret)
	if b.Outcome != SoakHang || !strings.Contains(b.Detail, "holds L1's own registers") {
		t.Errorf("outcome %s, detail %q: want a hang named as L1's registers", b.Outcome, b.Detail)
	}
	if b := classifySoak(3, r, "flushvm", protocol.L1VMRunReturn{Addr: ret.Addr + 1}); strings.Contains(b.Detail, "L1's own") {
		t.Errorf("a hang elsewhere named as L1's registers: %q", b.Detail)
	}
}

func TestSoakCommand(t *testing.T) {
	o := SoakOptions{VMM: "both", Cache: "writeback,writethrough", CPUs: []int{2, 1}, Append: "pci=nomsi"}.withDefaults()
	tests := []struct {
		boot      int
		want      []string
		wantCache string
	}{
		{0, []string{"/tmp/qemu/qemu-system-x86_64", "'-accel' 'kvm'", "'-smp' '2'", "cache=writeback'", "pci=nomsi"}, "writeback"},
		{1, []string{"'/job/flushvm' 'run' '--watchdog' '1m0s'", "'--cpus' '2'", "cache=writeback'", "pci=nomsi"}, "writeback"},
		{2, []string{"qemu-system-x86_64", "'-smp' '2'", "cache=writethrough'"}, "writethrough"},
		{3, []string{"/job/flushvm", "'--cpus' '2'", "cache=writethrough'"}, "writethrough"},
		{4, []string{"qemu-system-x86_64", "'-smp' '1'", "cache=writeback'"}, "writeback"},
		{7, []string{"/job/flushvm", "'--cpus' '1'", "cache=writethrough'"}, "writethrough"},
	}
	for _, tc := range tests {
		cmd := o.command(tc.boot)
		for _, w := range tc.want {
			if !strings.Contains(cmd, w) {
				t.Errorf("boot %d: command lacks %q:\n%s", tc.boot, w, cmd)
			}
		}
		if got := o.cache(tc.boot); got != tc.wantCache {
			t.Errorf("boot %d: cache %s, want %s", tc.boot, got, tc.wantCache)
		}
	}
	o.Harness.Watchdog = 4 * time.Second
	if cmd := o.command(1); !strings.Contains(cmd, "'--watchdog' '4s'") {
		t.Errorf("a soak with Harness.Watchdog 4s runs flushvm without it:\n%s", cmd)
	}
}

func TestWithWatchdog(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		run  Run
		want string
	}{
		{"added", Options{}, Run{Args: []string{"--kernel", "k"}}, "--watchdog 1m0s --kernel k"},
		{"own bound kept", Options{}, Run{Args: []string{"--watchdog=5s", "--kernel", "k"}}, "--watchdog=5s --kernel k"},
		{"chosen bound", Options{Watchdog: 30 * time.Second}, Run{Args: []string{"--kernel", "k"}}, "--watchdog 30s --kernel k"},
		{"off", Options{Watchdog: -1}, Run{Args: []string{"--kernel", "k"}}, "--kernel k"},
		{"not a run", Options{}, Run{Subcommand: SubCrashtest, Args: []string{"--cuts", "1"}}, "--cuts 1"},
	}
	for _, tc := range tests {
		if got := strings.Join(tc.opts.withWatchdog(tc.run), " "); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// fakeL1 stands in for Execute: each session runs its runs in order, and
// the L1 dies as it starts any boot listed in dies. Boots are known by the
// index each run's command prints (flushvm-soak: boot N).
type fakeL1 struct {
	dies     map[int]bool
	sessions [][]int // the boots each session was given
}

func (f *fakeL1) execute(_ context.Context, _ Options, runs ...Run) (*Session, error) {
	s := &Session{}
	var given []int
	for _, r := range runs {
		var b int
		cmd := r.Command[len(r.Command)-1]
		if _, err := fmt.Sscanf(cmd[strings.Index(cmd, "flushvm-soak: boot "):], "flushvm-soak: boot %d", &b); err != nil {
			return s, fmt.Errorf("no boot index in %q: %w", cmd, err)
		}
		given = append(given, b)
	}
	f.sessions = append(f.sessions, given)
	for _, b := range given {
		if f.dies[b] {
			return s, errors.New("L1 died: QEMU exited with status 1")
		}
		s.Results = append(s.Results, Result{Output: []byte("flushvm-init: kernel x\nSOAK fio ok\nflushvm-init: exit status 0\n")})
	}
	return s, nil
}

func TestSoakSessionsRunEveryBoot(t *testing.T) {
	tests := []struct {
		name     string
		boots    int
		dies     []int
		sessions [][]int
	}{
		{"no death", 5, nil, [][]int{{0, 1}, {2, 3}, {4}}},
		{"a death restarts at the next boot", 5, []int{0}, [][]int{{0, 1}, {1, 2}, {3, 4}}},
		{"deaths in a row", 4, []int{1, 2}, [][]int{{0, 1}, {2, 3}, {3}}},
		{"the last boot dies", 3, []int{2}, [][]int{{0, 1}, {2}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeL1{dies: map[int]bool{}}
			for _, d := range tc.dies {
				f.dies[d] = true
			}
			rep := &SoakReport{Options: SoakOptions{Boots: tc.boots, SessionBoots: 2}.withDefaults()}
			if err := rep.sessions(context.Background(), f.execute, Options{}); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(f.sessions) != fmt.Sprint(tc.sessions) {
				t.Errorf("sessions ran boots %v, want %v", f.sessions, tc.sessions)
			}
			if len(rep.Boots) != tc.boots || rep.Failures() != len(tc.dies) {
				t.Fatalf("%d boots, %d failed; want %d, %d", len(rep.Boots), rep.Failures(), tc.boots, len(tc.dies))
			}
			for i, b := range rep.Boots {
				if b.Index != i || (b.Outcome == SoakL1) != f.dies[i] {
					t.Errorf("boot %d: index %d, outcome %s", i, b.Index, b.Outcome)
				}
			}
		})
	}
}
