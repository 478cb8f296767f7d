package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name, stat, wantName, wantState string
		wantTicks                       uint64
		wantCPU                         int
		ok                              bool
	}{
		{"plain", "12640 (cat) R 12637 12637 11570 0 -1 4194304 103 0 0 0 7 5 0 0 20 0 1 0 1323177 3133440 390 18446744073709551615 1 2 3 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0", "cat", "R", 12, 1, true},
		{"name with spaces and parens", "7 (vcpu (0) x) S 1 1 1 0 -1 0 0 0 0 0 300 20 0 0 20 0 1 0 5 6 7 8 1 2 3 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0", "vcpu (0) x", "S", 320, 0, true},
		{"truncated", "7 (x) S 1 1 1", "", "", 0, 0, false},
		{"no name", "7 x S 1", "", "", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, state, ticks, cpu, ok := parseStat(tt.stat)
			if ok != tt.ok || name != tt.wantName || state != tt.wantState || ticks != tt.wantTicks || cpu != tt.wantCPU {
				t.Errorf("parseStat = %q %q %d %d %v, want %q %q %d %d %v", name, state, ticks, cpu, ok,
					tt.wantName, tt.wantState, tt.wantTicks, tt.wantCPU, tt.ok)
			}
		})
	}
}

func TestStackTop(t *testing.T) {
	p := filepath.Join(t.TempDir(), "stack")
	stack := "[<0>] kvm_vcpu_block+0x4a/0xb0 [kvm]\n[<0>] kvm_arch_vcpu_ioctl_run+0x1a2/0x5f0 [kvm]\n[<0>] kvm_vcpu_ioctl+0x27b/0x6c0 [kvm]\n"
	if err := os.WriteFile(p, []byte(stack), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		n    int
		want string
	}{
		{1, "kvm_vcpu_block"},
		{2, "kvm_vcpu_block<kvm_arch_vcpu_ioctl_run"},
		{9, "kvm_vcpu_block<kvm_arch_vcpu_ioctl_run<kvm_vcpu_ioctl"},
	}
	for _, tt := range tests {
		if got := stackTop(p, tt.n); got != tt.want {
			t.Errorf("stackTop(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
	if got := stackTop(filepath.Join(t.TempDir(), "none"), 3); got != "" {
		t.Errorf("stackTop of a missing file = %q, want empty", got)
	}
}

// TestSnapshotListsThisProcess runs the snapshot on the test's own host:
// the test binary is a user process, so its threads must be listed.
func TestSnapshotListsThisProcess(t *testing.T) {
	s := snapshot(3)
	if !strings.HasPrefix(s, "uptime ") || !strings.Contains(s, ", run 3, load ") {
		t.Fatalf("snapshot header: %q", strings.SplitN(s, "\n", 2)[0])
	}
	me := filepath.Base(os.Args[0])
	if len(me) > 15 {
		me = me[:15] // the kernel's comm is at most 15 bytes
	}
	if !strings.Contains(s, " "+me+" ") {
		t.Errorf("snapshot does not list this process (%s):\n%s", me, s)
	}
}
