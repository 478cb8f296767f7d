package blk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"testing"
)

// newPCDisk is the "platter" under a VolatileCache in these tests: a
// memBackend (discard zeroes, so a replay, which zeroes discards, can be
// compared byte for byte) filled with seeded random bytes.
func newPCDisk(size int, seed uint64) *memBackend {
	d := newMemBackend(size)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range d.data {
		d.data[i] = byte(r.Uint32())
	}
	return d
}

// pcOp is one step of a scripted workload.
type pcOp struct {
	kind   byte // 'w' write, 'd' discard, 'z' write-zeroes, 's' sync
	off, n int64
	fill   byte // data of a write: fill, fill+1, ... per byte
}

func (o pcOp) data() []byte {
	b := make([]byte, o.n)
	for i := range b {
		b[i] = o.fill + byte(i*7)
	}
	return b
}

// run issues op on b.
func (o pcOp) run(b Backend) error {
	switch o.kind {
	case 'w':
		v := NewVec(2)
		d := o.data()
		// Two buffers, to exercise scatter/gather.
		h := (o.n / 2) &^ 511
		if err := v.Append(d[:h]); err != nil {
			return err
		}
		if err := v.Append(d[h:]); err != nil {
			return err
		}
		return b.WriteAt(v, o.off)
	case 'd':
		return b.Discard(o.off, o.n)
	case 'z':
		return b.WriteZeroes(o.off, o.n, false)
	case 's':
		return b.Sync()
	}
	return fmt.Errorf("bad op %q", o.kind)
}

// applyTo applies the part x of write op o to img (the reference).
func (o pcOp) applyTo(img []byte, x Extent) {
	switch o.kind {
	case 'w':
		d := o.data()
		copy(img[x.Offset:x.End()], d[x.Offset-o.off:x.End()-o.off])
	case 'd', 'z':
		clear(img[x.Offset:x.End()])
	}
}

func (o pcOp) String() string {
	if o.kind == 's' {
		return "S"
	}
	return fmt.Sprintf("%c[%d,+%d)", o.kind, o.off, o.n)
}

// reference computes the image a power cut must leave: the base, every
// write before the last sync, then the kept parts of the unstable writes
// (as the report says) in submission order. It also returns the unstable
// writes so the report can be checked against them.
func reference(base []byte, ops []pcOp, rep *PowerCutReport) ([]byte, []pcOp) {
	img := append([]byte(nil), base...)
	lastSync := -1
	for i, o := range ops {
		if o.kind == 's' {
			lastSync = i
		}
	}
	var unstable []pcOp
	for i, o := range ops {
		if o.kind == 's' {
			continue
		}
		if i < lastSync {
			o.applyTo(img, Extent{o.off, o.n})
		} else {
			unstable = append(unstable, o)
		}
	}
	if rep != nil {
		for i, w := range rep.Writes {
			if i < len(unstable) {
				for _, x := range w.keptExtents() {
					unstable[i].applyTo(img, x)
				}
			}
		}
	}
	return img, unstable
}

func newTestCache(t *testing.T, d *memBackend, max int64) *VolatileCache {
	t.Helper()
	c, err := NewVolatileCache(d, VolatileCacheOptions{MaxUnstableBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func runOps(t *testing.T, b Backend, ops []pcOp) {
	t.Helper()
	for _, o := range ops {
		if err := o.run(b); err != nil {
			t.Fatalf("%v: %v", o, err)
		}
	}
}

func w(off, n int64, fill byte) pcOp { return pcOp{kind: 'w', off: off, n: n, fill: fill} }

var syncOp = pcOp{kind: 's'}

// TestVolatileCacheDurabilityRule checks scripted workloads against the
// virtio rule under lose-all (only synced writes survive) and keep-all
// (everything survives), and that reads always see the newest data.
func TestVolatileCacheDurabilityRule(t *testing.T) {
	const size = 64 << 10
	cases := []struct {
		name string
		ops  []pcOp
	}{
		{"nothing", nil},
		{"write, no sync", []pcOp{w(0, 4096, 1)}},
		{"write, sync", []pcOp{w(0, 4096, 1), syncOp}},
		{"write, sync, write", []pcOp{w(0, 4096, 1), syncOp, w(8192, 4096, 2)}},
		{"overwrite after sync", []pcOp{w(0, 8192, 1), syncOp, w(4096, 8192, 2)}},
		{"overwrite before sync", []pcOp{w(0, 8192, 1), w(4096, 8192, 2), syncOp}},
		{"write-through: sync after each write", []pcOp{w(0, 4096, 1), syncOp, w(2048, 4096, 2), syncOp, w(512, 512, 3), syncOp}},
		{"write-through then write-back", []pcOp{w(0, 4096, 1), syncOp, w(1024, 4096, 2)}},
		// WCE toggled with unstable writes pending: the first write-through
		// write's Sync covers the pending write-back writes too.
		{"write-back, then write-through", []pcOp{w(0, 4096, 1), w(8192, 4096, 2), w(16384, 512, 3), syncOp}},
		{"unstable discard", []pcOp{w(0, 8192, 1), syncOp, {kind: 'd', off: 0, n: 4096}}},
		{"stable discard", []pcOp{{kind: 'd', off: 0, n: 4096}, syncOp, w(0, 512, 9)}},
		{"unstable write-zeroes", []pcOp{syncOp, {kind: 'z', off: 4096, n: 8192}, w(8192, 512, 5)}},
		{"sync with nothing to cover", []pcOp{syncOp, syncOp, w(0, 512, 1)}},
	}
	for _, tc := range cases {
		for _, p := range []PowerCutKind{PowerCutLoseAll, PowerCutKeepAll} {
			t.Run(tc.name+"/"+string(p), func(t *testing.T) {
				d := newPCDisk(size, 1)
				base := d.image()
				c := newTestCache(t, d, 0)
				runOps(t, c, tc.ops)
				newest, _ := reference(base, append(tc.ops, syncOp), nil)
				got := make([]byte, size)
				v := NewVec(1)
				v.Append(got)
				if err := c.ReadAt(v, 0); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, newest) {
					t.Fatal("ReadAt does not see the newest data")
				}
				rep, err := c.PowerCut(PowerCutPolicy{Kind: p}, 1)
				if err != nil {
					t.Fatal(err)
				}
				want, unstable := reference(base, tc.ops, rep)
				if !bytes.Equal(d.image(), want) {
					t.Fatalf("image after cut differs from the reference (report %+v)", rep)
				}
				if rep.Unstable != len(unstable) {
					t.Fatalf("%d unstable writes reported, want %d", rep.Unstable, len(unstable))
				}
				if p == PowerCutLoseAll && rep.Lost != rep.Unstable || p == PowerCutKeepAll && rep.Kept != rep.Unstable {
					t.Fatalf("fates do not match %s: %+v", p, rep)
				}
			})
		}
	}
}

// TestWriteDuringSyncNotCovered: a write that completes while a Sync is in
// flight is not made stable by that Sync, even though the Sync returns
// after it; the next Sync covers it.
func TestWriteDuringSyncNotCovered(t *testing.T) {
	for _, second := range []bool{false, true} {
		t.Run(fmt.Sprintf("second sync=%v", second), func(t *testing.T) {
			d := newPCDisk(64<<10, 2)
			base := d.image()
			c := newTestCache(t, d, 0)
			w1, w2 := w(0, 4096, 1), w(8192, 4096, 2)
			runOps(t, c, []pcOp{w1})
			d.hold()
			done := make(chan error)
			go func() { done <- c.Sync() }()
			<-d.entered
			if err := w2.run(c); err != nil {
				t.Fatal(err)
			}
			d.release()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if second {
				runOps(t, c, []pcOp{syncOp})
			}
			rep, err := c.PowerCut(PowerCutPolicy{Kind: PowerCutLoseAll}, 0)
			if err != nil {
				t.Fatal(err)
			}
			want := append([]byte(nil), base...)
			w1.applyTo(want, Extent{w1.off, w1.n})
			if second {
				w2.applyTo(want, Extent{w2.off, w2.n})
				if rep.Unstable != 0 {
					t.Fatalf("after a second sync %d writes unstable", rep.Unstable)
				}
			} else if rep.Unstable != 1 || rep.Writes[0].Offset != w2.off {
				t.Fatalf("want only the write completed during the sync unstable, report %+v", rep)
			}
			if !bytes.Equal(d.image(), want) {
				t.Fatal("image differs from the virtio rule")
			}
		})
	}
}

// TestSyncInFlightAtCut: a Sync that has not returned when the power is
// cut covers nothing, returns ErrPowerLost, and every later call fails
// with ErrPowerLost.
func TestSyncInFlightAtCut(t *testing.T) {
	d := newPCDisk(64<<10, 3)
	base := d.image()
	c := newTestCache(t, d, 0)
	runOps(t, c, []pcOp{w(0, 4096, 1)})
	d.hold()
	syncErr := make(chan error)
	go func() { syncErr <- c.Sync() }()
	<-d.entered
	cut := make(chan error)
	go func() {
		_, err := c.PowerCut(PowerCutPolicy{Kind: PowerCutLoseAll}, 0)
		cut <- err
	}()
	// The cut waits for the lower Sync in progress; new calls already fail.
	for !c.Stats().PowerCut { // PowerCut sets the flag before waiting
		runtime.Gosched()
	}
	if err := w(8192, 512, 3).run(c); !errors.Is(err, ErrPowerLost) {
		t.Fatalf("write after the cut: %v, want ErrPowerLost", err)
	}
	d.release()
	if err := <-syncErr; !errors.Is(err, ErrPowerLost) {
		t.Fatalf("sync in flight at the cut returned %v, want ErrPowerLost", err)
	}
	if err := <-cut; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.image(), base) {
		t.Fatal("a write covered only by an unfinished sync survived lose-all")
	}
	v := NewVec(1)
	v.Append(make([]byte, 512))
	for name, err := range map[string]error{
		"read":    c.ReadAt(v, 0),
		"write":   c.WriteAt(v, 0),
		"sync":    c.Sync(),
		"discard": c.Discard(0, 512),
		"zeroes":  c.WriteZeroes(0, 512, true),
	} {
		if !errors.Is(err, ErrPowerLost) {
			t.Errorf("%s after the cut: %v, want ErrPowerLost", name, err)
		}
	}
	if _, err := c.PowerCut(PowerCutPolicy{Kind: PowerCutKeepAll}, 0); !errors.Is(err, ErrPowerLost) {
		t.Errorf("second cut: %v, want ErrPowerLost", err)
	}
}

// TestWriteThroughEveryPolicy: with Sync after each write (how the device
// expresses write-through), no policy can lose anything.
func TestWriteThroughEveryPolicy(t *testing.T) {
	for _, p := range allTestPolicies() {
		t.Run(p.String(), func(t *testing.T) {
			d := newPCDisk(64<<10, 4)
			base := d.image()
			c := newTestCache(t, d, 0)
			var ops []pcOp
			r := rand.New(rand.NewPCG(4, 4))
			for i := range 30 {
				ops = append(ops, randomOp(r, 64<<10, byte(i)), syncOp)
			}
			runOps(t, c, ops)
			rep, err := c.PowerCut(p, 99)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Unstable != 0 {
				t.Fatalf("%d unstable writes under write-through", rep.Unstable)
			}
			want, _ := reference(base, ops, rep)
			if !bytes.Equal(d.image(), want) {
				t.Fatal("write-through data lost")
			}
		})
	}
}

func allTestPolicies() []PowerCutPolicy {
	return []PowerCutPolicy{
		{Kind: PowerCutLoseAll}, {Kind: PowerCutKeepAll}, {Kind: PowerCutRandomSubset},
		{Kind: PowerCutRandomSectors, AtomicUnit: 512}, {Kind: PowerCutRandomSectors, AtomicUnit: 4096},
		{Kind: PowerCutPrefix},
	}
}

// randomOp returns a write (mostly), discard or write-zeroes at a random
// sector-aligned place of a disk of size bytes, up to 16 KiB long.
func randomOp(r *rand.Rand, size int64, fill byte) pcOp {
	n := (1 + r.Int64N(32)) * 512
	off := r.Int64N((size-n)/512+1) * 512
	switch r.IntN(8) {
	case 0:
		return pcOp{kind: 'd', off: off, n: n}
	case 1:
		return pcOp{kind: 'z', off: off, n: n}
	}
	return pcOp{kind: 'w', off: off, n: n, fill: fill}
}

// TestOverlappingWritesEveryPolicy runs random overlapping workloads and
// checks, for every policy and many seeds, that the undo-log cut leaves
// exactly the image of the redo construction (stable writes, then the kept
// parts of the unstable ones in submission order), that the report lists
// the unstable writes in order, and that each policy's fates obey it.
func TestOverlappingWritesEveryPolicy(t *testing.T) {
	const size = 32 << 10 // small, so writes overlap a lot
	for _, p := range allTestPolicies() {
		t.Run(p.String(), func(t *testing.T) {
			for seed := range uint64(40) {
				r := rand.New(rand.NewPCG(seed, 7))
				var ops []pcOp
				for i := range 10 + r.IntN(20) {
					if r.IntN(6) == 0 {
						ops = append(ops, syncOp)
					}
					ops = append(ops, randomOp(r, size, byte(i*13+1)))
				}
				d := newPCDisk(size, seed)
				base := d.image()
				c := newTestCache(t, d, 0)
				runOps(t, c, ops)
				rep, err := c.PowerCut(p, seed)
				if err != nil {
					t.Fatal(err)
				}
				want, unstable := reference(base, ops, rep)
				if len(rep.Writes) != len(unstable) {
					t.Fatalf("seed %d: report lists %d writes, want %d", seed, len(rep.Writes), len(unstable))
				}
				for i, u := range unstable {
					if got := rep.Writes[i]; got.Offset != u.off || got.Length != u.n {
						t.Fatalf("seed %d: report write %d is [%d,+%d), want %v", seed, i, got.Offset, got.Length, u)
					}
				}
				if !bytes.Equal(d.image(), want) {
					t.Fatalf("seed %d: image differs from the redo reference; ops %v; report %+v", seed, ops, rep)
				}
				checkFates(t, p, rep)
			}
		})
	}
}

// checkFates checks that a report's fates are ones p can produce.
func checkFates(t *testing.T, p PowerCutPolicy, rep *PowerCutReport) {
	t.Helper()
	seenLost := false
	for i, w := range rep.Writes {
		switch p.Kind {
		case PowerCutLoseAll:
			if w.Fate != FateLost {
				t.Fatalf("lose-all kept write %d", i)
			}
		case PowerCutKeepAll:
			if w.Fate != FateKept {
				t.Fatalf("keep-all lost write %d", i)
			}
		case PowerCutRandomSubset:
			if w.Fate == FateTorn {
				t.Fatalf("random-subset tore write %d", i)
			}
		case PowerCutPrefix:
			if w.Fate == FateTorn || w.Fate == FateKept && seenLost {
				t.Fatalf("prefix kept write %d after a lost one", i)
			}
			seenLost = seenLost || w.Fate == FateLost
		case PowerCutRandomSectors:
			for _, x := range w.Kept {
				if x.Offset != w.Offset && x.Offset%p.unit() != 0 || x.End() != w.Offset+w.Length && x.End()%p.unit() != 0 {
					t.Fatalf("write %d torn inside an atomic unit: kept %+v of [%d,+%d)", i, x, w.Offset, w.Length)
				}
			}
		}
	}
}

// TestNoResurrection: two unstable overlapping writes under random-subset
// give exactly one of the four images a real disk can produce, never the
// older write's data over the newer one when the newer is kept; and every
// one of the four happens for some seed.
func TestNoResurrection(t *testing.T) {
	const size = 16 << 10
	older, newer := w(0, 8192, 0x10), w(4096, 8192, 0x80)
	seen := map[string]bool{}
	for seed := range uint64(64) {
		d := newPCDisk(size, 5)
		base := d.image()
		c := newTestCache(t, d, 0)
		runOps(t, c, []pcOp{older, newer})
		rep, err := c.PowerCut(PowerCutPolicy{Kind: PowerCutRandomSubset}, seed)
		if err != nil {
			t.Fatal(err)
		}
		k1, k2 := rep.Writes[0].Fate == FateKept, rep.Writes[1].Fate == FateKept
		want := append([]byte(nil), base...)
		if k1 {
			older.applyTo(want, Extent{older.off, older.n})
		}
		if k2 {
			newer.applyTo(want, Extent{newer.off, newer.n})
		}
		if !bytes.Equal(d.image(), want) {
			t.Fatalf("seed %d: kept older=%v newer=%v: wrong image", seed, k1, k2)
		}
		seen[fmt.Sprint(k1, k2)] = true
	}
	if len(seen) != 4 {
		t.Fatalf("only outcomes %v over 64 seeds", seen)
	}
}

// TestPolicyDeterminism: the same workload, policy and seed give the same
// report and image; different seeds give different ones.
func TestPolicyDeterminism(t *testing.T) {
	const size = 256 << 10
	r := rand.New(rand.NewPCG(11, 11))
	var ops []pcOp
	for i := range 40 {
		ops = append(ops, randomOp(r, size, byte(i+1)))
	}
	cut := func(p PowerCutPolicy, seed uint64) (string, []byte) {
		d := newPCDisk(size, 6)
		c := newTestCache(t, d, 0)
		runOps(t, c, ops)
		rep, err := c.PowerCut(p, seed)
		if err != nil {
			t.Fatal(err)
		}
		j, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		return string(j), d.image()
	}
	for _, p := range allTestPolicies() {
		t.Run(p.String(), func(t *testing.T) {
			distinct := map[string]bool{}
			for seed := range uint64(6) {
				r1, i1 := cut(p, seed)
				r2, i2 := cut(p, seed)
				if r1 != r2 || !bytes.Equal(i1, i2) {
					t.Fatalf("seed %d: two cuts differ", seed)
				}
				distinct[r1] = true
			}
			want := 6
			if p.Kind == PowerCutLoseAll || p.Kind == PowerCutKeepAll {
				want = 1 // no randomness
			}
			if p.Kind == PowerCutPrefix {
				want = 4 // 41 possible prefixes: a collision among 6 seeds is possible
			}
			if len(distinct) < want {
				t.Fatalf("6 seeds gave %d distinct results, want at least %d", len(distinct), want)
			}
		})
	}
}

// TestDestageBound: unstable data never exceeds the bound; the oldest
// writes are destaged first; a write larger than the bound is written
// through after destaging the writes it overlaps.
func TestDestageBound(t *testing.T) {
	const size, max = 256 << 10, 16 << 10
	d := newPCDisk(size, 8)
	base := d.image()
	c := newTestCache(t, d, max)
	var ops []pcOp
	for i := range 10 {
		o := w(int64(i)*4096, 4096, byte(i+1))
		ops = append(ops, o)
		runOps(t, c, []pcOp{o})
		if s := c.Stats(); s.UnstableBytes > max {
			t.Fatalf("after write %d: %d unstable bytes, bound %d", i, s.UnstableBytes, max)
		}
	}
	if s := c.Stats(); s.Destaged != 6 || s.UnstableWrites != 4 {
		t.Fatalf("stats %+v, want 6 destaged and 4 unstable", s)
	}
	// 64 KiB over the first 8 writes: bigger than the bound.
	big := w(16<<10, 64<<10, 0x55)
	runOps(t, c, []pcOp{big})
	if s := c.Stats(); s.WrittenThrough != 1 || s.UnstableWrites != 0 {
		t.Fatalf("after a write larger than the bound: %+v", s)
	}
	tail := w(200<<10, 4096, 0x77)
	runOps(t, c, []pcOp{tail})
	rep, err := c.PowerCut(PowerCutPolicy{Kind: PowerCutLoseAll}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Unstable != 1 {
		t.Fatalf("report %+v, want only the last write unstable", rep)
	}
	want := append([]byte(nil), base...)
	for _, o := range append(ops, big) {
		o.applyTo(want, Extent{o.off, o.n})
	}
	if !bytes.Equal(d.image(), want) {
		t.Fatal("destaged or written-through data lost")
	}
}

// TestDestageBoundConcurrent: many writers at once never push unstable
// data past the bound.
func TestDestageBoundConcurrent(t *testing.T) {
	const size, max = 1 << 20, 32 << 10
	d := newPCDisk(size, 9)
	c := newTestCache(t, d, max)
	var wg sync.WaitGroup
	var over sync.Once
	overflow := false
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for i := range 200 {
				if err := randomOp(r, size, byte(i)).run(c); err != nil {
					t.Error(err)
					return
				}
				if s := c.Stats(); s.UnstableBytes > max {
					over.Do(func() { overflow = true })
				}
				if i%50 == 0 {
					if err := c.Sync(); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if overflow {
		t.Fatal("unstable bytes exceeded the bound")
	}
}

// TestTornOnlyAtAtomicUnit: under random-sectors every atomic unit of a
// write (aligned on the disk) is all new or all old, and writes do tear.
func TestTornOnlyAtAtomicUnit(t *testing.T) {
	for _, unit := range []int64{512, 4096} {
		t.Run(fmt.Sprint(unit), func(t *testing.T) {
			const size = 1 << 20
			d := newPCDisk(size, 10)
			base := d.image()
			c := newTestCache(t, d, 0)
			var ops []pcOp
			for i := range 40 {
				// Disjoint 24 KiB slots; writes start 3 sectors in, so
				// they begin and end inside 4 KiB units.
				ops = append(ops, w(int64(i)*24576+1536, 16384, byte(i+1)))
			}
			runOps(t, c, ops)
			rep, err := c.PowerCut(PowerCutPolicy{Kind: PowerCutRandomSectors, AtomicUnit: unit}, 3)
			if err != nil {
				t.Fatal(err)
			}
			img := d.image()
			if rep.Torn == 0 {
				t.Fatal("no write torn")
			}
			for i, o := range ops {
				data := o.data()
				for u := o.off / unit * unit; u < o.off+o.n; u += unit {
					lo, hi := max(u, o.off), min(u+unit, o.off+o.n)
					isNew := bytes.Equal(img[lo:hi], data[lo-o.off:hi-o.off])
					isOld := bytes.Equal(img[lo:hi], base[lo:hi])
					if !isNew && !isOld {
						t.Fatalf("write %d torn inside the unit at %d", i, u)
					}
				}
			}
			checkFates(t, PowerCutPolicy{Kind: PowerCutRandomSectors, AtomicUnit: unit}, rep)
		})
	}
}

// TestConcurrentCut: writers that sync after every write (fsync-style)
// race with a power cut; every version whose Sync returned survives (or a
// newer one), calls after the cut fail with ErrPowerLost, nothing hangs.
func TestConcurrentCut(t *testing.T) {
	for _, p := range allTestPolicies() {
		t.Run(p.String(), func(t *testing.T) {
			const writers, slot = 6, 4096
			d := newPCDisk(writers*slot, 12)
			c := newTestCache(t, d, 0)
			acked := make([]int, writers)
			var wg sync.WaitGroup
			for g := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					b := make([]byte, slot)
					v := NewVec(1)
					for ver := 1; ver < 256; ver++ {
						for i := range b {
							b[i] = byte(ver)
						}
						v.Reset()
						v.Append(b)
						if err := c.WriteAt(v, int64(g)*slot); err != nil {
							if !errors.Is(err, ErrPowerLost) {
								t.Error(err)
							}
							return
						}
						if err := c.Sync(); err != nil {
							if !errors.Is(err, ErrPowerLost) {
								t.Error(err)
							}
							return
						}
						acked[g] = ver
					}
				}()
			}
			rep, err := c.PowerCut(p, 5)
			wg.Wait()
			if err != nil {
				t.Fatal(err)
			}
			img := d.image()
			for g := range writers {
				got := img[g*slot : (g+1)*slot]
				ver := int(got[0])
				if acked[g] > 0 && (ver < acked[g] || !bytes.Equal(got, bytes.Repeat([]byte{got[0]}, slot))) && p.Kind != PowerCutRandomSectors {
					t.Fatalf("writer %d: acknowledged version %d, disk has %d (report %s)", g, acked[g], ver, rep.Summary())
				}
				if p.Kind == PowerCutRandomSectors {
					for s := 0; s < slot; s += 512 {
						if v := int(got[s]); acked[g] > 0 && v < acked[g] {
							t.Fatalf("writer %d: sector %d older than the acknowledged version", g, s/512)
						}
					}
				}
			}
		})
	}
}

func TestParsePowerCutPolicy(t *testing.T) {
	cases := []struct {
		in   string
		want PowerCutPolicy
		ok   bool
	}{
		{"lose-all", PowerCutPolicy{Kind: PowerCutLoseAll}, true},
		{"keep-all", PowerCutPolicy{Kind: PowerCutKeepAll}, true},
		{"random-subset", PowerCutPolicy{Kind: PowerCutRandomSubset}, true},
		{"prefix", PowerCutPolicy{Kind: PowerCutPrefix}, true},
		{"random-sectors", PowerCutPolicy{Kind: PowerCutRandomSectors, AtomicUnit: 512}, true},
		{"random-sectors:512", PowerCutPolicy{Kind: PowerCutRandomSectors, AtomicUnit: 512}, true},
		{"random-sectors:4k", PowerCutPolicy{Kind: PowerCutRandomSectors, AtomicUnit: 4096}, true},
		{"random-sectors:4096", PowerCutPolicy{Kind: PowerCutRandomSectors, AtomicUnit: 4096}, true},
		{"random-sectors:1k", PowerCutPolicy{}, false},
		{"prefix:4k", PowerCutPolicy{}, false},
		{"lose_all", PowerCutPolicy{}, false},
		{"", PowerCutPolicy{}, false},
	}
	for _, tc := range cases {
		got, err := ParsePowerCutPolicy(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("ParsePowerCutPolicy(%q) = %+v, %v", tc.in, got, err)
		}
		if err != nil && !errors.Is(err, ErrBadPowerCutPolicy) {
			t.Errorf("ParsePowerCutPolicy(%q): error %v is not ErrBadPowerCutPolicy", tc.in, err)
		}
		if tc.ok {
			back, err := ParsePowerCutPolicy(got.String())
			if err != nil || back != got {
				t.Errorf("%q does not round-trip through String: %q", tc.in, got.String())
			}
		}
	}
	if err := (PowerCutPolicy{Kind: PowerCutRandomSectors, AtomicUnit: 1024}).Validate(); !errors.Is(err, ErrBadPowerCutPolicy) {
		t.Errorf("unit 1024 accepted: %v", err)
	}
}

func TestExtentSet(t *testing.T) {
	var s extentSet
	for _, e := range []Extent{{100, 10}, {0, 10}, {50, 10}, {10, 5}, {58, 44}} {
		s.add(e)
	}
	want := []Extent{{0, 15}, {50, 60}}
	if fmt.Sprint(s.es) != fmt.Sprint(want) {
		t.Fatalf("set %v, want %v", s.es, want)
	}
	var gaps []Extent
	s.gaps(Extent{5, 200}, func(g Extent) error { gaps = append(gaps, g); return nil })
	if fmt.Sprint(gaps) != fmt.Sprint([]Extent{{15, 35}, {110, 95}}) {
		t.Fatalf("gaps %v", gaps)
	}
}

// TestVolatileCacheWriteAllocs: once warm, a write (pre-image buffers and
// records recycled) and a read allocate nothing, whether flushes or the
// destage bound retire the unstable writes.
func TestVolatileCacheWriteAllocs(t *testing.T) {
	for _, syncEvery := range []int64{8, 0} {
		t.Run(fmt.Sprintf("sync every %d", syncEvery), func(t *testing.T) {
			d := newPCDisk(1<<20, 13)
			c := newTestCache(t, d, 64<<10)
			v := NewVec(1)
			v.Append(make([]byte, 4096))
			var off, n int64
			op := func() {
				if err := c.WriteAt(v, off); err != nil {
					t.Fatal(err)
				}
				if err := c.ReadAt(v, off); err != nil {
					t.Fatal(err)
				}
				off = (off + 4096) % (1 << 20)
				if n++; syncEvery > 0 && n%syncEvery == 0 {
					if err := c.Sync(); err != nil {
						t.Fatal(err)
					}
				}
			}
			for range 1000 {
				op()
			}
			if a := testing.AllocsPerRun(1000, op); a > 0 {
				t.Fatalf("%.3f allocations per write+read", a)
			}
		})
	}
}

// BenchmarkWrite4K measures a 4 KiB write (plus a Sync every 16 writes)
// directly on memory, through the volatile cache, and through a write log
// over the cache: the cost of the model is the pre-image read and copy.
func BenchmarkWrite4K(b *testing.B) {
	for _, layer := range []string{"direct", "cache", "log+cache"} {
		b.Run(layer, func(b *testing.B) {
			var be Backend = newPCDisk(64<<20, 1)
			if layer != "direct" {
				c, err := NewVolatileCache(be, VolatileCacheOptions{})
				if err != nil {
					b.Fatal(err)
				}
				be = c
			}
			if layer == "log+cache" {
				l, err := CreateWriteLog(be, b.TempDir()+"/log")
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				be = l
			}
			v := NewVec(1)
			v.Append(make([]byte, 4096))
			b.SetBytes(4096)
			b.ReportAllocs()
			var off int64
			for i := 0; b.Loop(); i++ {
				if err := be.WriteAt(v, off); err != nil {
					b.Fatal(err)
				}
				off = (off + 4096*7) % (64 << 20)
				if i%16 == 15 {
					if err := be.Sync(); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// TestFreezeThenCut: Freeze stops the disk at once (a trigger's exact
// point); PowerCut later decides the unstable writes frozen in place.
func TestFreezeThenCut(t *testing.T) {
	d := newPCDisk(64<<10, 14)
	base := d.image()
	c := newTestCache(t, d, 0)
	ops := []pcOp{w(0, 4096, 1), syncOp, w(4096, 4096, 2)}
	runOps(t, c, ops)
	select {
	case <-c.Frozen():
		t.Fatal("frozen before Freeze")
	default:
	}
	if !c.Freeze() || c.Freeze() {
		t.Fatal("Freeze should report true once, then false")
	}
	<-c.Frozen()
	if err := w(8192, 512, 3).run(c); !errors.Is(err, ErrPowerLost) {
		t.Fatalf("write after Freeze: %v", err)
	}
	rep, err := c.PowerCut(PowerCutPolicy{Kind: PowerCutKeepAll}, 0)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := reference(base, ops, rep)
	if rep.Unstable != 1 || rep.Kept != 1 || !bytes.Equal(d.image(), want) {
		t.Fatalf("report %s; image matches: %v", rep.Summary(), bytes.Equal(d.image(), want))
	}
	if _, err := c.PowerCut(PowerCutPolicy{Kind: PowerCutLoseAll}, 0); !errors.Is(err, ErrPowerLost) {
		t.Fatalf("second cut: %v", err)
	}
}

// TestVolatileCacheOverFile: the model over the real file backend
// (buffered and O_DIRECT, whose pre-image buffers are not aligned and go
// through its bounce path) leaves the reference image.
func TestVolatileCacheOverFile(t *testing.T) {
	const size = 256 << 10
	for _, direct := range []bool{false, true} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			path := t.TempDir() + "/disk.img"
			base := newPCDisk(size, 15).image()
			if err := os.WriteFile(path, base, 0o644); err != nil {
				t.Fatal(err)
			}
			fb, err := OpenFile(path, FileOptions{Direct: direct})
			if errors.Is(err, ErrNoDirectIO) {
				t.Skip("no O_DIRECT on the temporary directory's file system")
			}
			if err != nil {
				t.Fatal(err)
			}
			c, err := NewVolatileCache(fb, VolatileCacheOptions{})
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(15, 15))
			var ops []pcOp
			for i := range 60 {
				if r.IntN(8) == 0 {
					ops = append(ops, syncOp)
				}
				o := randomOp(r, size, byte(i+1))
				if o.kind == 'd' {
					o.kind = 'z' // what a file's discard leaves is up to the file system
				}
				ops = append(ops, o)
			}
			runOps(t, c, ops)
			rep, err := c.PowerCut(PowerCutPolicy{Kind: PowerCutRandomSectors, AtomicUnit: 4096}, 15)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := reference(base, ops, rep)
			if !bytes.Equal(got, want) {
				t.Fatalf("file after the cut differs from the reference (%s)", rep.Summary())
			}
		})
	}
}
