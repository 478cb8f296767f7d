package main

import (
	"testing"

	"github.com/flushvm/flushvm/guest/internal/pid1"
)

func TestWantHoldVM(t *testing.T) {
	tests := []struct {
		cmdline string
		want    bool
	}{
		{"console=ttyS0 quiet", true},
		{"console=ttyS0 flushvm.l1_hold_vm=0", false},
		{"flushvm.l1_hold_vm=1", true},
		{"flushvm.l1_hold_vm", true},
		{"kvm_amd.npt=0 flushvm.l1_hold_vm=0 loglevel=3", false},
	}
	for _, tt := range tests {
		if got := wantHoldVM(pid1.ParseCmdline(tt.cmdline)); got != tt.want {
			t.Errorf("wantHoldVM(%q) = %v, want %v", tt.cmdline, got, tt.want)
		}
	}
}
