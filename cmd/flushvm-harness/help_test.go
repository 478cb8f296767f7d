package main

import "testing"

func TestPassThroughHelp(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want bool
	}{
		{"campaign", []string{"--modes", "unsafe:1", "--help"}, true},
		{"crashtest", []string{"-h"}, true},
		{"run", []string{"--kernel", "k"}, false},
		{"soak", []string{"--help"}, false}, // soak has its own flags
		{"artifacts", []string{"--help"}, false},
	}
	for _, tc := range tests {
		if got := passThroughHelp(tc.name, tc.args); got != tc.want {
			t.Errorf("passThroughHelp(%s, %v) = %v, want %v", tc.name, tc.args, got, tc.want)
		}
	}
}
