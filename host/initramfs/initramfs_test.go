package initramfs

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/flushvm/flushvm/host/kernel"
)

// records decodes one gzip'ed cpio archive.
func records(t *testing.T, image []byte) map[string]cpio.Record {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(image))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]cpio.Record{}
	rr := cpio.Newc.Reader(bytes.NewReader(raw))
	for {
		rec, err := rr.ReadRecord()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[rec.Name] = rec
	}
}

func content(t *testing.T, r cpio.Record) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBuildContents(t *testing.T) {
	dir := t.TempDir()
	ko := filepath.Join(dir, "a.ko")
	os.WriteFile(ko, []byte("module a"), 0o644)
	b := New()
	b.Bytes("/init", []byte("#!/bin/sh\n"), 0o755)
	b.Symlink("/bin/sh", "/bin/busybox")
	b.Modules([]kernel.Module{{Name: "a", Path: ko}, {Name: "b", Path: ko}})
	var buf bytes.Buffer
	if err := b.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	recs := records(t, buf.Bytes())
	tests := []struct {
		name     string
		mode     uint64
		content  string
		rmaj     uint64
		rmin     uint64
		checkDat bool
	}{
		{name: "dev/console", mode: cpio.S_IFCHR | 0o600, rmaj: 5, rmin: 1},
		{name: "init", mode: cpio.S_IFREG | 0o755, content: "#!/bin/sh\n", checkDat: true},
		{name: "bin/sh", mode: cpio.S_IFLNK | 0o777, content: "/bin/busybox", checkDat: true},
		{name: "lib/modules/a.ko", mode: cpio.S_IFREG | 0o644, content: "module a", checkDat: true},
		{name: "etc/flushvm/modules", mode: cpio.S_IFREG | 0o644, content: "/lib/modules/a.ko\n/lib/modules/b.ko\n", checkDat: true},
		{name: "proc", mode: cpio.S_IFDIR | 0o755},
	}
	for _, tt := range tests {
		r, ok := recs[tt.name]
		if !ok {
			t.Errorf("%s missing", tt.name)
			continue
		}
		if r.Mode != tt.mode || r.Rmajor != tt.rmaj || r.Rminor != tt.rmin {
			t.Errorf("%s: mode %o dev %d:%d, want %o %d:%d", tt.name, r.Mode, r.Rmajor, r.Rminor, tt.mode, tt.rmaj, tt.rmin)
		}
		if tt.checkDat {
			if got := content(t, r); got != tt.content {
				t.Errorf("%s: content %q, want %q", tt.name, got, tt.content)
			}
		}
	}
}

func TestBuildCachesByContent(t *testing.T) {
	cache := t.TempDir()
	mk := func(s string) *Builder {
		b := New()
		b.Bytes("/x", []byte(s), 0o644)
		return b
	}
	p1, err := mk("one").Build(cache)
	if err != nil {
		t.Fatal(err)
	}
	st1, _ := os.Stat(p1)
	p2, _ := mk("one").Build(cache)
	st2, _ := os.Stat(p2)
	if p1 != p2 || !os.SameFile(st1, st2) || !st1.ModTime().Equal(st2.ModTime()) {
		t.Errorf("same inputs rebuilt: %s vs %s", p1, p2)
	}
	if p3, _ := mk("two").Build(cache); p3 == p1 {
		t.Errorf("different inputs share image %s", p3)
	}
}

func TestAppend(t *testing.T) {
	cache := t.TempDir()
	base := New()
	base.Bytes("/init", []byte("init"), 0o755)
	bp, err := base.Build(cache)
	if err != nil {
		t.Fatal(err)
	}
	x := Extra()
	x.Bytes("/run.sh", []byte("echo hi\n"), 0o755)
	ap, err := Append(cache, bp, x)
	if err != nil {
		t.Fatal(err)
	}
	baseData, _ := os.ReadFile(bp)
	all, _ := os.ReadFile(ap)
	if !bytes.HasPrefix(all, baseData) {
		t.Fatal("appended image does not start with the base image")
	}
	// Linux unpacks the second gzip member as a second archive.
	tail := records(t, all[len(baseData):])
	if r, ok := tail["run.sh"]; !ok || content(t, r) != "echo hi\n" {
		t.Errorf("run.sh missing from the appended archive")
	}
	if _, ok := records(t, baseData)["init"]; !ok {
		t.Errorf("base archive lost")
	}
}

func TestStaticCheck(t *testing.T) {
	tests := []struct {
		path string
		want error
	}{
		{BusyboxPath, nil},
		{"/bin/ls", ErrNotStatic},
	}
	for _, tt := range tests {
		if _, err := os.Stat(tt.path); err != nil {
			t.Skipf("%s: %v", tt.path, err)
		}
		if err := CheckStatic(tt.path); !errors.Is(err, tt.want) {
			t.Errorf("CheckStatic(%s) = %v, want %v", tt.path, err, tt.want)
		}
	}
	b := New()
	b.Static("/bin/ls", "/bin/ls")
	if _, err := b.Build(t.TempDir()); !errors.Is(err, ErrNotStatic) {
		t.Errorf("Build with a dynamic binary = %v, want ErrNotStatic", err)
	}
}
