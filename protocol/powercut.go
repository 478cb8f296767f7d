package protocol

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// PowerCutMark is the MARK entry a write log gets at a power cut; replay
// tools find the cut by it.
const PowerCutMark = "flushvm-power-cut"

// ErrBadTrigger reports a --power-cut WHEN that cannot be parsed.
var ErrBadTrigger = errors.New("bad --power-cut trigger")

// TriggerKind is what a power-cut trigger counts.
type TriggerKind string

// The power-cut triggers of `flushvm run --power-cut WHEN`.
const (
	// TriggerAfter cuts after a delay from the start of the machine.
	TriggerAfter TriggerKind = "after"
	// TriggerFlushes cuts when the N-th flush reaches the disks.
	TriggerFlushes TriggerKind = "flushes"
	// TriggerWrites cuts when the N-th write reaches the disks.
	TriggerWrites TriggerKind = "writes"
)

// Trigger is a parsed --power-cut WHEN; the zero Trigger is "no trigger".
type Trigger struct {
	Kind TriggerKind
	// After is the delay from the start of the machine (TriggerAfter).
	After time.Duration
	// N is the count that cuts the power (TriggerFlushes, TriggerWrites).
	N uint64
}

// String returns the trigger as written on the command line.
func (t Trigger) String() string {
	if t.Kind == TriggerAfter {
		return "after=" + t.After.String()
	}
	return string(t.Kind) + "=" + strconv.FormatUint(t.N, 10)
}

// ParseTrigger parses --power-cut WHEN: after=DURATION (Go syntax: 1.5s,
// 200ms), flushes=N or writes=N with N >= 1.
func ParseTrigger(s string) (Trigger, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || v == "" {
		return Trigger{}, fmt.Errorf("%w %q: want after=DURATION, flushes=N or writes=N", ErrBadTrigger, s)
	}
	switch TriggerKind(k) {
	case TriggerAfter:
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return Trigger{}, fmt.Errorf("%w %q: want a positive duration such as 500ms or 2s", ErrBadTrigger, s)
		}
		return Trigger{Kind: TriggerAfter, After: d}, nil
	case TriggerFlushes, TriggerWrites:
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			return Trigger{}, fmt.Errorf("%w %q: want a count of at least 1", ErrBadTrigger, s)
		}
		return Trigger{Kind: TriggerKind(k), N: n}, nil
	}
	return Trigger{}, fmt.Errorf("%w %q: unknown trigger %q (want after, flushes or writes)", ErrBadTrigger, s, k)
}
