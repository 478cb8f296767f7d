package disk

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flushvm/flushvm/blk"
)

// TestCacheBoundDestage checks that --cache-bound reaches the volatile
// cache: with room for one unstable 4 KiB write, older writes are destaged
// (so lose-all keeps them), the stats count them, and the summary warns
// that a replay of the write log is then not exact.
func TestCacheBoundDestage(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	sp, err := blk.ParseSpec("path=" + img + ",powercut=lose-all")
	if err != nil {
		t.Fatal(err)
	}
	ps := NewPowerSupply()
	d, err := Open(sp, filepath.Join(dir, "run.wlog"), 4096, ps)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Dev.Close()
	for i := range 3 {
		v := blk.NewVec(1)
		v.Append(bytes.Repeat([]byte{byte(i + 1)}, 4096))
		if err := d.Dev.Backend().WriteAt(v, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	ps.Cut("test")
	ps.Release()
	rep, err := d.PowerCut(ps.Why(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if d.Cut.Destaged != 2 || rep.Unstable != 1 || rep.Lost != 1 {
		t.Fatalf("destaged %d, report %s; want 2 destaged, 1 lost", d.Cut.Destaged, rep.Summary())
	}
	if line := d.Summary("disk 0"); !strings.Contains(line, "inexact: 2 writes destaged") {
		t.Errorf("summary %q does not warn about destaged writes", line)
	}
	d.Dev.Close()
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []byte{1, 2, 0} {
		if got[i*4096] != want {
			t.Errorf("block %d holds %d, want %d", i, got[i*4096], want)
		}
	}
}
