package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// readAll returns the entries of the log at path.
func readLogEntries(t *testing.T, path string) (*WriteLogReader, []WriteLogEntry) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	lr, err := NewWriteLogReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var es []WriteLogEntry
	for {
		e, err := lr.Next()
		if err == io.EOF {
			return lr, es
		}
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
}

// TestWriteLogFormat checks the bytes of a log against the dm-log-writes
// layout (decoded here by hand, not by the reader), then the reader.
func TestWriteLogFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	d := newPCDisk(64<<10, 1)
	l, err := CreateWriteLog(d, path)
	if err != nil {
		t.Fatal(err)
	}
	w1 := w(4096, 1024, 7)
	runOps(t, l, []pcOp{w1, {kind: 'd', off: 8192, n: 4096}, syncOp, {kind: 'z', off: 0, n: 2048}})
	if err := l.Mark("checkpoint"); err != nil {
		t.Fatal(err)
	}
	w2 := w(512, 512, 9)
	runOps(t, l, []pcOp{w2})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if le.Uint64(raw[0:]) != 0x6a736677736872 || le.Uint64(raw[8:]) != 1 || le.Uint64(raw[16:]) != 6 || le.Uint32(raw[24:]) != 512 {
		t.Fatalf("super block % x", raw[:28])
	}
	// Entry 0 at sector 1: the write, its 2 sectors of data right after.
	e0 := raw[512:]
	if le.Uint64(e0[0:]) != 8 || le.Uint64(e0[8:]) != 2 || le.Uint64(e0[16:]) != 0 || le.Uint64(e0[24:]) != 0 {
		t.Fatalf("entry 0 header % x", e0[:32])
	}
	if !bytes.Equal(raw[1024:2048], w1.data()) {
		t.Fatal("entry 0 data")
	}
	// Entry 1 at sector 4: the discard, no data.
	e1 := raw[2048:]
	if le.Uint64(e1[0:]) != 16 || le.Uint64(e1[8:]) != 8 || le.Uint64(e1[16:]) != WriteLogDiscard {
		t.Fatalf("entry 1 header % x", e1[:32])
	}
	// Entry 2 at sector 5: the flush.
	if e2 := raw[2560:]; le.Uint64(e2[8:]) != 0 || le.Uint64(e2[16:]) != WriteLogFlush {
		t.Fatalf("entry 2 header % x", e2[:32])
	}

	lr, es := readLogEntries(t, path)
	if lr.SectorSize() != 512 || lr.Entries() != 6 {
		t.Fatalf("reader: sector size %d, %d entries", lr.SectorSize(), lr.Entries())
	}
	want := []struct {
		flags       uint64
		off, n      int64
		mark        string
		data        []byte
		isFlush, dz bool
	}{
		{0, 4096, 1024, "", w1.data(), false, false},
		{WriteLogDiscard, 8192, 4096, "", nil, false, false},
		{WriteLogFlush, 0, 0, "", nil, true, false},
		{0, 0, 2048, "", make([]byte, 2048), false, true},
		{WriteLogMark, 0, 0, "checkpoint", nil, false, false},
		{0, 512, 512, "", w2.data(), false, false},
	}
	if len(es) != len(want) {
		t.Fatalf("%d entries, want %d", len(es), len(want))
	}
	for i, x := range want {
		e := es[i]
		if e.Index != uint64(i) || e.Flags != x.flags || e.Offset != x.off || e.Length != x.n || e.Mark != x.mark || e.IsFlush() != x.isFlush {
			t.Errorf("entry %d = %+v, want %+v", i, e, x)
		}
		if x.data != nil {
			got := make([]byte, e.Length)
			if err := lr.ReadData(e, got, 0); err != nil || !bytes.Equal(got, x.data) {
				t.Errorf("entry %d data wrong (%v)", i, err)
			}
		}
	}
}

// TestWriteLogFlushCoversCompletedOnly: the FLUSH entry is logged when Sync
// is called; a write completing during the Sync is logged after it.
func TestWriteLogFlushCoversCompletedOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	d := newPCDisk(64<<10, 2)
	l, err := CreateWriteLog(d, path)
	if err != nil {
		t.Fatal(err)
	}
	runOps(t, l, []pcOp{w(0, 512, 1)})
	d.hold()
	done := make(chan error)
	go func() { done <- l.Sync() }()
	<-d.entered
	runOps(t, l, []pcOp{w(4096, 512, 2)})
	d.release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if l.Flushes() != 1 {
		t.Fatalf("%d flushes logged", l.Flushes())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	_, es := readLogEntries(t, path)
	var got []string
	for _, e := range es {
		if e.IsFlush() {
			got = append(got, "F")
		} else {
			got = append(got, fmt.Sprint(e.Offset))
		}
	}
	if fmt.Sprint(got) != "[0 F 4096]" {
		t.Fatalf("log order %v, want [0 F 4096]", got)
	}
}

// TestReplayMatchesModel records random workloads through a WriteLog over
// a VolatileCache, cuts the power with each policy, and replays the log to
// the last flush with the same policy and seed: the replayed image equals
// the model's, and the reports agree. Replays to every earlier flush with
// lose-all equal the stable image at that flush.
func TestReplayMatchesModel(t *testing.T) {
	const size = 64 << 10
	dir := t.TempDir()
	for _, p := range allTestPolicies() {
		t.Run(p.String(), func(t *testing.T) {
			for seed := range uint64(8) {
				r := rand.New(rand.NewPCG(seed, 21))
				var ops []pcOp
				for i := range 40 {
					if r.IntN(5) == 0 {
						ops = append(ops, syncOp)
					}
					ops = append(ops, randomOp(r, size, byte(i*5+3)))
				}
				d := newPCDisk(size, seed)
				base := d.image()
				c := newTestCache(t, d, 0)
				path := filepath.Join(dir, fmt.Sprintf("%s-%d.log", p.Kind, seed))
				l, err := CreateWriteLog(c, path)
				if err != nil {
					t.Fatal(err)
				}
				runOps(t, l, ops)
				rep, err := c.PowerCut(p, seed)
				if err != nil {
					t.Fatal(err)
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				model := d.image()

				f, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				replay := func(flush uint64, p PowerCutPolicy) ([]byte, *PowerCutReport) {
					lr, err := NewWriteLogReader(f)
					if err != nil {
						t.Fatal(err)
					}
					img := newMemBackend(len(base))
					copy(img.data, base)
					rrep, err := ReplayWriteLog(lr, img, ReplayOptions{Flush: flush, Policy: p, Seed: seed})
					if err != nil {
						t.Fatal(err)
					}
					return img.data, rrep
				}
				got, rrep := replay(l.Flushes(), p)
				if !bytes.Equal(got, model) {
					t.Fatalf("seed %d: replay to flush %d differs from the model's cut", seed, l.Flushes())
				}
				if len(rrep.Writes) != len(rep.Writes) || rrep.Kept != rep.Kept || rrep.Torn != rep.Torn || rrep.Lost != rep.Lost {
					t.Fatalf("seed %d: reports differ:\nmodel  %s\nreplay %s", seed, rep.Summary(), rrep.Summary())
				}
				for i := range rep.Writes {
					a, b := rep.Writes[i], rrep.Writes[i]
					if a.Offset != b.Offset || a.Length != b.Length || a.Fate != b.Fate || fmt.Sprint(a.Kept) != fmt.Sprint(b.Kept) {
						t.Fatalf("seed %d: write %d: model %+v, replay %+v", seed, i, a, b)
					}
				}
				// Every earlier flush point, lose-all: the stable image then.
				var flushes uint64
				for i, o := range ops {
					if o.kind != 's' {
						continue
					}
					flushes++
					want, _ := reference(base, ops[:i+1], nil)
					if got, _ := replay(flushes, PowerCutPolicy{Kind: PowerCutLoseAll}); !bytes.Equal(got, want) {
						t.Fatalf("seed %d: replay to flush %d differs from the stable image", seed, flushes)
					}
				}
			}
		})
	}
}

// TestReplayErrors: bad logs and impossible requests give typed errors.
func TestReplayErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	l, err := CreateWriteLog(newPCDisk(64<<10, 3), good)
	if err != nil {
		t.Fatal(err)
	}
	runOps(t, l, []pcOp{w(60<<10, 4096, 1), syncOp})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), raw...)) }
	lePut := func(b []byte, at int, v uint64) []byte { binary.LittleEndian.PutUint64(b[at:], v); return b }
	cases := []struct {
		name  string
		log   []byte
		size  int
		flush uint64
		pol   PowerCutPolicy
		want  error
	}{
		{"ok", raw, 64 << 10, 1, PowerCutPolicy{Kind: PowerCutLoseAll}, nil},
		{"no such flush", raw, 64 << 10, 2, PowerCutPolicy{Kind: PowerCutLoseAll}, ErrNoSuchFlush},
		{"bad magic", mutate(func(b []byte) []byte { return lePut(b, 0, 1) }), 64 << 10, 0, PowerCutPolicy{Kind: PowerCutLoseAll}, ErrBadWriteLog},
		{"bad version", mutate(func(b []byte) []byte { return lePut(b, 8, 2) }), 64 << 10, 0, PowerCutPolicy{Kind: PowerCutLoseAll}, ErrBadWriteLog},
		{"truncated data", raw[:1024+512], 64 << 10, 0, PowerCutPolicy{Kind: PowerCutLoseAll}, ErrBadWriteLog},
		{"more entries than the file", mutate(func(b []byte) []byte { return lePut(b, 16, 9) }), 64 << 10, 1, PowerCutPolicy{Kind: PowerCutLoseAll}, ErrBadWriteLog},
		{"huge sector", mutate(func(b []byte) []byte { return lePut(b, 512, 1<<62) }), 64 << 10, 1, PowerCutPolicy{Kind: PowerCutLoseAll}, ErrBadWriteLog},
		{"write past the image", raw, 32 << 10, 1, PowerCutPolicy{Kind: PowerCutLoseAll}, ErrBadWriteLog},
		{"bad policy", raw, 64 << 10, 1, PowerCutPolicy{Kind: "lose-some"}, ErrBadPowerCutPolicy},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lr, err := NewWriteLogReader(bytes.NewReader(tc.log))
			if err == nil {
				_, err = ReplayWriteLog(lr, newMemBackend(tc.size), ReplayOptions{Flush: tc.flush, Policy: tc.pol})
			}
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestReplayLinuxLog replays a log shaped like one Linux's dm-log-writes
// writes: 4 KiB sectors, a FUA write (always kept) and a flush carrying
// data (the data comes after the flush point).
func TestReplayLinuxLog(t *testing.T) {
	const ss = 4096
	var log bytes.Buffer
	block := func(f func(b []byte)) { b := make([]byte, ss); f(b); log.Write(b) }
	le := binary.LittleEndian
	entry := func(sector, nr, flags uint64, data []byte) {
		block(func(b []byte) {
			le.PutUint64(b[0:], sector)
			le.PutUint64(b[8:], nr)
			le.PutUint64(b[16:], flags)
		})
		log.Write(data)
	}
	fill := func(c byte) []byte { return bytes.Repeat([]byte{c}, ss) }
	block(func(b []byte) {
		le.PutUint64(b[0:], writeLogMagic)
		le.PutUint64(b[8:], 1)
		le.PutUint64(b[16:], 5)
		le.PutUint32(b[24:], ss)
	})
	entry(0, 1, 0, fill(1))                // stable
	entry(1, 1, WriteLogFlush, fill(2))    // flush 1; its data is after it
	entry(2, 1, WriteLogFUA, fill(3))      // FUA: kept whatever the policy
	entry(3, 1, WriteLogMetadata, fill(4)) // unstable, lost under lose-all
	entry(0, 0, WriteLogFlush, nil)        // flush 2 ends the window
	lr, err := NewWriteLogReader(bytes.NewReader(log.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	img := newMemBackend(4 * ss)
	rep, err := ReplayWriteLog(lr, img, ReplayOptions{Flush: 1, Policy: PowerCutPolicy{Kind: PowerCutLoseAll}})
	if err != nil {
		t.Fatal(err)
	}
	want := append(append(append(fill(1), fill(0)...), fill(3)...), fill(0)...)
	if !bytes.Equal(img.data, want) {
		t.Fatalf("image sectors start %v %v %v %v", img.data[0], img.data[ss], img.data[2*ss], img.data[3*ss])
	}
	if rep.Unstable != 3 || rep.Kept != 1 || rep.Lost != 2 {
		t.Fatalf("report %s", rep.Summary())
	}
}

// TestReplayToEndMatchesCutDuringSync: when the power is cut while a Sync
// is in flight, the model's unstable writes run past that Sync's FLUSH
// entry; a replay with ToEnd sees the same ones and builds the same image.
func TestReplayToEndMatchesCutDuringSync(t *testing.T) {
	const size = 64 << 10
	dir := t.TempDir()
	for _, p := range allTestPolicies() {
		for seed := range uint64(6) {
			d := newPCDisk(size, seed)
			base := d.image()
			c := newTestCache(t, d, 0)
			path := filepath.Join(dir, fmt.Sprintf("%s-%d.log", p.Kind, seed))
			l, err := CreateWriteLog(c, path)
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(seed, 5))
			var ops []pcOp
			for i := range 12 {
				ops = append(ops, randomOp(r, size, byte(i+1)))
				if i == 4 {
					ops = append(ops, syncOp)
				}
			}
			runOps(t, l, ops)
			d.hold()
			syncDone := make(chan error)
			go func() { syncDone <- l.Sync() }()
			<-d.entered
			during := []pcOp{randomOp(r, size, 0xa0), randomOp(r, size, 0xb0)}
			runOps(t, l, during)
			cut := make(chan error)
			var rep *PowerCutReport
			go func() {
				var err error
				rep, err = c.PowerCut(p, seed)
				cut <- err
			}()
			for !c.Stats().PowerCut {
				runtime.Gosched()
			}
			d.release()
			if err := <-syncDone; !errors.Is(err, ErrPowerLost) {
				t.Fatalf("sync in flight: %v", err)
			}
			if err := <-cut; err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			lr, err := NewWriteLogReader(f)
			if err != nil {
				t.Fatal(err)
			}
			img := newMemBackend(len(base))
			copy(img.data, base)
			rrep, err := ReplayWriteLog(lr, img, ReplayOptions{Flush: 1, Policy: p, Seed: seed, ToEnd: true})
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			if rep.Unstable != 9 || rrep.Unstable != rep.Unstable {
				t.Fatalf("%s seed %d: model %d unstable, replay %d, want 9", p, seed, rep.Unstable, rrep.Unstable)
			}
			if !bytes.Equal(img.data, d.image()) {
				t.Fatalf("%s seed %d: replay to the end differs from the model", p, seed)
			}
		}
	}
}

// TestWriteLogAllocs: logging a write allocates nothing.
func TestWriteLogAllocs(t *testing.T) {
	l, err := CreateWriteLog(newPCDisk(1<<20, 1), filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	v := NewVec(1)
	v.Append(make([]byte, 4096))
	var off int64
	if a := testing.AllocsPerRun(500, func() {
		if err := l.WriteAt(v, off); err != nil {
			t.Fatal(err)
		}
		off = (off + 4096) % (1 << 20)
	}); a > 0 {
		t.Fatalf("%.2f allocations per logged write", a)
	}
}

// TestWriteLogReadableWithoutClose checks what a reader sees of a log
// whose writer never closed it: every entry up to the last flush or mark
// (a vhost-user backend ends at its power-cut mark without closing), and
// nothing of the writes after it.
func TestWriteLogReadableWithoutClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	l, err := CreateWriteLog(newPCDisk(64<<10, 1), path)
	if err != nil {
		t.Fatal(err)
	}
	write := func(off int64) {
		v := NewVec(1)
		v.Append(bytes.Repeat([]byte{9}, 4096))
		if err := l.WriteAt(v, off); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	write(4096)
	write(8192)
	if _, es := readLogEntries(t, path); len(es) != 2 {
		t.Fatalf("before the mark a reader sees %d entries, want 2 (write, flush)", len(es))
	}
	if err := l.Mark("cut"); err != nil {
		t.Fatal(err)
	}
	_, es := readLogEntries(t, path)
	if len(es) != 5 || es[4].Mark != "cut" {
		t.Fatalf("after the mark a reader sees %+v, want write, flush, write, write, mark", es)
	}
}
