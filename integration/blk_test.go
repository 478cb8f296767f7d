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
	Reads        uint64 `json:"reads"`
	Writes       uint64 `json:"writes"`
	Flushes      uint64 `json:"flushes"`
	BytesWritten uint64 `json:"bytes_written"`
	WCEChanges   uint64 `json:"wce_changes"`
	HostSyncs    uint64 `json:"host_syncs"`
	Errors       uint64 `json:"errors"`
	AIO          string `json:"aio"`
	AIOFallback  string `json:"aio_fallback"`
	RingRequests uint64 `json:"ring_requests"`
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
// and the --stats counters; vda has a queue per vCPU, vdb the one its
// queues=1 asks for. Boot 2 is `make run-disk`: fsyncstress on a fresh
// sparse ext4 disk, on aio=io_uring.
func TestDebianLinuxVirtioBlk(t *testing.T) {
	a := prepare(t)
	dir := t.TempDir()
	var script strings.Builder
	args := []string{"--kernel", a.Vmlinux, "--cpus", "2"}
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
		spec := "path=" + p + ",cache=" + m.cache
		if i == 1 {
			spec += ",queues=1" // vda has the default: one queue per vCPU
		}
		args = append(args, "--disk", spec)
		fmt.Fprintf(&script, "echo \"vd%c write_cache: $(cat /sys/block/vd%c/queue/write_cache)\"\n", d, d)
		fmt.Fprintf(&script, "yes flushvm-%c | head -c 65536 > /tmp/p && dd if=/tmp/p of=/dev/vd%c bs=4096 seek=1 conv=fsync,notrunc 2>/dev/null\n", d, d)
	}
	// Multiqueue: the guest's blk-mq sees vda's two queues (one per vCPU)
	// and vdb's one; a write synced from each vCPU goes down that vCPU's
	// queue and completes on that queue's own MSI-X vector.
	script.WriteString("for d in vda vdb; do echo \"$d queues: $(ls /sys/block/$d/mq | tr '\\n' ' ')\"; done\n")
	script.WriteString("for c in 0 1; do taskset -c $c dd if=/tmp/p of=/dev/vda bs=4096 seek=$((32+c*16)) conv=fsync,notrunc 2>/dev/null; done\n")
	script.WriteString("v=$(basename $(readlink /sys/block/vda/device))\n")
	script.WriteString("grep \"$v-req\" /proc/interrupts | awk '{s=0; for (i=2; i<=NF; i++) if ($i ~ /^[0-9]+$/) s+=$i; print \"vda irq\", $NF, s}'\n")
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
	stressStats := filepath.Join(dir, "stress-stats.json")
	stressArgs := []string{"--kernel", a.Vmlinux, "--initrd", stressImg, "--cpus", "2",
		"--disk", "path=" + ext4 + ",cache=none,aio=io_uring", "--stats", stressStats, "--append", cmdline("script")}

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
				checkQueues(t, r.Output)
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
				// aio=io_uring with cache=none: the guest's reads and its
				// O_DIRECT writes went through the ring, the writes
				// completing out of line (the ring's eventfd wakes the
				// queue loop); flushvm runs in L1's Linux when nested.
				var doc struct {
					Disks []diskStats `json:"disks"`
				}
				if b, err := os.ReadFile(stressStats); err != nil || json.Unmarshal(b, &doc) != nil || len(doc.Disks) != 1 {
					t.Fatalf("--stats: %v: %s", err, b)
				}
				d := doc.Disks[0]
				if d.AIO != "io_uring" || d.RingRequests != d.Reads+d.Writes || d.Writes == 0 || d.Errors != 0 || d.HostSyncs == 0 {
					t.Errorf("aio=io_uring disk: aio %q (fallback %q) ring_requests %d (want reads %d + writes %d) errors %d host_syncs %d",
						d.AIO, d.AIOFallback, d.RingRequests, d.Reads, d.Writes, d.Errors, d.HostSyncs)
				} else {
					t.Logf("aio=io_uring: %d requests through the ring (%d reads, %d writes), %d flushes, %d host syncs",
						d.RingRequests, d.Reads, d.Writes, d.Flushes, d.HostSyncs)
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

// checkQueues wants vda with one queue per vCPU (2), each of which
// completed requests on its own interrupt vector, and vdb with the one
// its queues=1 asked for.
func checkQueues(t *testing.T, out []byte) {
	t.Helper()
	for _, want := range []string{"vda queues: 0 1 \n", "vdb queues: 0 \n"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("guest lacks %q", strings.TrimSpace(want))
		}
	}
	irqs := map[string]int{}
	for _, l := range nonEmptyLines(out) {
		var name string
		var n int
		if _, err := fmt.Sscanf(strings.TrimSpace(l), "vda irq %s %d", &name, &n); err == nil {
			irqs[name[strings.LastIndexByte(name, '.')+1:]] = n
		}
	}
	if len(irqs) != 2 || irqs["0"] == 0 || irqs["1"] == 0 {
		t.Errorf("vda's queue interrupts %v: want queues 0 and 1, each with interrupts", irqs)
	}
	t.Logf("vda's queue interrupts (queue: count) %v", irqs)
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
