package main

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/protocol"
)

func TestCheckStates(t *testing.T) {
	fail := errors.New("boom")
	const (
		fsck    = "/sbin/e2fsck -fn /dev/vda"
		checker = "/bin/fsyncstress -check -writers 2 -records 25"
	)
	job := testJob(t, protocol.Job{Workload: "w", Checker: checker, Acks: []string{"k0", "k1", "k2"}, States: []int{1, 3}})
	keys := map[string]string{"0": "k0", "1": "k0|k1|k2"}
	// state is the calls and lines of one state checked to the end.
	state := func(i, checkerStatus, fsckStatus, end string) ([]string, []string) {
		return []string{"serial crashstate-" + i, "flush", "mount", "job " + checker + " acked=" + keys[i], "umount", fsck, "flush"},
			[]string{"flushvm-crashcheck: next " + i, "flushvm-check: state " + i + " begin",
				"flushvm-check: fsyncstress status " + checkerStatus, "flushvm-check: fsck status " + fsckStatus,
				"flushvm-check: state " + i + " end status " + end}
	}
	c0, l0 := state("0", "0", "0", "0")
	c1, l1 := state("1", "0", "0", "0")
	c1bad, l1bad := state("1", "1", "0", "1")
	tests := []struct {
		name   string
		sys    fakeSystem
		status int
		calls  []string
		lines  []string
	}{
		{
			name: "two states pass", sys: fakeSystem{job: job}, status: 0,
			calls: slices.Concat([]string{"job"}, c0, c1),
			lines: slices.Concat(l0, l1),
		},
		{
			name: "a violation is a verdict, not a batch failure", status: 0,
			sys:   fakeSystem{job: job, stateStatus: map[string]int{"crashstate-1": 1}},
			calls: slices.Concat([]string{"job"}, c0, c1bad),
			lines: slices.Concat(l0, l1bad),
		},
		{
			name: "a state that does not mount still ends, and the next one runs", status: 0,
			sys:   fakeSystem{job: job, stateMount: map[string]error{"crashstate-0": fail}},
			calls: slices.Concat([]string{"job", "serial crashstate-0", "flush", "mount", fsck, "flush"}, c1),
			lines: slices.Concat([]string{"flushvm-crashcheck: next 0", "flushvm-check: state 0 begin",
				"flushvm-check: mount failed: boom", "flushvm-check: fsck status 0", "flushvm-check: state 0 end status 1"}, l1),
		},
		{
			name: "a state that does not appear ends the batch", status: exitBatchFailed,
			sys:   fakeSystem{job: job, serialErr: map[string]error{"crashstate-1": fail}},
			calls: slices.Concat([]string{"job"}, c0, []string{"serial crashstate-1"}),
			lines: slices.Concat(l0, []string{"flushvm-crashcheck: next 1", "flushvm-init: checkstates: state 1: boom"}),
		},
		{
			name: "no job disk", status: exitBatchFailed, sys: fakeSystem{jobErr: fail},
			calls: []string{"job"},
			lines: []string{"flushvm-init: checkstates: boom"},
		},
		{
			name: "bad job", status: exitBatchFailed, sys: fakeSystem{job: []byte("checker c\nstate 1 0\n")},
			calls: []string{"job"},
			lines: []string{`flushvm-init: checkstates: /dev/vdb: job line 2: state "1", want 0`},
		},
		{
			name: "no checker", status: exitBatchFailed, sys: fakeSystem{job: []byte("workload w\nstate 0 0\n")},
			calls: []string{"job"},
			lines: []string{`flushvm-init: checkstates: /dev/vdb: no checker line`},
		},
		{
			name: "no states", status: 0, sys: fakeSystem{job: testJob(t, protocol.Job{Workload: "w", Checker: "c"})},
			calls: []string{"job"},
			lines: []string{""},
		},
		{
			name: "cached blocks not dropped before a state", status: exitBatchFailed,
			sys:   fakeSystem{job: job, flushErr: map[int]error{0: fail}},
			calls: []string{"job", "serial crashstate-0", "flush"},
			lines: []string{"flushvm-crashcheck: next 0", "flushvm-init: checkstates: state 0: boom"},
		},
		{
			name: "cached blocks not dropped after a state: its verdict stands", status: exitBatchFailed,
			sys:   fakeSystem{job: job, flushErr: map[int]error{1: fail}},
			calls: slices.Concat([]string{"job"}, c0),
			lines: slices.Concat(l0, []string{"flushvm-init: checkstates: after state 0: boom"}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			sys := tt.sys
			st, ok := diskMode(diskModes{sys: &sys, out: &out}, "checkstates:fsyncstress")
			if !ok {
				t.Fatal("checkstates is not a disk mode")
			}
			lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if st != tt.status || !slices.Equal(sys.calls, tt.calls) || !slices.Equal(lines, tt.lines) {
				t.Errorf("status %d, calls %q, output %q\nwant  %d, %q, %q", st, sys.calls, lines, tt.status, tt.calls, tt.lines)
			}
		})
	}
}

func TestPollSerial(t *testing.T) {
	errNotYet := errors.New("not yet")
	tests := []struct {
		name  string
		reads []string // "!" reads as an error; the last one repeats
		want  string
		ok    bool
		msg   string
	}{
		{"at once", []string{"crashstate-2"}, "crashstate-2", true, ""},
		{"NUL padded, newline", []string{"crashstate-2\x00\x00\n"}, "crashstate-2", true, ""},
		{"after the previous state and an error", []string{"crashstate-1", "!", "crashstate-2"}, "crashstate-2", true, ""},
		{"never", []string{"crashstate-none"}, "crashstate-2", false, `reads "crashstate-none", want "crashstate-2"`},
		{"unreadable", []string{"!"}, "crashstate-0", false, "not yet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := 0
			read := func() (string, error) {
				r := tt.reads[min(n, len(tt.reads)-1)]
				n++
				if r == "!" {
					return "", errNotYet
				}
				return r, nil
			}
			err := pollSerial(read, tt.want, time.Millisecond, 50*time.Millisecond)
			if (err == nil) != tt.ok || (err != nil && !strings.Contains(err.Error(), tt.msg)) {
				t.Errorf("pollSerial = %v, want ok %v or %q", err, tt.ok, tt.msg)
			}
			if tt.ok && n != len(tt.reads) {
				t.Errorf("%d reads, want %d", n, len(tt.reads))
			}
		})
	}
}

func TestReadBounded(t *testing.T) {
	tests := []struct {
		in  string
		max int64
		ok  bool
	}{
		{"", 4, true},
		{"abcd", 4, true},
		{"abcde", 4, false},
	}
	for _, tt := range tests {
		b, err := readBounded(strings.NewReader(tt.in), tt.max)
		if (err == nil) != tt.ok || (tt.ok && string(b) != tt.in) {
			t.Errorf("readBounded(%q, %d) = %q, %v", tt.in, tt.max, b, err)
		}
	}
}
