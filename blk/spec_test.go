package blk

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSpecCrashStates(t *testing.T) {
	tests := []struct {
		in, want, bad string
	}{
		{in: "path=base.img,crashstates=set.json", want: "set.json"},
		{in: "path=base.img,cache=none,locking=off,crashstates=a,,b.json", want: "a,b.json"},
		{in: "path=base.img", want: ""},
		{in: "path=base.img,crashstates=", bad: "empty crashstates="},
		{in: "path=base.img,crashstates=s.json,powercut=lose-all", bad: "crashstates= and powercut="},
		{in: "path=base.img,crashstates=s.json,readonly=on", bad: "needs a writable disk"},
		{in: "path=base.img,crashstates=s.json,serial=x", bad: "crashstates= and serial="},
	}
	for _, tc := range tests {
		sp, err := ParseSpec(tc.in)
		if tc.bad != "" {
			if !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("ParseSpec(%q) = %v; want ErrBadSpec saying %q", tc.in, err, tc.bad)
			}
			continue
		}
		if err != nil || sp.CrashStates != tc.want {
			t.Errorf("ParseSpec(%q) = %q, %v; want crashstates %q", tc.in, sp.CrashStates, err, tc.want)
		}
	}
}

func TestParseSpecQueues(t *testing.T) {
	tests := []struct {
		in   string
		want int
		bad  string
	}{
		{in: "path=d.img", want: 0},
		{in: "path=d.img,queues=1", want: 1},
		{in: "path=d.img,queues=4,cache=none", want: 4},
		{in: "path=d.img,queues=64", want: MaxQueues},
		{in: "path=d.img,queues=0", bad: `queues="0"`},
		{in: "path=d.img,queues=65", bad: `queues="65"`},
		{in: "path=d.img,queues=two", bad: `queues="two"`},
		{in: "path=d.img,queues=", bad: `queues=""`},
	}
	for _, tc := range tests {
		sp, err := ParseSpec(tc.in)
		if tc.bad != "" {
			if !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("ParseSpec(%q) = %v; want ErrBadSpec saying %q", tc.in, err, tc.bad)
			}
			continue
		}
		if err != nil || sp.Queues != tc.want {
			t.Errorf("ParseSpec(%q) = queues %d, %v; want %d", tc.in, sp.Queues, err, tc.want)
		}
	}
}
