package main

import (
	"bytes"
	"os/exec"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/guest/internal/pid1"
)

func cpuSet(cpus ...int) unix.CPUSet {
	var s unix.CPUSet
	for _, c := range cpus {
		s.Set(c)
	}
	return s
}

func TestOffFirstCPU(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   unix.CPUSet
		want unix.CPUSet
		ok   bool
	}{
		{"three CPUs", cpuSet(0, 1, 2), cpuSet(1, 2), true},
		{"two CPUs", cpuSet(0, 1), cpuSet(1), true},
		{"only CPU 0", cpuSet(0), cpuSet(0), false},
		{"CPU 0 not in the set", cpuSet(1, 3), cpuSet(1, 3), false},
		{"gap", cpuSet(0, 5), cpuSet(5), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := offFirstCPU(tc.in)
			if got != tc.want || ok != tc.ok {
				t.Errorf("offFirstCPU(%v) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestStartOnNarrowsTheChild starts a child on one CPU of this process's
// set and checks, from the child's /proc status, that it inherited only
// that CPU while this process kept its own set.
func TestStartOnNarrowsTheChild(t *testing.T) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		t.Fatal(err)
	}
	last := -1
	for c := range 1024 {
		if all.IsSet(c) {
			last = c
		}
	}
	cmd := exec.Command("sh", "-c", "grep Cpus_allowed_list /proc/self/status")
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := startOn(cmd, cpuSet(last)); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	want := "Cpus_allowed_list:\t" + strconv.Itoa(last) + "\n"
	if out.String() != want {
		t.Errorf("child says %q, want %q", out.String(), want)
	}
	var after unix.CPUSet
	if err := unix.SchedGetaffinity(0, &after); err != nil {
		t.Fatal(err)
	}
	if after != all {
		t.Errorf("this thread's CPUs changed from %v to %v", all, after)
	}
}

func TestWantSpareCPU0(t *testing.T) {
	for _, tc := range []struct {
		cmdline string
		want    bool
	}{
		{"console=ttyS0 quiet", true},
		{"flushvm.l1_spare_cpu0=1", true},
		{"console=ttyS0 flushvm.l1_spare_cpu0=0", false},
		{"flushvm.l1_hold_vm=0 loglevel=3", true},
	} {
		if got := wantSpareCPU0(pid1.ParseCmdline(tc.cmdline)); got != tc.want {
			t.Errorf("wantSpareCPU0(%q) = %v, want %v", tc.cmdline, got, tc.want)
		}
	}
}
