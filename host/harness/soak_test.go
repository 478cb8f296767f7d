package harness

import (
	"errors"
	"strings"
	"testing"
	"time"
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
			b := classifySoak(3, tc.r, tc.vmm)
			if b.Outcome != tc.want || b.Stalls != tc.stalls {
				t.Errorf("outcome %s, %d stalls; want %s, %d (detail %q)", b.Outcome, b.Stalls, tc.want, tc.stalls, b.Detail)
			}
			if (b.Outcome == SoakPass) != (b.Detail == "") {
				t.Errorf("detail %q for outcome %s", b.Detail, b.Outcome)
			}
		})
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
