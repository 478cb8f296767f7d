package main

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flushvm/flushvm/blk"
)

// replayFixture records a log of a small workload on a copy of a random
// base image and returns the paths and the expected images.
type replayFixture struct {
	dir, base, log string
	// states[i] is the image after the first i writes.
	states [][]byte
}

func newReplayFixture(t *testing.T) *replayFixture {
	t.Helper()
	const size = 64 << 10
	dir := t.TempDir()
	fx := &replayFixture{dir: dir, base: filepath.Join(dir, "base.img"), log: filepath.Join(dir, "run.wlog")}
	base := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range base {
		base[i] = byte(r.Uint32())
	}
	live := filepath.Join(dir, "live.img")
	for _, p := range []string{fx.base, live} {
		if err := os.WriteFile(p, base, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	disk, err := blk.OpenFile(live, blk.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := blk.CreateWriteLog(disk, fx.log)
	if err != nil {
		t.Fatal(err)
	}
	type wr struct {
		off  int64
		fill byte
	}
	// W1 | flush 1 | W2 W3 | flush 2 | W4 W5
	script := []any{wr{0, 1}, "sync", wr{4096, 2}, wr{0, 3}, "sync", wr{8192, 4}, wr{2048, 5}}
	fx.states = [][]byte{append([]byte(nil), base...)}
	v := blk.NewVec(1)
	for _, s := range script {
		switch s := s.(type) {
		case string:
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
		case wr:
			b := bytes.Repeat([]byte{s.fill}, 4096)
			v.Reset()
			v.Append(b)
			if err := l.WriteAt(v, s.off); err != nil {
				t.Fatal(err)
			}
			next := append([]byte(nil), fx.states[len(fx.states)-1]...)
			copy(next[s.off:], b)
			fx.states = append(fx.states, next)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return fx
}

func TestReplayCommand(t *testing.T) {
	fx := newReplayFixture(t)
	out := filepath.Join(fx.dir, "out.img")
	badLog := filepath.Join(fx.dir, "bad.wlog")
	if err := os.WriteFile(badLog, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	std := []string{"--log", fx.log, "--base", fx.base, "--out", out}
	with := func(extra ...string) []string { return append(append([]string{"replay"}, std...), extra...) }
	cases := []struct {
		name   string
		args   []string
		status int
		// want lists the acceptable images (states index); nil: not checked.
		want    []int
		message string
	}{
		{"flush 0 lose-all", with("--flush", "0"), 0, []int{0}, "0 kept"},
		{"flush 0 keep-all", with("--flush", "0", "--policy", "keep-all"), 0, []int{1}, "1 kept"},
		{"flush 1 lose-all", with("--flush", "1"), 0, []int{1}, "2 lost"},
		{"flush 1 keep-all", with("--flush", "1", "--policy", "keep-all"), 0, []int{3}, "2 kept"},
		{"flush 2 lose-all", with("--flush", "2", "--policy", "lose-all"), 0, []int{3}, "2 unstable writes"},
		{"flush 2 keep-all", with("--flush", "2", "--policy", "keep-all"), 0, []int{5}, ""},
		{"flush 2 prefix", with("--flush", "2", "--policy", "prefix", "--seed", "3"), 0, []int{3, 4, 5}, ""},
		{"flush 1 keep-all to end", with("--flush", "1", "--policy", "keep-all", "--to-end"), 0, []int{5}, "4 kept"},
		{"flush 0 lose-all to end", with("--flush", "0", "--to-end"), 0, []int{0}, "5 lost"},
		{"help", []string{"replay", "--help"}, 0, nil, ""},
		{"no such flush", with("--flush", "3"), 2, nil, "has 2"},
		{"missing flush", with(), 2, nil, "--flush N is required"},
		{"missing log", []string{"replay", "--base", fx.base, "--out", out, "--flush", "0"}, 2, nil, "--log is required"},
		{"bad policy", with("--flush", "1", "--policy", "lose-most"), 2, nil, "bad power-cut policy"},
		{"out is base", []string{"replay", "--log", fx.log, "--base", fx.base, "--out", fx.base, "--flush", "0"}, 2, nil, "must stay intact"},
		{"log not found", []string{"replay", "--log", filepath.Join(fx.dir, "nope"), "--base", fx.base, "--out", out, "--flush", "0"}, 2, nil, "no such file"},
		{"damaged log", []string{"replay", "--log", badLog, "--base", fx.base, "--out", out, "--flush", "0"}, 1, nil, "bad write log"},
		{"extra argument", with("--flush", "0", "extra"), 2, nil, "unexpected argument"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(out)
			var stdout, stderr bytes.Buffer
			if got := dispatch(tc.args, &stdout, &stderr); got != tc.status {
				t.Fatalf("status %d, want %d; stderr %s", got, tc.status, stderr.String())
			}
			if !strings.Contains(stdout.String()+stderr.String(), tc.message) {
				t.Fatalf("output %q lacks %q", stdout.String()+stderr.String(), tc.message)
			}
			if tc.want == nil {
				return
			}
			img, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range tc.want {
				if bytes.Equal(img, fx.states[i]) {
					return
				}
			}
			t.Fatalf("image is none of states %v", tc.want)
		})
	}
	base, err := os.ReadFile(fx.base)
	if err != nil || !bytes.Equal(base, fx.states[0]) {
		t.Fatalf("base image changed (%v)", err)
	}
}

// TestReplayCommandDeterministicReport: the same seed gives the same image
// and JSON report; the report lists the unstable writes.
func TestReplayCommandDeterministicReport(t *testing.T) {
	fx := newReplayFixture(t)
	var images [][]byte
	var reports []blk.PowerCutReport
	for i := range 2 {
		out := filepath.Join(fx.dir, "out.img")
		rep := filepath.Join(fx.dir, "cut.json")
		args := []string{"replay", "--log", fx.log, "--base", fx.base, "--out", out, "--flush", "1",
			"--policy", "random-sectors:512", "--seed", "17", "--report", rep}
		var stdout, stderr bytes.Buffer
		if st := dispatch(args, &stdout, &stderr); st != 0 {
			t.Fatalf("run %d: status %d: %s", i, st, stderr.String())
		}
		img, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		j, err := os.ReadFile(rep)
		if err != nil {
			t.Fatal(err)
		}
		var r blk.PowerCutReport
		if err := json.Unmarshal(j, &r); err != nil {
			t.Fatal(err)
		}
		images, reports = append(images, img), append(reports, r)
	}
	if !bytes.Equal(images[0], images[1]) {
		t.Fatal("same seed, different images")
	}
	r := reports[0]
	if r.Policy != "random-sectors:512" || r.Seed != 17 || r.Unstable != 2 || len(r.Writes) != 2 ||
		r.Writes[0].Offset != 4096 || r.Writes[1].Offset != 0 || r.Kept+r.Torn+r.Lost != 2 {
		t.Fatalf("report %+v", r)
	}
}

// TestReplayCommandKeepsOutOnRefusal: a replay refused for a missing flush
// or a damaged log leaves an existing --out as it was.
func TestReplayCommandKeepsOutOnRefusal(t *testing.T) {
	fx := newReplayFixture(t)
	badLog := filepath.Join(fx.dir, "bad.wlog")
	if err := os.WriteFile(badLog, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		log    string
		flush  string
		extra  []string
		status int
	}{
		{"no such flush", fx.log, "5", nil, 2},
		{"damaged log", badLog, "0", nil, 1},
		{"report in a missing directory", fx.log, "0", []string{"--report", filepath.Join(fx.dir, "no", "r.json")}, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(fx.dir, "out.img")
			keep := []byte("an earlier crash image")
			if err := os.WriteFile(out, keep, 0o644); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"replay", "--log", tc.log, "--base", fx.base, "--out", out, "--flush", tc.flush}, tc.extra...)
			var stdout, stderr bytes.Buffer
			if st := dispatch(args, &stdout, &stderr); st != tc.status {
				t.Fatalf("status %d, want %d: %s", st, tc.status, stderr.String())
			}
			if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, keep) {
				t.Fatalf("--out changed (%v)", err)
			}
			if left, _ := filepath.Glob(filepath.Join(fx.dir, "*tmp*")); len(left) > 0 {
				t.Errorf("temporary files left: %v", left)
			}
		})
	}
}
