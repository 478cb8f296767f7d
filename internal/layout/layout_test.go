// Package layout holds the test that keeps the module's import rules: the
// contracts package links nothing but the standard library, programs that
// run inside guests and the host tooling around them link no VMM package,
// and the block device knows nothing of KVM or the machine.
package layout

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/flushvm/flushvm"

// vmmPackages are the packages of the VMM and its devices.
var vmmPackages = []string{"/vmm", "/kvm", "/virtio", "/blk", "/disk", "/crashtest", "/cmd/"}

// rules says, per package prefix (relative to the module), which module
// packages it must not import, or (stdlibOnly) that it imports no module
// and no third-party package at all.
var rules = []struct {
	prefix     string
	stdlibOnly bool
	forbidden  []string
}{
	{prefix: "/protocol", stdlibOnly: true},
	{prefix: "/guest", forbidden: append([]string{"/host"}, vmmPackages...)},
	{prefix: "/host", forbidden: vmmPackages},
	{prefix: "/internal", forbidden: vmmPackages},
	{prefix: "/blk", forbidden: []string{"/vmm", "/kvm", "/disk", "/crashtest", "/cmd/"}},
	{prefix: "/virtio", forbidden: []string{"/vmm", "/kvm", "/blk", "/disk", "/crashtest", "/cmd/"}},
	{prefix: "/disk", forbidden: []string{"/vmm", "/kvm", "/crashtest", "/cmd/"}},
	{prefix: "/crashtest", forbidden: []string{"/vmm", "/kvm", "/virtio", "/cmd/"}},
}

// TestImportRules lists every package of the module with `go list` and
// checks its imports against rules.
func TestImportRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg := strings.TrimPrefix(f[0], module)
		for _, r := range rules {
			if !under(pkg, r.prefix) {
				continue
			}
			checked++
			for _, imp := range f[1:] {
				if why := violates(imp, r.stdlibOnly, r.forbidden); why != "" {
					t.Errorf("%s imports %s: %s", f[0], imp, why)
				}
			}
		}
	}
	if checked < 10 {
		t.Fatalf("only %d packages matched the rules: is the module path %s?", checked, module)
	}
}

// under reports whether pkg is prefix or inside it ("/cmd/" matches every
// command).
func under(pkg, prefix string) bool {
	if strings.HasSuffix(prefix, "/") {
		return strings.HasPrefix(pkg+"/", prefix)
	}
	return pkg == prefix || strings.HasPrefix(pkg, prefix+"/")
}

// violates says why importing imp breaks a rule ("" when it does not).
func violates(imp string, stdlibOnly bool, forbidden []string) string {
	first, _, _ := strings.Cut(imp, "/")
	if stdlibOnly && strings.Contains(first, ".") {
		return "this package may import only the standard library"
	}
	rel, ok := strings.CutPrefix(imp, module)
	if !ok {
		return ""
	}
	for _, f := range forbidden {
		if under(rel, f) {
			return "a VMM package (" + f + ") where only protocol and internal helpers are allowed"
		}
	}
	return ""
}

func TestViolates(t *testing.T) {
	tests := []struct {
		imp        string
		stdlibOnly bool
		forbidden  []string
		bad        bool
	}{
		{"strings", true, nil, false},
		{"golang.org/x/sys/unix", true, nil, true},
		{module + "/blk", true, nil, true},
		{module + "/vmm", false, vmmPackages, true},
		{module + "/virtio/pci", false, vmmPackages, true},
		{module + "/cmd/flushvm", false, vmmPackages, true},
		{module + "/protocol", false, vmmPackages, false},
		{module + "/internal/lines", false, vmmPackages, false},
		{module + "/blkx", false, []string{"/blk"}, false},
	}
	for _, tc := range tests {
		if got := violates(tc.imp, tc.stdlibOnly, tc.forbidden) != ""; got != tc.bad {
			t.Errorf("violates(%q, %v, %v) = %v, want %v", tc.imp, tc.stdlibOnly, tc.forbidden, got, tc.bad)
		}
	}
}
