package blk

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseFaultRule(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "write sectors=16-23 eio once", want: "write sectors=16-23 eio once"},
		{in: "read sectors=8 sticky eio", want: "read sectors=8-8 eio sticky"},
		{in: "flush nth=2 eio", want: "flush nth=2 eio"},
		{in: "any every=10 prob=0.5 delay=20ms", want: "any every=10 prob=0.5 delay=20ms"},
		{in: "discard from=3 after=1s before=2s drop", want: "discard from=3 after=1s before=2s drop"},
		{in: "read corrupt", want: "read corrupt"},
		{in: "write enospc", want: "write enospc"},
		{in: "", err: "empty"},
		{in: "erase eio", err: "operation"},
		{in: "write", err: "no outcome"},
		{in: "write eio drop", err: "two outcomes"},
		{in: "write nth=1 every=2 eio", err: "at most one"},
		{in: "write nth=0 eio", err: "counts start at 1"},
		{in: "write eio once sticky", err: "once and sticky"},
		{in: "flush sectors=1 eio", err: "no sectors"},
		{in: "write corrupt", err: "corrupt is for reads"},
		{in: "read drop", err: "drop is for"},
		{in: "flush eio sticky", err: "sticky is for"},
		{in: "write sectors=9-3 eio", err: "ends before"},
		{in: "write prob=1.5 eio", err: "prob"},
		{in: "write delay=2m", err: "delay longer"},
		{in: "write after=2s before=1s eio", err: "before= must come after"},
		{in: "write colour=red eio", err: "unknown key"},
		{in: "write loudly eio", err: "unknown word"},
	} {
		r, err := ParseFaultRule(tc.in)
		if tc.err != "" {
			if err == nil || !errors.Is(err, ErrBadFaultRule) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want ErrBadFaultRule with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got := r.String(); got != tc.want {
			t.Errorf("%q: String %q, want %q", tc.in, got, tc.want)
		}
		if again, err := ParseFaultRule(r.String()); err != nil || again != r {
			t.Errorf("%q: does not round-trip: %+v, %v", tc.in, again, err)
		}
	}
}

func TestParseFaultRules(t *testing.T) {
	rules, err := ParseFaultRules(strings.NewReader("# a lying disk\n\nwrite nth=3 drop # third write\nflush eio once\n"))
	if err != nil || len(rules) != 2 || rules[0].Outcome != FaultDrop || rules[1].Op != FaultFlush {
		t.Fatalf("got %+v, %v", rules, err)
	}
	if _, err := ParseFaultRules(strings.NewReader("write eio\nwrite bogus\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("bad second line: %v, want it named", err)
	}
	if _, err := ParseFaultRules(strings.NewReader(strings.Repeat("write eio\n", MaxFaultRules+1))); err == nil {
		t.Error("too many rules accepted")
	}
	if _, err := ParseFaultRules(strings.NewReader(strings.Repeat("#", MaxFaultFile+2))); err == nil {
		t.Error("an oversized file accepted")
	}
}

// faultDisk is a FaultBackend over a memBackend with rules.
func faultDisk(t *testing.T, rules ...string) (*FaultBackend, *memBackend, *[]string) {
	t.Helper()
	mem := newMemBackend(1 << 20)
	fb, err := NewFaultBackend(mem, parseRules(t, rules...), 7)
	if err != nil {
		t.Fatal(err)
	}
	var marks []string
	fb.SetMarker(func(s string) error { marks = append(marks, s); return nil })
	return fb, mem, &marks
}

func vecOf(bufs ...[]byte) *Vec {
	v := NewVec(len(bufs))
	for _, b := range bufs {
		v.Append(b)
	}
	return v
}

// writeSector writes one sector of byte c at sector s.
func writeSector(b Backend, s uint64, c byte) error {
	return b.WriteAt(vecOf(bytes.Repeat([]byte{c}, SectorSize)), int64(s*SectorSize))
}

func readSector(b Backend, s uint64) ([]byte, error) {
	p := make([]byte, SectorSize)
	return p, b.ReadAt(vecOf(p), int64(s*SectorSize))
}

func TestFaultBackendSelection(t *testing.T) {
	for _, tc := range []struct {
		rule string
		// fail lists which of writes 1..8 (to sectors 0..7) fail.
		fail string
	}{
		{"write nth=3 eio", "--x-----"},
		{"write every=3 eio", "--x--x--"},
		{"write from=6 eio", "-----xxx"},
		{"write eio once", "x-------"},
		{"write sectors=2-4 eio", "--xxx---"},
		{"write sectors=2-4 nth=2 eio", "---x----"},
		{"read eio", "--------"},
	} {
		fb, _, marks := faultDisk(t, tc.rule)
		got := ""
		for s := range uint64(8) {
			err := writeSector(fb, s, 1)
			switch {
			case err == nil:
				got += "-"
			case errors.Is(err, unix.EIO):
				got += "x"
			default:
				t.Fatalf("%s: write %d: %v", tc.rule, s, err)
			}
		}
		if got != tc.fail {
			t.Errorf("%s: failed %s, want %s", tc.rule, got, tc.fail)
		}
		if n := strings.Count(got, "x"); len(*marks) != n || fb.Stats().Rules[0].Fired != uint64(n) {
			t.Errorf("%s: %d marks, stats %+v, want %d", tc.rule, len(*marks), fb.Stats().Rules[0], n)
		}
	}
}

func TestFaultBackendProbabilityIsSeeded(t *testing.T) {
	run := func() string {
		fb, _, _ := faultDisk(t, "write prob=0.5 eio")
		got := ""
		for s := range uint64(64) {
			if writeSector(fb, s, 1) != nil {
				got += "x"
			} else {
				got += "-"
			}
		}
		return got
	}
	a, b := run(), run()
	if a != b {
		t.Errorf("same seed, different faults:\n%s\n%s", a, b)
	}
	if n := strings.Count(a, "x"); n < 16 || n > 48 {
		t.Errorf("prob=0.5 fired %d of 64 times", n)
	}
}

func TestFaultBackendOutcomes(t *testing.T) {
	t.Run("drop", func(t *testing.T) {
		fb, mem, _ := faultDisk(t, "write sectors=4 drop")
		if err := writeSector(fb, 4, 9); err != nil {
			t.Fatal(err)
		}
		if mem.data[4*SectorSize] != 0 {
			t.Error("a dropped write reached the disk")
		}
		if l := fb.Stats().Losses; len(l) != 1 || l[0].How != "dropped" || l[0].First != 4 {
			t.Errorf("losses %+v", l)
		}
	})
	t.Run("corrupt", func(t *testing.T) {
		fb, mem, _ := faultDisk(t, "read sectors=1-2 corrupt")
		copy(mem.data, bytes.Repeat([]byte{0x11}, 4*SectorSize))
		p := make([]byte, 3*SectorSize)
		// Two buffers, split inside sector 1, to walk the Vec.
		if err := fb.ReadAt(vecOf(p[:700], p[700:]), 0); err != nil {
			t.Fatal(err)
		}
		for i, c := range p {
			want := byte(0x11)
			if i == SectorSize || i == 2*SectorSize {
				want = 0xee
			}
			if c != want {
				t.Fatalf("byte %d = %#x, want %#x", i, c, want)
			}
		}
	})
	t.Run("delay", func(t *testing.T) {
		fb, _, _ := faultDisk(t, "read delay=30ms")
		start := time.Now()
		if _, err := readSector(fb, 0); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < 30*time.Millisecond {
			t.Errorf("read took %v", d)
		}
	})
	t.Run("enospc", func(t *testing.T) {
		fb, _, _ := faultDisk(t, "write enospc")
		var fe *FaultError
		if err := writeSector(fb, 0, 1); !errors.Is(err, unix.ENOSPC) || !errors.As(err, &fe) || fe.Rule != 0 {
			t.Errorf("error %v, want a FaultError for ENOSPC", err)
		}
	})
}

// A sticky fault makes its sectors bad: reads fail until a write
// succeeds over them.
func TestFaultBackendStickyBadSectors(t *testing.T) {
	fb, _, marks := faultDisk(t, "read sectors=10-11 nth=1 eio sticky")
	if _, err := readSector(fb, 10); err == nil {
		t.Fatal("first read succeeded")
	}
	for range 3 {
		if _, err := readSector(fb, 10); err == nil {
			t.Fatal("a bad sector read back")
		}
	}
	if _, err := readSector(fb, 11); err != nil {
		t.Errorf("sector 11 was not read by the failed request, yet fails: %v", err)
	}
	st := fb.Stats()
	if st.Rules[0].Fired != 1 || st.Rules[0].BadSectorHits != 3 || len(st.BadSectors) != 1 || len(*marks) != 1 {
		t.Errorf("stats %+v, marks %q", st, *marks)
	}
	if err := writeSector(fb, 10, 5); err != nil {
		t.Fatal(err)
	}
	if p, err := readSector(fb, 10); err != nil || p[0] != 5 {
		t.Errorf("after a rewrite: %v %v", p[0], err)
	}
}

// The fsyncgate account: a failed write not rewritten before a
// successful flush is a loss; one rewritten first is not.
func TestFaultBackendFailedThenFlushed(t *testing.T) {
	fb, _, _ := faultDisk(t, "write sectors=1 eio once", "write sectors=3 eio once")
	writeSector(fb, 1, 1)
	writeSector(fb, 3, 1)
	if err := writeSector(fb, 3, 2); err != nil {
		t.Fatal(err)
	}
	if l := fb.Stats().Losses; len(l) != 0 {
		t.Fatalf("losses before any flush: %+v", l)
	}
	if err := fb.Sync(); err != nil {
		t.Fatal(err)
	}
	l := fb.Stats().Losses
	if len(l) != 1 || l[0].First != 1 || l[0].How != "failed-then-flushed" {
		t.Errorf("losses %+v, want sector 1 failed-then-flushed", l)
	}
}

func TestFaultBackendSetRules(t *testing.T) {
	fb, _, _ := faultDisk(t)
	if err := writeSector(fb, 0, 1); err != nil {
		t.Fatal(err)
	}
	r, _ := ParseFaultRule("write eio")
	if err := fb.SetRules([]FaultRule{r}); err != nil {
		t.Fatal(err)
	}
	if writeSector(fb, 0, 1) == nil {
		t.Error("a rule set at run time did not fire")
	}
	fb.SetRules(nil)
	if err := writeSector(fb, 0, 1); err != nil {
		t.Errorf("after clearing the rules: %v", err)
	}
	if err := fb.SetRules([]FaultRule{{Op: FaultWrite}}); err == nil {
		t.Error("a rule without outcome accepted")
	}
}

// parseRules parses fault rules, failing the test on a bad one.
func parseRules(t *testing.T, rules ...string) []FaultRule {
	t.Helper()
	var rs []FaultRule
	for _, r := range rules {
		fr, err := ParseFaultRule(r)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, fr)
	}
	return rs
}
