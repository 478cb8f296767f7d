package blk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// clOp is one call a test makes on a WriteLog: 'w' writes data at off,
// 'z' writes zeroes, 'd' discards, 's' syncs, 'm' marks.
type clOp struct {
	kind byte
	off  int64
	n    int64
	data []byte
}

func cw(off int64, data []byte) clOp { return clOp{kind: 'w', off: off, data: data} }

// run issues o on l.
func (o clOp) run(l *WriteLog) error {
	switch o.kind {
	case 'w':
		v := NewVec(1)
		v.Append(o.data)
		return l.WriteAt(v, o.off)
	case 'z':
		return l.WriteZeroes(o.off, o.n, true)
	case 'd':
		return l.Discard(o.off, o.n)
	case 's':
		return l.Sync()
	case 'm':
		return l.Mark("mark")
	}
	return fmt.Errorf("unknown op %q", o.kind)
}

// crashFixture is a base image and a write log recorded over it.
type crashFixture struct {
	base    []byte
	logPath string
	cl      *CrashLog
}

// newCrashFixture records ops over a copy of base and indexes the log.
func newCrashFixture(t *testing.T, base []byte, ops []clOp) *crashFixture {
	t.Helper()
	lower := newMemBackend(len(base))
	copy(lower.data, base)
	logPath := filepath.Join(t.TempDir(), "log")
	l, err := CreateWriteLog(lower, logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range ops {
		if err := o.run(l); err != nil {
			t.Fatalf("%c at %d: %v", o.kind, o.off, err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return &crashFixture{base: base, logPath: logPath, cl: indexLog(t, logPath, base)}
}

func indexLog(t *testing.T, logPath string, base []byte) *CrashLog {
	t.Helper()
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	lr, err := NewWriteLogReader(f)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := NewCrashLog(lr, bytes.NewReader(base), int64(len(base)))
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// reference builds st's bytes the slow way: the base, then the entries'
// data read one by one.
func (fx *crashFixture) reference(t *testing.T, st CrashState) []byte {
	t.Helper()
	img := bytes.Clone(fx.base)
	es := fx.cl.Entries()
	apply := func(e WriteLogEntry, off, n int64) {
		dst := img[e.Offset+off : e.Offset+off+n]
		if e.IsDiscard() {
			clear(dst)
		} else if err := fx.cl.lr.ReadData(e, dst, off); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range es[:st.Prefix] {
		if e.HasData() || e.IsDiscard() {
			apply(e, 0, e.Length)
		}
	}
	for _, p := range st.Pieces {
		e := es[p.Entry]
		n := p.Length
		if n == 0 {
			n = e.Length - p.Offset
		}
		apply(e, p.Offset, n)
	}
	return img
}

// hashOf is the hash definition applied to two whole images.
func hashOf(base, img []byte) string {
	var lo, hi uint64
	for off := 0; off < len(img); off += 512 {
		sec := img[off : off+512]
		if bytes.Equal(sec, base[off:off+512]) {
			continue
		}
		var le [8]byte
		binary.LittleEndian.PutUint64(le[:], uint64(off/512))
		sum := sha256.Sum256(append(le[:], sec...))
		lo += binary.LittleEndian.Uint64(sum[0:])
		hi += binary.LittleEndian.Uint64(sum[8:])
	}
	return fmt.Sprintf("%016x%016x", lo, hi)
}

// materialize writes img to a file and reads it back.
func materialize(t *testing.T, img *CrashImage) []byte {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("stale")); err != nil {
		t.Fatal(err)
	}
	if err := img.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fill(n int, seed byte) []byte { return pattern(n, seed) }

// standardOps is a workload with every kind of entry:
//
//	0 write 8 KiB at 4096     1 write 1 KiB at 0    2 flush
//	3 zeroes 4 KiB at 8192    4 discard 2 KiB at 0   5 mark
//	6 write 4 KiB at 16384    7 flush               8 write 512 at 4096
var standardOps = []clOp{
	cw(4096, fill(8192, 1)), cw(0, fill(1024, 2)), {kind: 's'},
	{kind: 'z', off: 8192, n: 4096}, {kind: 'd', off: 0, n: 2048}, {kind: 'm'},
	cw(16384, fill(4096, 3)), {kind: 's'}, cw(4096, fill(512, 4)),
}

func TestCrashImageContent(t *testing.T) {
	bases := map[string][]byte{"random base": newPCDisk(64<<10, 5).image(), "zero base": make([]byte, 64<<10)}
	states := []CrashState{
		{ID: "base"},
		{ID: "all", Prefix: 9},
		{ID: "to first flush", Prefix: 2},
		{ID: "flush, torn write", Prefix: 3, Pieces: []CrashPiece{{Entry: 6, Offset: 1024, Length: 1024}}},
		{ID: "pieces out of order", Prefix: 0, Pieces: []CrashPiece{{Entry: 8}, {Entry: 0, Length: 512}, {Entry: 3}}},
		{ID: "discard piece", Prefix: 2, Pieces: []CrashPiece{{Entry: 4, Offset: 512, Length: 512}}},
		{ID: "write after its overwrite", Prefix: 9, Pieces: []CrashPiece{{Entry: 0}}},
	}
	for name, base := range bases {
		fx := newCrashFixture(t, base, standardOps)
		for _, st := range states {
			t.Run(name+"/"+st.ID, func(t *testing.T) {
				img, err := fx.cl.Image(st)
				if err != nil {
					t.Fatal(err)
				}
				want := fx.reference(t, st)
				if got := materialize(t, img); !bytes.Equal(got, want) {
					t.Fatal("WriteTo differs from the reference image")
				}
				part := make([]byte, 6<<10)
				if err := img.ReadAt(part, 3072); err != nil || !bytes.Equal(part, want[3072:3072+len(part)]) {
					t.Fatalf("ReadAt differs from the reference image (%v)", err)
				}
				h, err := img.Hash()
				if err != nil || h != hashOf(base, want) {
					t.Fatalf("Hash = %s, %v; want %s", h, err, hashOf(base, want))
				}
				if h, err := fx.cl.StateHash(st); err != nil || h != hashOf(base, want) {
					t.Fatalf("StateHash = %s, %v; want %s", h, err, hashOf(base, want))
				}
			})
		}
	}
}

// TestCrashImageHashCanonical: states with the same bytes hash equal
// however they are built; states that differ hash differently.
func TestCrashImageHashCanonical(t *testing.T) {
	zero := make([]byte, 64<<10)
	x := fill(512, 7)
	y := bytes.Clone(x)
	y[100] ^= 1
	log := []clOp{
		cw(0, fill(4096, 1)), cw(4096, fill(4096, 2)), {kind: 's'}, // 0 1 2
		{kind: 'z', off: 0, n: 4096}, {kind: 'd', off: 4096, n: 4096}, // 3 4
		cw(8192, fill(1024, 3)), {kind: 'm'}, cw(8192, fill(512, 3)), // 5 6 7
		cw(20480, x), cw(20480, y), cw(24576, zero[:512]), // 8 9 10
	}
	fx := newCrashFixture(t, zero, log)
	cases := []struct {
		name  string
		a, b  CrashState
		equal bool
	}{
		{"zeroed and discarded == base", CrashState{Prefix: 5}, CrashState{}, true},
		{"rewriting the same bytes", CrashState{Prefix: 6}, CrashState{Prefix: 8}, true},
		{"prefix == its writes as pieces, any order", CrashState{Prefix: 2}, CrashState{Pieces: []CrashPiece{{Entry: 1}, {Entry: 0}}}, true},
		{"whole == its halves", CrashState{Pieces: []CrashPiece{{Entry: 0}}}, CrashState{Pieces: []CrashPiece{{Entry: 0, Length: 2048}, {Entry: 0, Offset: 2048}}}, true},
		{"writing zeroes over zeroes", CrashState{Prefix: 10}, CrashState{Prefix: 11}, true},
		{"one byte differs", CrashState{Pieces: []CrashPiece{{Entry: 8}}}, CrashState{Pieces: []CrashPiece{{Entry: 9}}}, false},
		{"other sector", CrashState{Pieces: []CrashPiece{{Entry: 1, Length: 512}}}, CrashState{Pieces: []CrashPiece{{Entry: 1, Offset: 512, Length: 512}}}, false},
		{"one write more", CrashState{Prefix: 1}, CrashState{Prefix: 2}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ha, hb := crashHash(t, fx.cl, tc.a), crashHash(t, fx.cl, tc.b)
			if ha == hb && !tc.equal || ha != hb && tc.equal {
				t.Fatalf("hashes %s and %s, want equal: %v", ha, hb, tc.equal)
			}
		})
	}
}

func crashHash(t *testing.T, cl *CrashLog, st CrashState) string {
	t.Helper()
	img, err := cl.Image(st)
	if err != nil {
		t.Fatal(err)
	}
	h, err := img.Hash()
	if err != nil {
		t.Fatal(err)
	}
	// The running hash agrees, whatever prefix it was at before.
	if sh, err := cl.StateHash(st); err != nil || sh != h {
		t.Fatalf("StateHash = %s, %v; Image().Hash() = %s", sh, err, h)
	}
	return h
}

// TestCrashLogRefusesBadStates: states the log cannot build are errors
// (ErrBadCrashState), from Check, Image and StateHash, never panics.
func TestCrashLogRefusesBadStates(t *testing.T) {
	fx := newCrashFixture(t, make([]byte, 64<<10), standardOps)
	cases := []struct {
		name string
		st   CrashState
		msg  string
	}{
		{"prefix past the log", CrashState{Prefix: 10}, "prefix 10"},
		{"entry past the log", CrashState{Pieces: []CrashPiece{{Entry: 9}}}, "entry 9"},
		{"huge entry", CrashState{Pieces: []CrashPiece{{Entry: 1 << 63}}}, "the log has 9"},
		{"flush entry", CrashState{Pieces: []CrashPiece{{Entry: 2}}}, "not a write or a discard"},
		{"mark entry", CrashState{Pieces: []CrashPiece{{Entry: 5}}}, "not a write or a discard"},
		{"piece past its entry", CrashState{Pieces: []CrashPiece{{Entry: 1, Offset: 512, Length: 1024}}}, "past entry 1"},
		{"offset past its entry", CrashState{Pieces: []CrashPiece{{Entry: 1, Offset: 1536}}}, "past entry 1"},
		{"huge length", CrashState{Pieces: []CrashPiece{{Entry: 0, Offset: 512, Length: 1 << 62}}}, "past entry 0"},
		{"unaligned offset", CrashState{Pieces: []CrashPiece{{Entry: 0, Offset: 100}}}, "not 512-aligned"},
		{"unaligned length", CrashState{Pieces: []CrashPiece{{Entry: 0, Length: 100}}}, "not 512-aligned"},
		{"negative offset", CrashState{Pieces: []CrashPiece{{Entry: 0, Offset: -512}}}, "not 512-aligned"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img, err := fx.cl.Image(tc.st)
			if img != nil || !errors.Is(err, ErrBadCrashState) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Image = %v, %v; want ErrBadCrashState saying %q", img, err, tc.msg)
			}
			if h, err := fx.cl.StateHash(tc.st); h != "" || !errors.Is(err, ErrBadCrashState) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("StateHash = %q, %v; want ErrBadCrashState saying %q", h, err, tc.msg)
			}
		})
	}
}

// TestNewCrashLogRefusesBadLogs: a log with an entry past the image, or
// cut short, is refused (ErrBadWriteLog).
func TestNewCrashLogRefusesBadLogs(t *testing.T) {
	fx := newCrashFixture(t, make([]byte, 64<<10), standardOps)
	raw, err := os.ReadFile(fx.logPath)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		log  []byte
		size int64
	}{
		{"entry past the image", raw, 16 << 10},
		{"log cut short", raw[:len(raw)-600], 64 << 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lr, err := NewWriteLogReader(bytes.NewReader(tc.log))
			if err != nil {
				t.Fatal(err)
			}
			cl, err := NewCrashLog(lr, bytes.NewReader(make([]byte, tc.size)), tc.size)
			if cl != nil || !errors.Is(err, ErrBadWriteLog) {
				t.Fatalf("NewCrashLog = %v, %v; want ErrBadWriteLog", cl, err)
			}
		})
	}
}

func TestCrashStateSetFile(t *testing.T) {
	dir := t.TempDir()
	set := &CrashStateSet{Log: "run.wlog", States: []CrashState{{ID: "a", Prefix: 3}, {ID: "b", Prefix: 1, Pieces: []CrashPiece{{Entry: 2, Offset: 512, Length: 512}}}}}
	path := filepath.Join(dir, "states.json")
	if err := WriteCrashStateSet(path, set); err != nil {
		t.Fatal(err)
	}
	got, err := ReadCrashStateSet(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Log != filepath.Join(dir, "run.wlog") || fmt.Sprint(got.States) != fmt.Sprint(set.States) {
		t.Fatalf("read back %+v, want %+v with the log in %s", got, set, dir)
	}
	bad := []struct{ name, json, msg string }{
		{"no log", `{"states": []}`, "no write log"},
		{"unknown field", `{"log": "l", "states": [], "extra": 1}`, "unknown field"},
		{"not json", `states`, "invalid character"},
		{"too many states", `{"log": "l", "states": [` + strings.Repeat(`{"id": "x"},`, MaxCrashStates) + `{"id": "x"}]}`, "at most 65536"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "bad.json")
			if err := os.WriteFile(p, []byte(tc.json), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := ReadCrashStateSet(p); !errors.Is(err, ErrBadCrashState) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("ReadCrashStateSet: %v, want ErrBadCrashState saying %q", err, tc.msg)
			}
		})
	}
}

// TestStateHashSeeks: StateHash agrees with Image().Hash() whichever
// prefix it was at before, stepping forward, back through its undo
// records, or starting over when they were dropped.
func TestStateHashSeeks(t *testing.T) {
	fx := newCrashFixture(t, newPCDisk(64<<10, 9).image(), standardOps)
	var states []CrashState
	for prefix := range uint64(10) {
		states = append(states, CrashState{Prefix: prefix},
			CrashState{Prefix: prefix, Pieces: []CrashPiece{{Entry: 8}, {Entry: 0, Offset: 512, Length: 1024}}},
			CrashState{Prefix: prefix, Pieces: []CrashPiece{{Entry: 4}, {Entry: 6, Length: 512}}})
	}
	defer func(n int) { maxUndo = n }(maxUndo)
	for _, undo := range []int{0, 3, 1 << 16} {
		maxUndo = undo
		r := rand.New(rand.NewPCG(uint64(undo), 1))
		for range 3 {
			r.Shuffle(len(states), func(i, j int) { states[i], states[j] = states[j], states[i] })
			for _, st := range states {
				crashHash(t, fx.cl, st)
			}
		}
	}
}
