package blk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
)

// writeDiscardLog writes, with the package's WriteLog over a sparse file
// of size bytes, a log of n DISCARD entries each claiming the whole disk:
// (n+1)*512 bytes of log.
func writeDiscardLog(t *testing.T, dir string, size int64, n int) string {
	t.Helper()
	live := filepath.Join(dir, "live.img")
	if err := os.WriteFile(live, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(live, size); err != nil {
		t.Fatal(err)
	}
	disk, err := OpenFile(live, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "discards.wlog")
	l, err := CreateWriteLog(disk, path)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := l.Discard(0, size); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// allocatedBytes returns the disk space the file at path occupies.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// TestReplayHugeDiscardsBounded is the replay blow-up of issue 8: a
// 2,560-byte log of four DISCARDs, each claiming the whole of a 1 GiB
// sparse image, replayed with random-sectors, used to tear every discard
// per sector (724 MB of memory, a 160 MB report) and zero the image with
// allocated extents. The memory allocated, the report and the image's
// allocated blocks must stay bounded by the log, not by the image.
func TestReplayHugeDiscardsBounded(t *testing.T) {
	const (
		size        = 1 << 30
		maxAlloc    = 1 << 20
		maxReport   = 16 << 10
		maxImgBytes = 1 << 20
	)
	dir := t.TempDir()
	logPath := writeDiscardLog(t, dir, size, 4)
	if fi, err := os.Stat(logPath); err != nil || fi.Size() != 2560 {
		t.Fatalf("log: %v, %v", fi, err)
	}
	for _, p := range []PowerCutPolicy{
		{Kind: PowerCutRandomSectors, AtomicUnit: AtomicUnit512},
		{Kind: PowerCutRandomSectors, AtomicUnit: AtomicUnit4K},
		{Kind: PowerCutKeepAll},
	} {
		t.Run(p.String(), func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "crash.img")
			if err := os.WriteFile(img, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(img, size); err != nil {
				t.Fatal(err)
			}
			rep, alloc := replayFile(t, logPath, img, ReplayOptions{Policy: p, Seed: 1})
			j, err := json.Marshal(rep)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Unstable != 4 || alloc > maxAlloc || len(j) > maxReport {
				t.Fatalf("%s; %d bytes allocated (max %d), %d-byte report (max %d)", rep.Summary(), alloc, maxAlloc, len(j), maxReport)
			}
			a := allocatedBytes(t, img)
			if a > maxImgBytes {
				t.Fatalf("the crash image occupies %d bytes, want at most %d", a, maxImgBytes)
			}
			t.Logf("%s; %d bytes allocated, %d-byte report, image occupies %d bytes", rep.Summary(), alloc, len(j), a)
		})
	}
}

// replayFile replays the log at logPath onto the image at img and returns
// the report and the bytes the replay allocated.
func replayFile(t *testing.T, logPath, img string, o ReplayOptions) (*PowerCutReport, uint64) {
	t.Helper()
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := OpenFile(img, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	lr, err := NewWriteLogReader(f)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := ReplayWriteLog(lr, b, o)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	return rep, after.TotalAlloc - before.TotalAlloc
}

// TestReplayRefusesClaimsPastTheLog: entries whose lengths the log cannot
// back are refused, with a typed error and before the image is touched.
func TestReplayRefusesClaimsPastTheLog(t *testing.T) {
	const size = 64 << 10
	path := filepath.Join(t.TempDir(), "log")
	l, err := CreateWriteLog(newPCDisk(size, 1), path)
	if err != nil {
		t.Fatal(err)
	}
	runOps(t, l, []pcOp{w(0, 4096, 1), syncOp, w(8192, 4096, 2)})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Entry 2 (after the 4 KiB write and the flush) is at byte 512+512+4096+512.
	const e2 = 512 + 512 + 4096 + 512
	set := func(at int, v uint64) []byte {
		b := bytes.Clone(raw)
		for i := range 8 {
			b[at+i] = byte(v >> (8 * i))
		}
		return b
	}
	cases := []struct {
		name  string
		log   []byte
		flush uint64
		want  error
	}{
		{"ok", raw, 1, nil},
		{"write claims 1 GiB of data", set(e2+8, 1<<21), 1, ErrBadWriteLog},
		{"write past the image", set(e2, size/512), 1, ErrBadWriteLog},
		{"no such flush", raw, 2, ErrNoSuchFlush},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lr, err := NewWriteLogReader(bytes.NewReader(tc.log))
			if err != nil {
				t.Fatal(err)
			}
			img := newPCDisk(size, 9)
			orig := img.image()
			o := ReplayOptions{Flush: tc.flush, Policy: PowerCutPolicy{Kind: PowerCutKeepAll}}
			if err := CheckWriteLogReplay(lr, size, o); !errors.Is(err, tc.want) {
				t.Fatalf("check: %v, want %v", err, tc.want)
			}
			_, err = ReplayWriteLog(lr, img, o)
			if !errors.Is(err, tc.want) {
				t.Fatalf("replay: %v, want %v", err, tc.want)
			}
			if tc.want != nil && !bytes.Equal(img.image(), orig) {
				t.Fatal("a refused replay changed the image")
			}
		})
	}
}

// TestReplayMatchesModelLongWrites: discards and write-zeroes long enough
// to be torn in coarse pieces are torn alike by the model and by a replay
// of its log (the model sees a write-zeroes, the log a write of zeroes).
func TestReplayMatchesModelLongWrites(t *testing.T) {
	const size = 8 << 20
	ops := []pcOp{
		w(0, 8192, 1), syncOp,
		{kind: 'd', off: 512, n: 2<<20 + 1536},
		w(4096, 4096, 2),
		{kind: 'z', off: 3 << 20, n: 5 << 20},
		w(size-8192, 8192, 3),
	}
	for _, p := range []PowerCutPolicy{{Kind: PowerCutRandomSectors, AtomicUnit: 512}, {Kind: PowerCutRandomSectors, AtomicUnit: 4096}} {
		for seed := range uint64(4) {
			t.Run(fmt.Sprintf("%s/%d", p, seed), func(t *testing.T) {
				d := newPCDisk(size, seed)
				base := d.image()
				path := filepath.Join(t.TempDir(), "log")
				l, err := CreateWriteLog(newTestCache(t, d, size), path)
				if err != nil {
					t.Fatal(err)
				}
				runOps(t, l, ops)
				rep, err := l.lower.(*VolatileCache).PowerCut(p, seed)
				if err != nil {
					t.Fatal(err)
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				raw, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				lr, err := NewWriteLogReader(bytes.NewReader(raw))
				if err != nil {
					t.Fatal(err)
				}
				img := &memBackend{data: base, durable: make([]byte, len(base))}
				rrep, err := ReplayWriteLog(lr, img, ReplayOptions{Flush: 1, Policy: p, Seed: seed})
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(img.data, d.image()) {
					t.Fatalf("replay differs from the model: model %s, replay %s", rep.Summary(), rrep.Summary())
				}
				for i := range rep.Writes {
					if a, b := rep.Writes[i], rrep.Writes[i]; a.Fate != b.Fate || fmt.Sprint(a.Kept) != fmt.Sprint(b.Kept) {
						t.Fatalf("write %d: model %+v, replay %+v", i, a, b)
					}
				}
			})
		}
	}
}
