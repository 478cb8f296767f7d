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
		checkSpecField(t, tc.in, tc.bad, "crashstates", func(sp Spec) string { return sp.CrashStates }, tc.want)
	}
}

// checkSpecField parses in and checks that it fails with ErrBadSpec saying
// bad, or, when bad is "", that field of the result is want.
func checkSpecField[T comparable](t *testing.T, in, bad, name string, field func(Spec) T, want T) {
	t.Helper()
	sp, err := ParseSpec(in)
	if bad != "" {
		if !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), bad) {
			t.Errorf("ParseSpec(%q) = %v; want ErrBadSpec saying %q", in, err, bad)
		}
		return
	}
	if got := field(sp); err != nil || got != want {
		t.Errorf("ParseSpec(%q) = %s %v, %v; want %v", in, name, got, err, want)
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
		checkSpecField(t, tc.in, tc.bad, "queues", func(sp Spec) int { return sp.Queues }, tc.want)
	}
}

func TestParseSpecAIO(t *testing.T) {
	tests := []struct {
		in   string
		want AIOEngine
		bad  string
	}{
		{in: "path=d.img", want: AIOThreads},
		{in: "path=d.img,aio=threads", want: AIOThreads},
		{in: "path=d.img,aio=io_uring,cache=none", want: AIOIOUring},
		{in: "path=d.img,aio=native", bad: `aio="native"`},
		{in: "path=d.img,aio=", bad: `aio=""`},
	}
	for _, tc := range tests {
		checkSpecField(t, tc.in, tc.bad, "aio", func(sp Spec) AIOEngine { return sp.AIO }, tc.want)
	}
}
