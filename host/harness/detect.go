package harness

import (
	"fmt"
	"os"
	"strings"
)

// Mode says where flushvm runs.
type Mode int

// The modes. Auto picks Direct when the host has hardware virtualization
// and a KVM that can run Linux, Nested otherwise.
const (
	Auto Mode = iota
	Direct
	Nested
)

// String names the mode as ParseMode accepts it.
func (m Mode) String() string {
	switch m {
	case Direct:
		return "direct"
	case Nested:
		return "nested"
	}
	return "auto"
}

// ParseMode parses "auto", "direct" or "nested".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "auto", "":
		return Auto, nil
	case "direct":
		return Direct, nil
	case "nested":
		return Nested, nil
	}
	return Auto, fmt.Errorf("mode %q: want auto, direct or nested", s)
}

// Detect decides where flushvm can boot Linux on this host and why. A host
// runs flushvm directly when its CPU advertises vmx or svm, /dev/kvm
// exists, and the KVM module is not PVM (kvm_pvm, a software hypervisor
// whose emulator cannot run a stock kernel). $FLUSHVM_MODE (direct or
// nested) overrides the decision.
func Detect() (Mode, string) {
	if m, err := ParseMode(os.Getenv("FLUSHVM_MODE")); err == nil && m != Auto {
		return m, "FLUSHVM_MODE=" + m.String()
	}
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	modules, _ := os.ReadFile("/proc/modules")
	_, kvmErr := os.Stat("/dev/kvm")
	_, pvmErr := os.Stat("/sys/module/kvm_pvm")
	return decide(string(cpuinfo), string(modules), kvmErr == nil, pvmErr == nil)
}

func decide(cpuinfo, modules string, haveKVM, havePVM bool) (Mode, string) {
	if !cpuHasVirt(cpuinfo) {
		return Nested, "the host CPU has no vmx/svm"
	}
	if !haveKVM {
		return Nested, "the host has no /dev/kvm"
	}
	if havePVM || moduleLoaded(modules, "kvm_pvm") {
		return Nested, "the host's KVM is PVM (kvm_pvm), which cannot run a stock kernel"
	}
	return Direct, "the host has hardware virtualization"
}

func cpuHasVirt(cpuinfo string) bool {
	for _, line := range strings.Split(cpuinfo, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		for _, f := range strings.Fields(v) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
	}
	return false
}

func moduleLoaded(modules, name string) bool {
	for _, line := range strings.Split(modules, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}
