package crashtest

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/flushvm/flushvm/blk"
)

// logOp is one step of a recorded run: a write of n bytes of byte b at
// off, a flush, or an acknowledgement mark.
type logOp struct {
	kind   string // "w", "f", "ack"
	off, n int64
	b      byte
	mark   string
}

func w(off, n int64, b byte) logOp { return logOp{kind: "w", off: off, n: n, b: b} }
func flush() logOp                 { return logOp{kind: "f"} }
func ack(s string) logOp           { return logOp{kind: "ack", mark: s} }

// testLog writes a zero base image of size bytes and the write log of
// ops over it; it returns the log's model (closed with the test).
func testLog(t *testing.T, size int64, ops []logOp) *LogModel {
	t.Helper()
	dir := t.TempDir()
	base, work, logPath := filepath.Join(dir, "template.img"), filepath.Join(dir, "work.img"), filepath.Join(dir, "record.wlog")
	for _, p := range []string{base, work} {
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fb, err := blk.OpenFile(work, blk.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := blk.CreateWriteLog(fb, logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range ops {
		switch op.kind {
		case "w":
			v := blk.NewVec(1)
			v.Append(bytes.Repeat([]byte{op.b}, int(op.n)))
			err = l.WriteAt(v, op.off)
		case "f":
			err = l.Sync()
		case "ack":
			err = l.Mark(op.mark)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	m, err := openModel(logPath, base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// ops: window 0 = two writes; flush; an ACK; window 1 = one 8 KiB write;
// flush; window 2 = a rewrite of block 0.
var exampleOps = []logOp{w(0, 4096, 1), w(4096, 4096, 2), flush(), ack("ACK rename 1"), w(8192, 8192, 3), flush(), w(0, 4096, 4)}

func TestLogModelWindows(t *testing.T) {
	m := testLog(t, 1<<20, exampleOps)
	type win struct {
		writes int
		acks   int
	}
	var got []win
	for _, wd := range m.Windows {
		got = append(got, win{len(wd.Writes), wd.Acks})
	}
	// The ACK logged before flush 2 must hold in every state of window
	// 1: it was printed before that flush was submitted.
	want := []win{{2, 0}, {1, 1}, {1, 1}}
	if !slices.Equal(got, want) || m.Writes != 4 || m.Flushes != 2 || !slices.Equal(m.AckKeys, []string{"rename 1"}) {
		t.Fatalf("windows %v, writes %d, flushes %d, acks %q; want %v, 4, 2", got, m.Writes, m.Flushes, m.AckKeys, want)
	}
}

func TestGenerate(t *testing.T) {
	m := testLog(t, 1<<20, exampleOps)
	tests := []struct {
		name string
		o    ExploreOptions
		want []string
	}{
		{"every subset, no tears", ExploreOptions{K: 3},
			[]string{"w0.s3", "w0.s2", "w0.s1", "w0.s0", "w1.s1", "w1.s0", "w2.s1", "w2.s0"}},
		{"k=1: samples and prefixes in window 0", ExploreOptions{K: 1, Seed: 5},
			[]string{"w0.s3", "w0.s0", "w0.s?", "w0.s?", "w0.p1", "w1.s1", "w1.s0", "w2.s1", "w2.s0"}},
		{"4 KiB tears", ExploreOptions{K: 3, TornUnits: []int64{4096}},
			[]string{"w0.s3", "w0.s2", "w0.s1", "w0.s0", "w1.s1", "w1.s0", "w1.t0.4096.?", "w2.s1", "w2.s0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			m.Generate(tc.o, func(c Candidate) bool {
				got = append(got, c.State.ID)
				// Every ID names its state exactly.
				back, err := m.Lookup(c.State.ID)
				if err != nil || back.Acks != c.Acks || back.Kind != c.Kind || !sameState(back.State, c.State) {
					t.Errorf("Lookup(%s) = %+v, %v; generated %+v", c.State.ID, back, err, c)
				}
				return true
			})
			if len(got) != len(tc.want) {
				t.Fatalf("generated %q, want %q", got, tc.want)
			}
			for i := range got {
				if ok, _ := filepath.Match(tc.want[i], got[i]); !ok {
					t.Errorf("state %d is %s, want %s (all: %q)", i, got[i], tc.want[i], got)
				}
			}
		})
	}
}

func sameState(a, b blk.CrashState) bool {
	return a.ID == b.ID && a.Prefix == b.Prefix && slices.Equal(a.Pieces, b.Pieces)
}

func TestStateImages(t *testing.T) {
	m := testLog(t, 1<<20, exampleOps)
	tests := []struct {
		id   string
		want map[int64]byte // first byte of each 4 KiB block read back
	}{
		{"w0.s0", map[int64]byte{0: 0, 4096: 0}},
		{"w0.s2", map[int64]byte{0: 0, 4096: 2}},
		{"w1.s0", map[int64]byte{0: 1, 4096: 2, 8192: 0}},
		{"w1.t0.4096.2", map[int64]byte{8192: 0, 12288: 3}},
		{"w1.t0.512.1", map[int64]byte{8192: 3, 8192 + 512: 0}},
		{"w2.s1", map[int64]byte{0: 4, 8192: 3, 12288: 3}},
	}
	for _, tc := range tests {
		c, err := m.Lookup(tc.id)
		if err != nil {
			t.Fatalf("Lookup(%s): %v", tc.id, err)
		}
		img, err := m.Log.Image(c.State)
		if err != nil {
			t.Fatal(err)
		}
		for off, b := range tc.want {
			p := make([]byte, 512)
			if err := img.ReadAt(p, off); err != nil || p[0] != b {
				t.Errorf("%s: byte at %d = %d (%v), want %d", tc.id, off, p[0], err, b)
			}
		}
	}
}

func TestLookupRefuses(t *testing.T) {
	m := testLog(t, 1<<20, exampleOps)
	for _, id := range []string{"", "w", "w9.s0", "w-1.s0", "w0", "w0.x1", "w0.s4", "w0.s03", "w0.sz",
		"w0.p2", "w1.t0.4096.3", "w1.t0.4096.0", "w1.t0.1024.1", "w1.t1.4096.1", "w1.t0.4096", "w0.t0.4096.1"} {
		if _, err := m.Lookup(id); !errors.Is(err, ErrBadStateID) {
			t.Errorf("Lookup(%q) = %v, want ErrBadStateID", id, err)
		}
	}
}

func TestExploreDeduplicates(t *testing.T) {
	// Window 1 writes what block 0 already holds: keeping or losing it
	// leaves the same image.
	m := testLog(t, 1<<20, []logOp{w(0, 4096, 1), flush(), w(0, 4096, 1), w(4096, 4096, 2), flush()})
	c := &Campaign{k: 3, seed: 1}
	states, cov, err := c.explore(m)
	if err != nil {
		t.Fatal(err)
	}
	// w0: {s1, s0}; w1: s3 = s1 (block 0 rewritten with its own bytes),
	// s2 = s0 image-wise; w2: s0 = w1.s3.
	var ids []string
	for _, s := range states {
		ids = append(ids, s.State.ID)
	}
	if cov.Generated != 7 || cov.Distinct != 3 || cov.Deduplicated != 4 || !slices.Equal(ids, []string{"w0.s1", "w0.s0", "w1.s3"}) {
		t.Fatalf("coverage %+v, distinct %q", cov, ids)
	}
}

func TestExploreKeepsTheStrongestExpectation(t *testing.T) {
	// w1.s0 leaves the image w0.s1 leaves, and must keep the ACK logged
	// after flush 1: the pair is checked once, with the ACK.
	m := testLog(t, 1<<20, []logOp{w(0, 4096, 1), flush(), ack("ACK rename 1")})
	states, _, err := (&Campaign{k: 3, seed: 1}).explore(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 2 || states[0].State.ID != "w1.s0" || states[0].Acks != 1 || states[1].State.ID != "w0.s0" {
		t.Fatalf("distinct states %+v: want w1.s0 (1 ack) in w0.s1's place, then w0.s0", states)
	}
}

func TestFormatSpace(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 1113: "1113", 999999999: "999999999", 1e9: "1e+09", 1.8328898507823975e252: "1.83e+252"} {
		if got := formatSpace(in); got != want {
			t.Errorf("formatSpace(%g) = %q, want %q", in, got, want)
		}
	}
}
