package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/host/harness"
	"github.com/flushvm/flushvm/host/initramfs"
	"github.com/flushvm/flushvm/protocol"
)

// TestNestedL1Harness boots the nested harness's QEMU TCG L1 guest once
// (no VMM involved) and checks what flushvm relies on there: /dev/kvm
// exists (kvm_amd loaded on the emulated SVM CPU), and a stand-in flushvm
// gets --kernel through 9p byte-exact, --disk as an L1 block device whose
// O_DIRECT writes land in the host file, runs start off CPU 0 (the
// first-CPU race, docs/nested.md), --stats copied back with the
// host path, L1's heartbeat file (how the harness tells a stopped L1)
// written over 9p, and that L1 survives VMs created and closed as fast as
// it can make them (kvmchurn) while both its CPUs switch tasks: without the
// idle VM l1init holds (protocol.L1HoldVMParam), L1 stalls within seconds
// of such churn, both CPUs looping on a stale int3 in __schedule.
func TestNestedL1Harness(t *testing.T) {
	a := prepare(t)
	if m, why := harness.Detect(); m == harness.Direct {
		t.Skipf("this host runs flushvm directly (%s); no L1 to check", why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	fake, err := initramfs.BuildGo(ctx, "./integration/testdata/fakeflushvm")
	if err != nil {
		t.Fatal(err)
	}
	churn, err := initramfs.BuildGo(ctx, "./integration/testdata/kvmchurn")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 64<<20); err != nil {
		t.Fatal(err)
	}
	stats := filepath.Join(dir, "stats.json")
	kern, err := os.ReadFile(a.Kernel.BzImage)
	if err != nil {
		t.Fatal(err)
	}
	opts := harness.Options{Mode: harness.Nested, Flushvm: fake, Stdout: consoleWriter{}, Log: testLog{t},
		JobFiles: map[string]string{"churn/kvmchurn": churn}}
	s, err := harness.Execute(ctx, opts,
		harness.Run{Command: []string{"/bin/sh", "-c", "test -c /dev/kvm && grep -qw svm /proc/cpuinfo && lsmod | grep -q kvm_amd && test $(cat /sys/devices/system/cpu/online) = 0-2 && grep -q '^Cpus_allowed_list:[[:space:]]*1-2$' /proc/self/status"}},
		harness.Run{Args: []string{"--kernel", a.Kernel.BzImage, "--disk", "path=" + disk + ",cache=none", "--stats", stats}},
		harness.Run{Command: []string{protocol.L1JobMount + "/churn/kvmchurn", "20s"}},
	)
	if err != nil {
		t.Fatalf("harness: %v (a stuck L1 here is the stale-int3 stall the idle VM l1init holds is there to prevent)", err)
	}
	t.Logf("guest boot 1/1: QEMU TCG L1 (Debian %s, l1init) reached /init after %.1f s wall (L1 uptime %s); 3 runs; wall %.1f s",
		a.Kernel.Release, s.L1Boot.Seconds(), s.L1Uptime, s.Wall.Seconds())
	for i, r := range s.Results {
		if r.Err != nil {
			t.Fatalf("run %d: %v; output:\n%s", i, r.Err, r.Output)
		}
	}
	t.Run("dev_kvm_in_L1", func(t *testing.T) {
		if st := s.Results[0].Status; st != 0 {
			t.Errorf("L1 lacks /dev/kvm, svm or kvm_amd, or CPUs 1 and 2 (l1init takes them offline to make its idle VM), or the run was not kept off CPU 0 (status %d): %s", st, s.Results[0].Output)
		}
	})
	r := s.Results[1]
	t.Run("kernel_via_9p", func(t *testing.T) {
		want := fmt.Sprintf("%d bytes sha256 %x", len(kern), sha256.Sum256(kern))
		if r.Status != 0 || !bytes.Contains(r.Output, []byte(want)) {
			t.Errorf("status %d, output %q; want the kernel's %s", r.Status, r.Output, want)
		}
	})
	t.Run("disk_bytes_in_host_file", func(t *testing.T) {
		b, err := os.ReadFile(disk)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := b[4096:8192], []byte(strings.Repeat("flushvm!", 512)); !bytes.Equal(got, want) {
			t.Errorf("host disk bytes 4096..8192 = %q..., want the pattern", got[:16])
		}
		if !bytes.Contains(r.Output, []byte("disk /dev/vda pattern written")) {
			t.Errorf("disk not mapped to /dev/vda: %s", r.Output)
		}
	})
	t.Run("heartbeat_over_9p", func(t *testing.T) {
		// L1 rewrites its heartbeat file as each run starts: the last
		// names run 2.
		if !strings.HasPrefix(s.L1Heartbeat, "uptime ") || !strings.Contains(s.L1Heartbeat, ", run 2, load ") {
			t.Errorf("L1's last heartbeat %q, want its uptime and run 2", s.L1Heartbeat)
		}
		t.Logf("L1's last heartbeat:\n%s", s.L1Heartbeat)
	})
	t.Run("vm_churn_does_not_stall_L1", func(t *testing.T) {
		out := s.Results[2].Output
		var vms, switches, secs int
		i := bytes.Index(out, []byte("KVMCHURN vms="))
		if i >= 0 {
			fmt.Sscanf(string(out[i:]), "KVMCHURN vms=%d switches=%d seconds=%d", &vms, &switches, &secs)
		}
		if s.Results[2].Status != 0 || vms < 100 || switches < 1000 {
			t.Fatalf("status %d, %d VMs, %d task switches; want status 0, at least 100 VMs and 1000 switches:\n%s",
				s.Results[2].Status, vms, switches, out)
		}
		t.Logf("L1 created and closed %d VMs in %d s while its CPUs switched tasks %d times", vms, secs, switches)
		for _, want := range []string{"idle KVM VM held, made with 2 other CPUs offline", "runs kept off CPU 0, on 2 of 3 CPUs"} {
			if !strings.Contains(s.Console, want) {
				t.Errorf("L1's console lacks %q:\n%s", want, s.Console)
			}
		}
	})
	t.Run("stats_copied_back", func(t *testing.T) {
		b, err := os.ReadFile(stats)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Disks []struct {
				Path string `json:"path"`
			} `json:"disks"`
		}
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("stats: %v: %s", err, b)
		}
		if len(doc.Disks) != 1 || doc.Disks[0].Path != disk {
			t.Errorf("stats disks %+v, want one with path %s", doc.Disks, disk)
		}
	})
}

// TestNestedL1StuckBacktrace makes the harness find L1 stuck (a run prints
// flushvm's line for a vCPU that ignores kicks) and checks what a stuck L1
// leaves in the session's console: the NMI the harness sent through L1's
// QEMU monitor made L1's kernel panic with every CPU's backtrace, and the
// session failed as stuck, which the harness retries.
func TestNestedL1StuckBacktrace(t *testing.T) {
	prepare(t)
	if m, why := harness.Detect(); m == harness.Direct {
		t.Skipf("this host runs flushvm directly (%s); no L1 to check", why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stuck := protocol.FormatWatchdogStuck(0, time.Minute)
	s, err := harness.Execute(ctx, harness.Options{Mode: harness.Nested, Stdout: consoleWriter{}, Log: testLog{t}},
		harness.Run{Command: []string{"/bin/sh", "-c", "echo '" + stuck + "'; sleep 120"}})
	if !errors.Is(err, harness.ErrL1Stuck) {
		t.Fatalf("session error %v, want ErrL1Stuck", err)
	}
	for _, want := range []string{"sent it an NMI", "Kernel panic - not syncing: NMI", "NMI backtrace for cpu 1"} {
		if !strings.Contains(s.Console, want) {
			t.Errorf("console lacks %q:\n%s", want, s.Console)
		}
	}
	if s.Wall > time.Minute {
		t.Errorf("the stuck session took %v: the NMI did not end L1", s.Wall)
	}
}
