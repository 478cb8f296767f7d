package integration

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/host/harness"
)

// TestQEMUStandInLinuxBoot boots the same Debian kernel and test initramfs
// under plain QEMU TCG with QEMU's own virtio-blk (no flushvm): it checks
// the guest side on its own, so a failure here is the guest's, not the
// VMM's. QEMU's isa-debug-exit device sits at flushvm's port 0xf4, so the
// exit status takes the same /dev/port path as under flushvm.
func TestQEMUStandInLinuxBoot(t *testing.T) {
	a := prepare(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := harness.FreshExt4(ctx, img, "256M"); err != nil {
		t.Fatal(err)
	}
	script, err := harness.WithScript(a.Cache, a.Initramfs, harness.FsyncstressScript+"exit 9\n")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		status int
		want   []string
	}{
		{
			name:   "exit_status_via_port_0xf4",
			args:   []string{"--kernel", a.Kernel.BzImage, "--initrd", a.Initramfs, "--cpus", "2", "--append", cmdline("exit:5")},
			status: 5,
			want:   []string{"flushvm-init: kernel " + a.Kernel.Release + ", 2 CPUs", "flushvm-init: exit status 5"},
		},
		{
			name:   "fsyncstress_on_ext4_virtio_blk",
			args:   []string{"--kernel", a.Kernel.BzImage, "--initrd", script, "--disk", "path=" + img, "--append", cmdline("script")},
			status: 9,
			want:   []string{"write cache: write back", "fdatasync p50", "400 of 400 records intact"},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			st, out, err := harness.QEMU(ctx, consoleWriter{}, tt.args)
			t.Logf("guest boot %d/%d: Debian %s under plain QEMU TCG (stand-in for flushvm), %s: status %d after %.1f s%s",
				i+1, len(tests), a.Kernel.Release, tt.name, st, time.Since(start).Seconds(), initUptime(out))
			if err != nil {
				t.Fatal(err)
			}
			if st != tt.status {
				t.Errorf("status %d, want %d", st, tt.status)
			}
			for _, w := range tt.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("console lacks %q:\n%s", w, out)
				}
			}
			if m := regexp.MustCompile(`fsyncstress: .*`).Find(out); m != nil {
				t.Logf("%s", m)
			}
		})
	}
	if fi, err := os.Stat(img); err == nil {
		t.Logf("disk image %s: %d bytes apparent", img, fi.Size())
	}
}
