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
		fsck = "/sbin/e2fsck -fn /dev/vda"
		args = "-writers 2 -records 25"
	)
	manifest := protocol.FormatManifest([]string{"3:4", "25:25"})
	checker := func(acked string) string { return "/bin/fsyncstress -check -dir /mnt " + args + " -acked " + acked }
	// state is the calls and lines of one state checked to the end.
	state := func(i, acked, checkerStatus, fsckStatus, end string) ([]string, []string) {
		return []string{"serial crashstate-" + i, "flush", "mount", checker(acked), "umount", fsck, "flush"},
			[]string{"flushvm-crashcheck: next " + i, "flushvm-check: state " + i + " begin",
				"flushvm-check: fsyncstress status " + checkerStatus, "flushvm-check: fsck status " + fsckStatus,
				"flushvm-check: state " + i + " end status " + end}
	}
	c0, l0 := state("0", "3:4", "0", "0", "0")
	c1, l1 := state("1", "25:25", "0", "0", "0")
	c1bad, l1bad := state("1", "25:25", "1", "0", "1")
	tests := []struct {
		name   string
		mode   string
		sys    fakeSystem
		status int
		calls  []string
		lines  []string
	}{
		{
			name: "two states pass", sys: fakeSystem{manifest: manifest}, status: 0,
			calls: slices.Concat([]string{"manifest"}, c0, c1),
			lines: slices.Concat(l0, l1),
		},
		{
			name: "a violation is a verdict, not a batch failure", status: 0,
			sys:   fakeSystem{manifest: manifest, stateStatus: map[string]int{"crashstate-1": 1}},
			calls: slices.Concat([]string{"manifest"}, c0, c1bad),
			lines: slices.Concat(l0, l1bad),
		},
		{
			name: "a state that does not mount still ends, and the next one runs", status: 0,
			sys:   fakeSystem{manifest: manifest, stateMount: map[string]error{"crashstate-0": fail}},
			calls: slices.Concat([]string{"manifest", "serial crashstate-0", "flush", "mount", fsck, "flush"}, c1),
			lines: slices.Concat([]string{"flushvm-crashcheck: next 0", "flushvm-check: state 0 begin",
				"flushvm-check: mount failed: boom", "flushvm-check: fsck status 0", "flushvm-check: state 0 end status 1"}, l1),
		},
		{
			name: "a state that does not appear ends the batch", status: exitBatchFailed,
			sys:   fakeSystem{manifest: manifest, serialErr: map[string]error{"crashstate-1": fail}},
			calls: slices.Concat([]string{"manifest"}, c0, []string{"serial crashstate-1"}),
			lines: slices.Concat(l0, []string{"flushvm-crashcheck: next 1", "flushvm-init: checkstates: state 1: boom"}),
		},
		{
			name: "no manifest", status: exitBatchFailed, sys: fakeSystem{manifestErr: fail},
			calls: []string{"manifest"},
			lines: []string{"flushvm-init: checkstates: boom"},
		},
		{
			name: "bad manifest", status: exitBatchFailed, sys: fakeSystem{manifest: []byte("state 1 3:4\n")},
			calls: []string{"manifest"},
			lines: []string{`flushvm-init: checkstates: manifest line 1: state "1", want 0`},
		},
		{
			name: "empty manifest", status: 0, sys: fakeSystem{manifest: protocol.FormatManifest(nil)},
			calls: []string{"manifest"},
			lines: []string{""},
		},
		{
			name: "cached blocks not dropped before a state", status: exitBatchFailed,
			sys:   fakeSystem{manifest: manifest, flushErr: map[int]error{0: fail}},
			calls: []string{"manifest", "serial crashstate-0", "flush"},
			lines: []string{"flushvm-crashcheck: next 0", "flushvm-init: checkstates: state 0: boom"},
		},
		{
			name: "cached blocks not dropped after a state: its verdict stands", status: exitBatchFailed,
			sys:   fakeSystem{manifest: manifest, flushErr: map[int]error{1: fail}},
			calls: slices.Concat([]string{"manifest"}, c0),
			lines: slices.Concat(l0, []string{"flushvm-init: checkstates: after state 0: boom"}),
		},
		{
			name: "unknown workload", mode: "checkstates:fio", status: exitUnknownWorkload,
			lines: []string{`flushvm-init: flushvm.run=checkstates:fio: unknown crash-test workload "fio" (want fsyncstress or rename)`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mode := tt.mode
			if mode == "" {
				mode = "checkstates:fsyncstress"
			}
			var out strings.Builder
			sys := tt.sys
			st, ok := diskMode(diskModes{sys: &sys, out: &out}, mode, strings.Fields(args))
			if !ok {
				t.Fatalf("%s is not a disk mode", mode)
			}
			lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if st != tt.status || !slices.Equal(sys.calls, tt.calls) || !slices.Equal(lines, tt.lines) {
				t.Errorf("status %d, calls %q, output %q\nwant  %d, %q, %q", st, sys.calls, lines, tt.status, tt.calls, tt.lines)
			}
		})
	}
}

func TestCheckStatesAcked(t *testing.T) {
	tests := []struct {
		w, acked string
		args     []string
		want     string
	}{
		{"rename", "7", nil, "/bin/rename -check -dir /mnt -acked 7"},
		{"rename", "", []string{"-create"}, "/bin/rename -check -dir /mnt -create -acked 0"},
		{"fsyncstress", "", []string{"-writers", "1"}, "/bin/fsyncstress -check -dir /mnt -writers 1 -acked 0"},
		{"fsyncstress", "0:9", []string{"-writers", "2"}, "/bin/fsyncstress -check -dir /mnt -writers 2 -acked 0:9"},
	}
	for _, tt := range tests {
		sys := &fakeSystem{manifest: protocol.FormatManifest([]string{tt.acked})}
		args := slices.Clip(tt.args)
		st, _ := diskMode(diskModes{sys: sys, out: &strings.Builder{}}, "checkstates:"+tt.w, args)
		if st != 0 || !slices.Contains(sys.calls, tt.want) || !slices.Equal(args, tt.args) {
			t.Errorf("%s with acked %q: status %d, calls %q; want %q (args %q untouched)", tt.w, tt.acked, st, sys.calls, tt.want, tt.args)
		}
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
