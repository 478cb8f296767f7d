package disk

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/internal/jsonschema"
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
	d, err := Open(sp, Options{WriteLog: filepath.Join(dir, "run.wlog"), CacheBound: 4096, Supply: ps})
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

// TestStatsSchema writes the --stats document of a plain disk, of a
// power-cut disk with a write log after a cut, and of a disk whose fault
// rules dropped a write, and checks it against the
// committed schema (protocol/schema/stats.schema.json).
func TestStatsSchema(t *testing.T) {
	b, err := os.ReadFile("../protocol/schema/stats.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	schema, err := jsonschema.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var disks []*Disk
	ps := NewPowerSupply()
	rules := filepath.Join(dir, "faults")
	if err := os.WriteFile(rules, []byte("write sectors=8-15 drop\nread eio\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, spec := range []string{",cache=writethrough,serial=a", ",powercut=random-sectors", ",faults=" + rules + ",werror=stop"} {
		img := filepath.Join(dir, fmt.Sprintf("d%d.img", i))
		if err := os.WriteFile(img, make([]byte, 64<<10), 0o644); err != nil {
			t.Fatal(err)
		}
		sp, err := blk.ParseSpec("path=" + img + spec)
		if err != nil {
			t.Fatal(err)
		}
		logPath := ""
		if sp.HasPowerCut() {
			logPath = filepath.Join(dir, "run.wlog")
		}
		d, err := Open(sp, Options{WriteLog: logPath, Supply: ps})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Dev.Close()
		disks = append(disks, d)
		v := blk.NewVec(1)
		v.Append(bytes.Repeat([]byte{7}, 4096))
		if err := d.Dev.Backend().WriteAt(v, 4096); err != nil {
			t.Fatal(err)
		}
	}
	ps.Cut("test")
	ps.Release()
	if _, err := disks[1].PowerCut(ps.Why(), 3); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "stats.json")
	if err := WriteStats(path, Collect(disks)); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if errs := schema.Validate(doc); len(errs) > 0 {
		t.Errorf("--stats does not match its schema:\n%s\n%s", strings.Join(errs, "\n"), doc)
	}
	if !strings.Contains(string(doc), `"power_cut"`) || !strings.Contains(string(doc), `"flushvm_version"`) ||
		!strings.Contains(string(doc), `"how": "dropped"`) {
		t.Errorf("the document lacks the cut or the version:\n%s", doc)
	}
}
