package blk

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestFileBackendPaths runs reads and writes down each path of FileBackend:
// plain vectored I/O, O_DIRECT with aligned buffers, the bounce buffer for
// misaligned buffers, and the buffered descriptor for misaligned offsets.
func TestFileBackendPaths(t *testing.T) {
	// Buffers carved from one 4 KiB-aligned block, so their alignment is
	// known whatever the allocator does.
	block := alignedBuffer(1<<20, 4096)
	tests := []struct {
		name   string
		direct bool
		off    int64
		bufs   [][]byte
		want   ioPath
	}{
		{"buffered, many segments", false, 512, [][]byte{block[1:513], block[2048:3072], block[5000:5512]}, pathVectored},
		{"direct, aligned", true, 8192, [][]byte{block[:4096], block[8192:16384]}, pathVectored},
		{"direct, misaligned buffer: bounce", true, 4096, [][]byte{block[100:612], block[1000:4584]}, pathBounce},
		// More than one bounce buffer's worth: 200 KiB + 104 KiB.
		{"direct, large bounce", true, 0, [][]byte{block[3 : 3+200<<10], block[300<<10+10 : 300<<10+10+104<<10]}, pathBounce},
		{"direct, misaligned offset: buffered fd", true, 512, [][]byte{block[:512]}, pathBuffered},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := tempDisk(t, 1<<20)
			fb, err := OpenFile(path, FileOptions{Direct: tc.direct})
			if err != nil {
				t.Fatal(err)
			}
			defer fb.Close()
			if tc.direct {
				// Force the strictest rule so every case takes the path
				// its name says, whatever this file system allows.
				fb.memAlign, fb.offAlign = 4096, 4096
			}
			v := NewVec(len(tc.bufs))
			var want []byte
			for i, b := range tc.bufs {
				for j := range b {
					b[j] = byte(i*17 + j*3 + 1)
				}
				want = append(want, b...)
				v.Append(b)
			}
			if p := fb.pathFor(v, tc.off); p != tc.want {
				t.Fatalf("path %d, want %d", p, tc.want)
			}
			if err := fb.WriteAt(v, tc.off); err != nil {
				t.Fatal(err)
			}
			if err := fb.Sync(); err != nil {
				t.Fatal(err)
			}
			disk, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(disk[tc.off:tc.off+int64(len(want))], want) {
				t.Fatal("file holds other bytes than written")
			}
			for _, b := range tc.bufs {
				clear(b)
			}
			if err := fb.ReadAt(v, tc.off); err != nil {
				t.Fatal(err)
			}
			var got []byte
			for _, b := range tc.bufs {
				got = append(got, b...)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("read back other bytes than written")
			}
		})
	}
}

// TestFileBackendZeroAndDiscard checks WriteZeroes (with and without unmap)
// and Discard on a regular file.
func TestFileBackendZeroAndDiscard(t *testing.T) {
	for _, direct := range []bool{false, true} {
		path := tempDisk(t, 1<<20)
		if err := os.WriteFile(path, bytes.Repeat([]byte{0xaa}, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		fb, err := OpenFile(path, FileOptions{Direct: direct})
		if err != nil {
			t.Fatal(err)
		}
		steps := []struct {
			off, n int64
			op     func(off, n int64) error
		}{
			{4096, 4096, func(o, n int64) error { return fb.WriteZeroes(o, n, false) }},
			{65536, 8192, func(o, n int64) error { return fb.WriteZeroes(o, n, true) }},
			{512, 1024, func(o, n int64) error { return fb.WriteZeroes(o, n, false) }},
		}
		for _, s := range steps {
			if err := s.op(s.off, s.n); err != nil {
				t.Fatal(err)
			}
		}
		if err := fb.Discard(131072, 65536); err != nil {
			t.Fatal(err)
		}
		fb.Close()
		disk, _ := os.ReadFile(path)
		for _, s := range steps {
			if !bytes.Equal(disk[s.off:s.off+s.n], make([]byte, s.n)) {
				t.Fatalf("direct=%v: [%d, +%d) not zeroed", direct, s.off, s.n)
			}
		}
		if disk[0] != 0xaa || disk[4095] != 0xaa || disk[8192] != 0xaa || disk[1536] != 0xaa {
			t.Fatalf("direct=%v: bytes outside the ranges changed", direct)
		}
	}
}

// TestFileBackendBlockDevice opens a loop device (root only) as a block
// device backend: size through BLKGETSIZE64, I/O, BLKDISCARD.
func TestFileBackendBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a loop device")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("no losetup")
	}
	img := tempDisk(t, 3<<20)
	out, err := exec.Command(losetup, "-f", "--show", img).Output()
	if err != nil {
		t.Skipf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command(losetup, "-d", dev).Run()
	for _, direct := range []bool{false, true} {
		fb, err := OpenFile(dev, FileOptions{Direct: direct})
		if err != nil {
			t.Fatal(err)
		}
		if !fb.IsBlockDevice() || fb.Size() != 3<<20 {
			t.Fatalf("block device %v, size %d", fb.IsBlockDevice(), fb.Size())
		}
		buf := alignedBuffer(4096, 4096)
		for i := range buf {
			buf[i] = byte(i)
		}
		v := NewVec(1)
		v.Append(buf)
		if err := fb.WriteAt(v, 8192); err != nil {
			t.Fatal(err)
		}
		if err := fb.Sync(); err != nil {
			t.Fatal(err)
		}
		clear(buf)
		if err := fb.ReadAt(v, 8192); err != nil || buf[255] != 255 {
			t.Fatalf("read back: %v %d", err, buf[255])
		}
		if err := fb.WriteZeroes(8192, 4096, false); err != nil {
			t.Fatal(err)
		}
		if err := fb.Discard(1<<20, 1<<20); err != nil {
			t.Fatal(err)
		}
		fb.Close()
	}
	// The whole device through Open: capacity in sectors.
	d, err := Open(Spec{Path: dev, Cache: CacheNone}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Capacity() != (3<<20)/512 {
		t.Fatalf("capacity %d", d.Capacity())
	}
}

// TestOpenFileErrors: errors name the path and keep the cause.
func TestOpenFileErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := OpenFile(filepath.Join(dir, "missing"), FileOptions{})
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing file: %v", err)
	}
	_, err = OpenFile("/dev/null", FileOptions{})
	if err == nil || !strings.Contains(err.Error(), "not a regular file or block device") {
		t.Fatalf("character device: %v", err)
	}
}
