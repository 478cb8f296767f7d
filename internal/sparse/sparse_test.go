package sparse

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	if err := Create(src, 64<<20); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(src, os.O_RDWR, 0)
	f.WriteAt([]byte("head"), 0)
	f.WriteAt(bytes.Repeat([]byte{7}, 8192), 32<<20)
	f.WriteAt([]byte("tail"), 64<<20-4)
	f.Close()
	os.WriteFile(dst, []byte("old contents longer than nothing"), 0o644)
	if err := Copy(src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs from the source")
	}
	var st unix.Stat_t
	if err := unix.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 8<<20 {
		t.Errorf("copy of a 64 MiB image with 16 KiB of data uses %d bytes: holes were filled", used)
	}
}
