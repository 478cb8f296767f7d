package protocol

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestL1JobWriteRead(t *testing.T) {
	tests := []struct {
		name string
		job  L1Job
		// has and lacks are substrings of the job file.
		has, lacks []string
	}{
		{"runs only", L1Job{Runs: []L1Run{{Argv: []string{"/job/flushvm", "run", "--kernel=/job/in/1-k"}}}},
			[]string{`"argv"`}, []string{"scratch", "env", "wait_for", "timeout_sec"}},
		{"scratch and env", L1Job{
			Runs:    []L1Run{{Argv: []string{"/job/flushvm", "crashtest"}, TimeoutSec: 60, Env: []string{"TMPDIR=/scratch"}}},
			WaitFor: []string{"/dev/vda"},
			Scratch: &L1Scratch{Device: "/dev/vdb", Mount: "/scratch"},
		}, []string{`"scratch": {`, `"device": "/dev/vdb"`, `"mount": "/scratch"`, `"TMPDIR=/scratch"`, `"timeout_sec": 60`}, nil},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		if err := WriteL1Job(dir, &tt.job); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if fi, err := os.Stat(filepath.Join(dir, L1JobOutDir)); err != nil || !fi.IsDir() {
			t.Errorf("%s: no out directory: %v", tt.name, err)
		}
		b, err := os.ReadFile(filepath.Join(dir, L1JobFile))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range tt.has {
			if !strings.Contains(string(b), s) {
				t.Errorf("%s: job file lacks %s:\n%s", tt.name, s, b)
			}
		}
		for _, s := range tt.lacks {
			if strings.Contains(string(b), s) {
				t.Errorf("%s: job file has %s:\n%s", tt.name, s, b)
			}
		}
		got, err := ReadL1Job(dir)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if !reflect.DeepEqual(*got, tt.job) {
			t.Errorf("%s: read back %+v, want %+v", tt.name, *got, tt.job)
		}
	}
	if _, err := ReadL1Job(t.TempDir()); err == nil {
		t.Error("ReadL1Job of a directory without a job file succeeded")
	}
}

func TestL1VMRunReturn(t *testing.T) {
	r := L1VMRunReturn{Addr: 0xffffffffc052c20c, Symbol: "__svm_vcpu_run+0x9c"}
	if s := r.String(); s != "0xffffffffc052c20c __svm_vcpu_run+0x9c" {
		t.Fatalf("String() = %q", s)
	}
	got, err := ParseL1VMRunReturn(r.String() + "\n")
	if err != nil || got != r {
		t.Fatalf("ParseL1VMRunReturn(String()) = %+v, %v", got, err)
	}
	for _, bad := range []string{"", "0xffffffffc052c20c", "ffffffffc052c20c f+0x1", "0x0 f+0x1", "0xzz f+0x1", "0x1 "} {
		if r, err := ParseL1VMRunReturn(bad); err == nil {
			t.Errorf("ParseL1VMRunReturn(%q) = %+v, want an error", bad, r)
		}
	}
}

func TestL1VMRunReturnHolds(t *testing.T) {
	ret := L1VMRunReturn{Addr: 0xffffffffc052c20c, Symbol: "__svm_vcpu_run+0x9c"}
	report := func(rip string) CrashReport {
		return CrashReport{Status: ExitGuestHang, Detail: "vCPU 1 made no progress for 1m15s: RIP " + rip + " RSP 0xff62fc300044fbc0 CR3 0x27358000"}
	}
	tests := []struct {
		name string
		ret  L1VMRunReturn
		rep  CrashReport
		want bool
	}{
		{"L1's resume point", ret, report("0xffffffffc052c20c"), true},
		{"the VMRUN itself", ret, report("0xffffffffc052c209"), false},
		{"guest code", ret, report("0xffffffff81a0b2c4"), false},
		{"unknown in L1", L1VMRunReturn{}, report("0xffffffffc052c20c"), false},
		{"no RIP in the report", ret, CrashReport{Status: ExitGuestHang, Detail: "vCPU 0 made no progress"}, false},
	}
	for _, tt := range tests {
		why, got := tt.ret.Holds(tt.rep)
		if got != tt.want || got != strings.Contains(why, "L1's own registers") {
			t.Errorf("%s: Holds = %q, %v; want %v", tt.name, why, got, tt.want)
		}
	}
	t.Setenv(L1VMRunReturnEnv, ret.String())
	if got := L1VMRunReturnFromEnv(); got != ret {
		t.Errorf("L1VMRunReturnFromEnv() = %+v, want %+v", got, ret)
	}
	t.Setenv(L1VMRunReturnEnv, "garbage")
	if got := L1VMRunReturnFromEnv(); got != (L1VMRunReturn{}) {
		t.Errorf("L1VMRunReturnFromEnv() of garbage = %+v, want zero", got)
	}
}
