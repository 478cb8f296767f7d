package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/host/harness"
)

// diskStats is the part of a --stats disk entry these tests read.
type diskStats struct {
	Path         string `json:"path"`
	Cache        string `json:"cache"`
	WCE          bool   `json:"wce"`
	Writes       uint64 `json:"writes"`
	Flushes      uint64 `json:"flushes"`
	BytesWritten uint64 `json:"bytes_written"`
	WCEChanges   uint64 `json:"wce_changes"`
	HostSyncs    uint64 `json:"host_syncs"`
	Errors       uint64 `json:"errors"`
}

// modes are flushvm's cache modes with the write cache Linux must report.
var modes = []struct{ cache, writeCache string }{
	{"writeback", "write back"},
	{"writethrough", "write through"},
	{"none", "write back"},
	{"directsync", "write through"},
	{"unsafe", "write back"},
}

// pattern is what the guest writes at offset 4096 of disk letter d: 64 KiB
// of "flushvm-d\n" lines (busybox yes | head -c).
func pattern(d byte) []byte {
	line := fmt.Sprintf("flushvm-%c\n", d)
	return bytes.Repeat([]byte(line), 65536/len(line)+1)[:65536]
}

// TestDebianLinuxVirtioBlk boots Debian's kernel under flushvm twice in one
// session. Boot 1 has one disk per cache mode (vda..vde): the guest reports
// each disk's write_cache, writes a pattern with fsync to each, then
// switches vda to write through; the host checks the bytes in each file
// and the --stats counters. Boot 2 is `make run-disk`: fsyncstress on a
// fresh sparse ext4 disk.
func TestDebianLinuxVirtioBlk(t *testing.T) {
	a := prepare(t)
	dir := t.TempDir()
	var script strings.Builder
	args := []string{"--kernel", a.Kernel.BzImage, "--cpus", "2"}
	var disks []string
	for i, m := range modes {
		d := byte('a' + i)
		p := filepath.Join(dir, m.cache+".img")
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 64<<20); err != nil {
			t.Fatal(err)
		}
		disks = append(disks, p)
		args = append(args, "--disk", "path="+p+",cache="+m.cache)
		fmt.Fprintf(&script, "echo \"vd%c write_cache: $(cat /sys/block/vd%c/queue/write_cache)\"\n", d, d)
		fmt.Fprintf(&script, "yes flushvm-%c | head -c 65536 > /tmp/p && dd if=/tmp/p of=/dev/vd%c bs=4096 seek=1 conv=fsync,notrunc 2>/dev/null\n", d, d)
	}
	// Linux 6.1's queue/write_cache only flips the block layer's flag;
	// virtio_blk's cache_type attribute is what writes the device's
	// writeback field (and updates queue/write_cache too).
	script.WriteString("echo 'write through' > /sys/block/vda/cache_type\n")
	script.WriteString("echo \"vda after toggle: $(cat /sys/block/vda/queue/write_cache)\"\n")
	modesImg, err := harness.WithScript(a.Cache, a.Initramfs, script.String())
	if err != nil {
		t.Fatal(err)
	}
	stats := filepath.Join(dir, "stats.json")
	args = append(args, "--initrd", modesImg, "--stats", stats, "--append", cmdline("script"))

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	ext4 := filepath.Join(dir, "ext4.img")
	if err := harness.FreshExt4(ctx, ext4, "1G"); err != nil {
		t.Fatal(err)
	}
	stressImg, err := harness.WithScript(a.Cache, a.Initramfs, harness.FsyncstressScript)
	if err != nil {
		t.Fatal(err)
	}
	stressArgs := []string{"--kernel", a.Kernel.BzImage, "--initrd", stressImg, "--cpus", "2",
		"--disk", "path=" + ext4, "--append", cmdline("script")}

	session(t, []boot{
		{
			name: "one_disk_per_cache_mode",
			args: args,
			check: func(t *testing.T, r harness.Result) {
				if r.Status != 0 {
					t.Fatalf("guest script status %d; console:\n%s", r.Status, r.Output)
				}
				for i, m := range modes {
					want := fmt.Sprintf("vd%c write_cache: %s\n", 'a'+i, m.writeCache)
					if !bytes.Contains(r.Output, []byte(want)) {
						t.Errorf("cache=%s: guest lacks %q", m.cache, strings.TrimSpace(want))
					}
				}
				if !bytes.Contains(r.Output, []byte("vda after toggle: write through")) {
					t.Errorf("guest could not switch vda to write through")
				}
				for i, p := range disks {
					b, err := os.ReadFile(p)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(b[4096:4096+65536], pattern(byte('a'+i))) {
						t.Errorf("cache=%s: host file lacks the pattern the guest fsync'ed", modes[i].cache)
					}
				}
				checkStats(t, stats, disks)
			},
		},
		{
			name: "fsyncstress_on_fresh_ext4",
			args: stressArgs,
			check: func(t *testing.T, r harness.Result) {
				if r.Status != 0 || !bytes.Contains(r.Output, []byte("400 of 400 records intact")) {
					t.Errorf("fsyncstress status %d; console:\n%s", r.Status, r.Output)
				}
				for _, l := range nonEmptyLines(r.Output) {
					if strings.HasPrefix(l, "fsyncstress:") {
						t.Log(l)
					}
				}
			},
		},
	})
}

func checkStats(t *testing.T, path string, disks []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("--stats: %v", err)
	}
	var doc struct {
		Disks []diskStats `json:"disks"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("--stats: %v\n%s", err, b)
	}
	if len(doc.Disks) != len(disks) {
		t.Fatalf("--stats has %d disks, want %d", len(doc.Disks), len(disks))
	}
	for i, d := range doc.Disks {
		m := modes[i]
		t.Logf("stats %s: writes %d flushes %d host_syncs %d wce %v wce_changes %d", m.cache, d.Writes, d.Flushes, d.HostSyncs, d.WCE, d.WCEChanges)
		if d.Path != disks[i] || d.Cache != m.cache {
			t.Errorf("disk %d is %s cache=%s, want %s cache=%s", i, d.Path, d.Cache, disks[i], m.cache)
		}
		if d.BytesWritten < 65536 || d.Errors != 0 {
			t.Errorf("cache=%s: bytes_written %d errors %d", m.cache, d.BytesWritten, d.Errors)
		}
		switch m.cache {
		case "writeback", "none":
			if d.HostSyncs == 0 {
				t.Errorf("cache=%s: host_syncs 0 after a guest fsync", m.cache)
			}
		case "unsafe":
			if d.HostSyncs != 0 || d.Flushes == 0 {
				t.Errorf("cache=unsafe: host_syncs %d (want 0), flushes %d (want > 0)", d.HostSyncs, d.Flushes)
			}
		}
	}
	if vda := doc.Disks[0]; vda.WCE || vda.WCEChanges != 1 {
		t.Errorf("vda after the guest wrote 'write through': wce %v wce_changes %d, want false 1", vda.WCE, vda.WCEChanges)
	}
}
