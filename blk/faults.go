package blk

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Fault rules: what FaultBackend injects. A rules file (SPEC key
// faults=FILE, or the body of the --api's PUT /disks/N/faults) has one
// rule per line; blank lines and text after # are ignored:
//
//	OP [sectors=A-B] [nth=N|every=N|from=N] [after=DUR] [before=DUR] [prob=P] OUTCOME [once|sticky]
//
// OP is read, write, flush, discard or any; write-zeroes requests count as
// writes. A rule matches a request of its OP that touches sectors A..B
// (inclusive; A alone is one sector; no sectors= matches all; flush has
// none) inside the time window [after, before) since the disk opened.
// Among the matching requests, counted from 1 per rule, nth=N fires on the
// Nth only, every=N on every Nth, from=N on the Nth and every later one,
// none of them on all; prob=P (0 < P <= 1) then fires with probability P,
// drawn from a generator seeded by the disk's seed and the rule's place.
// The first rule that fires decides; later rules are not consulted.
//
// OUTCOME is what the request gets:
//
//	eio       the request fails: the guest sees VIRTIO_BLK_S_IOERR
//	enospc    the request fails with ENOSPC: the guest sees IOERR too (virtio-blk
//	          has no "no space" status), but werror=enospc stops on it
//	drop      a write or discard is acknowledged and never reaches the disk (a
//	          lying disk); a flush is acknowledged without syncing anything
//	corrupt   a read returns data with the first byte of each matched sector flipped
//	delay=D   the request waits D (at most a minute), then runs normally
//
// once fires at most once. sticky (eio or enospc on read or write) makes
// the sectors it failed bad, as on a real disk: every later read of them
// fails the same way until a write to them succeeds (a write remaps them).
// A rule with neither fires every time it matches.

// FaultOp is the kind of request a fault rule matches.
type FaultOp string

// The request kinds of fault rules.
const (
	FaultRead    FaultOp = "read"
	FaultWrite   FaultOp = "write"
	FaultFlush   FaultOp = "flush"
	FaultDiscard FaultOp = "discard"
	FaultAny     FaultOp = "any"
)

// FaultOutcome is what a fired rule does to its request.
type FaultOutcome string

// The outcomes of fault rules.
const (
	FaultEIO     FaultOutcome = "eio"
	FaultENOSPC  FaultOutcome = "enospc"
	FaultDrop    FaultOutcome = "drop"
	FaultCorrupt FaultOutcome = "corrupt"
	FaultDelay   FaultOutcome = "delay"
)

// Bounds of fault rules and rules files.
const (
	// MaxFaultRules is the most rules a disk holds.
	MaxFaultRules = 64
	// MaxFaultFile is the largest rules file read.
	MaxFaultFile = 64 << 10
	// MaxFaultDelay is the longest delay= a rule may ask for.
	MaxFaultDelay = time.Minute
)

// ErrBadFaultRule reports a fault rule that cannot be parsed.
var ErrBadFaultRule = errors.New("bad fault rule")

// FaultRule is one parsed rule (see the grammar above).
type FaultRule struct {
	Op FaultOp
	// HasRange says First and Last (sectors, inclusive) restrict the rule.
	HasRange    bool
	First, Last uint64
	// Nth, Every and From select among matching requests (at most one is
	// set; none: all).
	Nth, Every, From uint64
	// After and Before bound the time window since the disk opened
	// (Before 0: no end).
	After, Before time.Duration
	// Prob is the probability of firing once selected (0: always).
	Prob    float64
	Outcome FaultOutcome
	// Delay is the wait of a delay outcome.
	Delay        time.Duration
	Once, Sticky bool
}

// String is the rule in the rules-file syntax, canonical.
func (r FaultRule) String() string {
	parts := []string{string(r.Op)}
	if r.HasRange {
		parts = append(parts, fmt.Sprintf("sectors=%d-%d", r.First, r.Last))
	}
	for _, c := range []struct {
		k string
		v uint64
	}{{"nth", r.Nth}, {"every", r.Every}, {"from", r.From}} {
		if c.v > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", c.k, c.v))
		}
	}
	if r.After > 0 {
		parts = append(parts, "after="+r.After.String())
	}
	if r.Before > 0 {
		parts = append(parts, "before="+r.Before.String())
	}
	if r.Prob > 0 {
		parts = append(parts, "prob="+strconv.FormatFloat(r.Prob, 'g', -1, 64))
	}
	if r.Outcome == FaultDelay {
		parts = append(parts, "delay="+r.Delay.String())
	} else {
		parts = append(parts, string(r.Outcome))
	}
	switch {
	case r.Once:
		parts = append(parts, "once")
	case r.Sticky:
		parts = append(parts, "sticky")
	}
	return strings.Join(parts, " ")
}

// ParseFaultRule parses one rule.
func ParseFaultRule(line string) (FaultRule, error) {
	f := strings.Fields(line)
	if len(f) == 0 {
		return FaultRule{}, fmt.Errorf("%w: empty", ErrBadFaultRule)
	}
	r := FaultRule{Op: FaultOp(f[0])}
	switch r.Op {
	case FaultRead, FaultWrite, FaultFlush, FaultDiscard, FaultAny:
	default:
		return r, fmt.Errorf("%w %q: operation %q (want read, write, flush, discard or any)", ErrBadFaultRule, line, f[0])
	}
	for _, w := range f[1:] {
		if err := r.setWord(w); err != nil {
			return r, fmt.Errorf("%w %q: %v", ErrBadFaultRule, line, err)
		}
	}
	if err := r.check(); err != nil {
		return r, fmt.Errorf("%w %q: %v", ErrBadFaultRule, line, err)
	}
	return r, nil
}

// setWord sets what one word of a rule says.
func (r *FaultRule) setWord(w string) error {
	k, v, kv := strings.Cut(w, "=")
	if !kv {
		return r.setFlagWord(w)
	}
	var err error
	switch k {
	case "sectors":
		r.HasRange = true
		r.First, r.Last, err = parseSectorRange(v)
	case "nth", "every", "from":
		var n uint64
		if n, err = strconv.ParseUint(v, 10, 64); err == nil && n == 0 {
			err = fmt.Errorf("counts start at 1")
		}
		*map[string]*uint64{"nth": &r.Nth, "every": &r.Every, "from": &r.From}[k] = n
	case "after", "before", "delay":
		var d time.Duration
		if d, err = time.ParseDuration(v); err == nil && d <= 0 {
			err = fmt.Errorf("a duration > 0")
		}
		*map[string]*time.Duration{"after": &r.After, "before": &r.Before, "delay": &r.Delay}[k] = d
		if k == "delay" && err == nil {
			err = r.setOutcome(FaultDelay)
		}
	case "prob":
		r.Prob, err = strconv.ParseFloat(v, 64)
		if err == nil && !(r.Prob > 0 && r.Prob <= 1) {
			err = fmt.Errorf("0 < prob <= 1")
		}
	default:
		return fmt.Errorf("unknown key %q", k)
	}
	if err != nil {
		return fmt.Errorf("%s=%q: %v", k, v, err)
	}
	return nil
}

// setFlagWord sets an outcome or once/sticky.
func (r *FaultRule) setFlagWord(w string) error {
	switch o := FaultOutcome(w); o {
	case FaultEIO, FaultENOSPC, FaultDrop, FaultCorrupt:
		return r.setOutcome(o)
	}
	switch w {
	case "once":
		r.Once = true
	case "sticky":
		r.Sticky = true
	default:
		return fmt.Errorf("unknown word %q (want eio, enospc, drop, corrupt, delay=D, once or sticky)", w)
	}
	return nil
}

// setOutcome sets the outcome, refusing a second one.
func (r *FaultRule) setOutcome(o FaultOutcome) error {
	if r.Outcome != "" {
		return fmt.Errorf("two outcomes (%s and %s)", r.Outcome, o)
	}
	r.Outcome = o
	return nil
}

// parseSectorRange reads A-B or A.
func parseSectorRange(v string) (first, last uint64, err error) {
	a, b, isRange := strings.Cut(v, "-")
	if first, err = strconv.ParseUint(a, 10, 64); err != nil {
		return 0, 0, err
	}
	last = first
	if isRange {
		if last, err = strconv.ParseUint(b, 10, 64); err != nil {
			return 0, 0, err
		}
	}
	if last < first {
		return 0, 0, fmt.Errorf("range ends before it starts")
	}
	return first, last, nil
}

// check refuses rules whose words do not go together.
func (r FaultRule) check() error {
	n := 0
	for _, c := range []uint64{r.Nth, r.Every, r.From} {
		if c > 0 {
			n++
		}
	}
	switch {
	case r.Outcome == "":
		return fmt.Errorf("no outcome (eio, enospc, drop, corrupt or delay=D)")
	case n > 1:
		return fmt.Errorf("at most one of nth=, every= and from=")
	case r.Once && r.Sticky:
		return fmt.Errorf("once and sticky do not go together")
	case r.Before > 0 && r.Before <= r.After:
		return fmt.Errorf("before= must come after after=")
	case r.Op == FaultFlush && r.HasRange:
		return fmt.Errorf("a flush has no sectors")
	case r.Outcome == FaultCorrupt && r.Op != FaultRead:
		return fmt.Errorf("corrupt is for reads")
	case r.Outcome == FaultDrop && (r.Op == FaultRead || r.Op == FaultAny):
		return fmt.Errorf("drop is for write, discard or flush")
	case r.Sticky && !((r.Op == FaultRead || r.Op == FaultWrite) && (r.Outcome == FaultEIO || r.Outcome == FaultENOSPC)):
		return fmt.Errorf("sticky is for eio or enospc on read or write")
	case r.Outcome == FaultDelay && r.Delay > MaxFaultDelay:
		return fmt.Errorf("delay longer than %v", MaxFaultDelay)
	}
	return nil
}

// ParseFaultRules parses a rules file's text: one rule per line, # starts
// a comment. At most MaxFaultRules rules.
func ParseFaultRules(r io.Reader) ([]FaultRule, error) {
	var rules []FaultRule
	sc := bufio.NewScanner(io.LimitReader(r, MaxFaultFile+1))
	sc.Buffer(make([]byte, 0, 4096), MaxFaultFile+1)
	read, line := 0, 0
	for sc.Scan() {
		line++
		read += len(sc.Bytes()) + 1
		if read > MaxFaultFile+1 {
			return nil, fmt.Errorf("%w: rules longer than %d bytes", ErrBadFaultRule, MaxFaultFile)
		}
		text, _, _ := strings.Cut(sc.Text(), "#")
		if strings.TrimSpace(text) == "" {
			continue
		}
		if len(rules) == MaxFaultRules {
			return nil, fmt.Errorf("%w: more than %d rules", ErrBadFaultRule, MaxFaultRules)
		}
		rule, err := ParseFaultRule(text)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		rules = append(rules, rule)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFaultRule, err)
	}
	return rules, nil
}

// ReadFaultRules reads a rules file (faults=FILE).
func ReadFaultRules(path string) ([]FaultRule, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("faults: %w", err)
	}
	defer f.Close()
	rules, err := ParseFaultRules(f)
	if err != nil {
		return nil, fmt.Errorf("faults: %s: %w", path, err)
	}
	return rules, nil
}

// FaultError is the error of a request an eio or enospc rule failed (or a
// sticky bad sector). It unwraps to unix.EIO or unix.ENOSPC, so the error
// policy (werror=enospc) sees what a host error would have been.
type FaultError struct {
	// Rule is the rule's place in the disk's rules (0-based).
	Rule int
	Op   FaultOp
	// First and Last are the sectors the request touched (none for a flush).
	First, Last uint64
	Outcome     FaultOutcome
	// Sticky says a bad sector failed it, not the rule firing anew.
	Sticky bool
}

// Error says what failed and which rule did it.
func (e *FaultError) Error() string {
	what := "injected"
	if e.Sticky {
		what = "bad sector"
	}
	if e.Op == FaultFlush {
		return fmt.Sprintf("flush: %s %s (fault rule %d)", what, e.Outcome, e.Rule)
	}
	return fmt.Sprintf("%s sectors %d-%d: %s %s (fault rule %d)", e.Op, e.First, e.Last, what, e.Outcome, e.Rule)
}

// Unwrap is the errno the fault stands for.
func (e *FaultError) Unwrap() error {
	if e.Outcome == FaultENOSPC {
		return unix.ENOSPC
	}
	return unix.EIO
}
