package integration

// flushvm as a vhost-user-blk backend for QEMU: a real Linux guest under
// QEMU's TCG emulator (no KVM needed) drives `flushvm vhost-user-blk`
// through -device vhost-user-blk-pci, for every cache mode.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/host"
	"github.com/flushvm/flushvm/host/harness"
	"github.com/flushvm/flushvm/host/initramfs"
	"github.com/flushvm/flushvm/host/kernel"
)

var (
	vhuOnce   sync.Once
	vhuImages *vhuArtifacts
	vhuErr    error
)

// vhuArtifacts are what a vhost-user guest boot needs.
type vhuArtifacts struct {
	cache   string
	kernel  string // bzImage
	base    string // initramfs with init, busybox, fsyncstress, modules, fio
	flushvm string // the flushvm binary under test
}

// vhuPrepare skips without QEMU or fio, then builds (once per test binary)
// the flushvm binary and a guest image holding fio and its libraries.
func vhuPrepare(t *testing.T) *vhuArtifacts {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a Linux guest under QEMU TCG; skipped with -short")
	}
	for _, p := range []string{"qemu-system-x86_64", "fio"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s is not installed (Debian: apt-get install qemu-system-x86 fio): vhost-user-blk guest tests skipped", p)
		}
	}
	vhuOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		vhuImages, vhuErr = vhuBuild(ctx)
	})
	if vhuErr != nil {
		t.Fatalf("vhost-user guest artifacts: %v", vhuErr)
	}
	return vhuImages
}

func vhuBuild(ctx context.Context) (*vhuArtifacts, error) {
	cache, err := host.CacheDir()
	if err != nil {
		return nil, err
	}
	k, err := kernel.Fetch(ctx, cache)
	if err != nil {
		return nil, err
	}
	mods, err := k.Modules(kernel.GuestModules...)
	if err != nil {
		return nil, err
	}
	b := initramfs.New()
	b.Busybox()
	b.GoProgram(ctx, "/init", "./guest/cmd/init")
	b.GoProgram(ctx, "/bin/fsyncstress", "./guest/fsyncstress")
	b.Modules(mods)
	if err := vhuAddDynamic(b, "/usr/bin/fio"); err != nil {
		return nil, err
	}
	img, err := b.Build(cache)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	if bin := os.Getenv("FLUSHVM_BIN"); bin != "" {
		// A prebuilt flushvm (CI artifacts, or a tree where another
		// package is mid-edit).
		return &vhuArtifacts{cache: cache, kernel: k.BzImage, base: img, flushvm: bin}, nil
	}
	root, err := host.RepoRoot()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(cache, "bin", "flushvm-vhost-test")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/flushvm")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./cmd/flushvm: %v\n%s", err, out)
	}
	return &vhuArtifacts{cache: cache, kernel: k.BzImage, base: img, flushvm: bin}, nil
}

var vhuUptimeRE = regexp.MustCompile(`uptime ([0-9.]+) s at /init`)

// vhuUptime names the guest's uptime when its /init started, if printed.
func vhuUptime(console string) string {
	if m := vhuUptimeRE.FindStringSubmatch(console); m != nil {
		return "; guest uptime at /init " + m[1] + " s"
	}
	return ""
}

var lddRE = regexp.MustCompile(`(?m)(?:=>\s*)?(/\S+)\s+\(0x`)

// vhuAddDynamic adds a dynamically linked host program with every shared
// library ldd lists, at the same paths, so the guest's loader finds them.
func vhuAddDynamic(b *initramfs.Builder, prog string) error {
	out, err := exec.Command("ldd", prog).Output()
	if err != nil {
		return fmt.Errorf("ldd %s: %w", prog, err)
	}
	b.File(prog, prog, 0o755)
	for _, m := range lddRE.FindAllStringSubmatch(string(out), -1) {
		lib := m[1]
		real, err := filepath.EvalSymlinks(lib)
		if err != nil {
			return fmt.Errorf("%s: %w", lib, err)
		}
		b.Dir(filepath.Dir(lib))
		b.File(lib, real, 0o755)
	}
	return b.Err()
}

// vhuGuest is one guest boot against `flushvm vhost-user-blk`.
type vhuGuest struct {
	console string
	stats   blk.Stats
	disk    string
	status  int // flushvm's exit status
	stderr  string
}

// vhuBoot serves disk (SPEC options appended to path=) with flushvm and
// boots the guest running script.
func vhuBoot(t *testing.T, a *vhuArtifacts, cacheOpt string, queues int, script string, extra *initramfs.Builder) vhuGuest {
	t.Helper()
	dir := t.TempDir()
	diskImg := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(diskImg, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(diskImg, 128<<20); err != nil {
		t.Fatal(err)
	}
	extra.Bytes("/run.sh", []byte(script), 0o755)
	img, err := initramfs.Append(a.cache, a.base, extra)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "vhu.sock")
	statsFile := filepath.Join(dir, "stats.json")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	be := exec.CommandContext(ctx, "nice", a.flushvm, "vhost-user-blk", "--socket", sock,
		"--disk", "path="+diskImg+cacheOpt, "--queues", strconv.Itoa(queues), "--stats", statsFile)
	be.Stderr = &stderr
	if err := be.Start(); err != nil {
		t.Fatal(err)
	}
	vhuWaitSocket(t, be, sock, &stderr)
	q := exec.CommandContext(ctx, "nice", vhuQEMUArgs(a.kernel, img, sock, queues)...)
	var console bytes.Buffer
	q.Stdout, q.Stderr = &console, &console
	t0 := time.Now()
	qerr := q.Run()
	t.Logf("guest boot: qemu-system-x86_64 -accel tcg, vhost-user-blk-pci num-queues=%d -> flushvm vhost-user-blk --disk path=DISK%s --queues %d: %.1f s wall%s",
		queues, cacheOpt, queues, time.Since(t0).Seconds(), vhuUptime(console.String()))
	done := make(chan error, 1)
	go func() { done <- be.Wait() }()
	var berr error
	select {
	case berr = <-done:
	case <-time.After(30 * time.Second):
		be.Process.Kill()
		<-done
		t.Fatalf("flushvm did not exit after QEMU disconnected; stderr:\n%s", stderr.String())
	}
	g := vhuGuest{console: console.String(), disk: diskImg, stderr: stderr.String()}
	if qerr != nil {
		t.Fatalf("qemu: %v; console:\n%s\nflushvm:\n%s", qerr, g.console, g.stderr)
	}
	if be.ProcessState != nil {
		g.status = be.ProcessState.ExitCode()
	}
	_ = berr
	b, err := os.ReadFile(statsFile)
	if err != nil {
		t.Fatalf("--stats: %v; flushvm:\n%s", err, g.stderr)
	}
	var doc disk.Stats
	if err := json.Unmarshal(b, &doc); err != nil || len(doc.Disks) != 1 {
		t.Fatalf("--stats %s: %v", b, err)
	}
	g.stats = doc.Disks[0].Stats
	return g
}

// vhuWaitSocket waits (up to 5 s) for the backend be to create its socket;
// if it does not, it stops be and fails the test with be's stderr.
func vhuWaitSocket(t *testing.T, be *exec.Cmd, sock string, stderr *bytes.Buffer) {
	t.Helper()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			return
		}
		if i == 100 {
			be.Process.Kill()
			be.Wait()
			t.Fatalf("flushvm did not create %s: %s", sock, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// vhuQEMUArgs is the QEMU command line (after "nice") booting kernel and
// initrd with one vhost-user-blk-pci disk of queues queues on sock.
func vhuQEMUArgs(kernelPath, initrd, sock string, queues int) []string {
	return harness.QEMUCommand{SMP: 2, Kernel: kernelPath, Initrd: initrd,
		Append: "console=ttyS0 panic=-1 quiet flushvm.run=script",
		Extra: []string{"-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem",
			"-chardev", "socket,id=vhu,path=" + sock,
			"-device", "vhost-user-blk-pci,chardev=vhu,num-queues=" + strconv.Itoa(queues)},
	}.Args()
}

// vhuScript checks and toggles the cache the guest sees, optionally runs
// fsyncstress and fio with crc32c verification, and writes /pattern.bin at
// 64 MiB. Linux's /sys/block/vda/queue/write_cache is the block layer's
// view; the device's writeback field is changed through virtio_blk's own
// /sys/block/vda/cache_type (writing queue/write_cache never reaches the
// device).
const vhuScript = `set -e
wc() { cat /sys/block/vda/queue/write_cache; }
echo "VHU initial=$(wc)"
orig=$(cat /sys/block/vda/cache_type)
if [ "$orig" = "write back" ]; then flip="write through"; else flip="write back"; fi
echo "$flip" > /sys/block/vda/cache_type
echo "VHU toggled=$(wc)"
echo "$orig" > /sys/block/vda/cache_type
echo "VHU restored=$(wc)"
if [ "$FULL" = 1 ]; then
	/bin/fsyncstress -dev /dev/vda -writers 4 -records 100
	/usr/bin/fio --name=verify --filename=/dev/vda --size=32M --rw=randwrite --bs=4k \
		--ioengine=libaio --iodepth=16 --direct=1 --verify=crc32c --do_verify=1 \
		--verify_fatal=1 --randrepeat=1 --output-format=terse --terse-version=3 >/tmp/fio.out
	echo "VHU fio=ok"
	# Large O_DIRECT writes, each read back from the device.
	want=$(md5sum </pattern.bin)
	i=0
	while [ $i -lt 16 ]; do
		dd if=/pattern.bin of=/dev/vda bs=1M seek=$((80 + i)) oflag=direct 2>/dev/null
		got=$(dd if=/dev/vda bs=1M skip=$((80 + i)) count=1 iflag=direct 2>/dev/null | md5sum)
		[ "$got" = "$want" ] || { echo "VHU readback $i differs"; exit 1; }
		i=$((i + 1))
	done
	echo "VHU readback=ok"
fi
dd if=/pattern.bin of=/dev/vda bs=1M seek=64 oflag=direct conv=fsync 2>/dev/null
echo "VHU pattern=written"
`

// TestVhostUserBlkQEMU boots Linux under QEMU TCG against flushvm
// vhost-user-blk in every cache mode (and writeback with two queues): the
// guest sees the right write cache, toggles it (the device counts the
// changes), runs fsyncstress and fio with crc32c verification and checks
// large O_DIRECT writes read back (writeback and none), and the pattern it
// writes is byte-exact in the host file after the VM is gone.
func TestVhostUserBlkQEMU(t *testing.T) {
	a := vhuPrepare(t)
	cases := []struct {
		mode   blk.CacheMode
		queues int
		wc     string
		full   bool
	}{
		{blk.CacheWriteback, 1, "write back", true},
		{blk.CacheWriteback, 2, "write back", true},
		{blk.CacheNone, 1, "write back", true},
		{blk.CacheWritethrough, 1, "write through", false},
		{blk.CacheDirectSync, 1, "write through", false},
		{blk.CacheUnsafe, 1, "write back", false},
	}
	for _, tc := range cases {
		name := string(tc.mode)
		if tc.queues > 1 {
			name += "-" + strconv.Itoa(tc.queues) + "queues"
		}
		t.Run(name, func(t *testing.T) {
			pattern := make([]byte, 1<<20)
			rand.Read(pattern)
			x := initramfs.Extra()
			x.Bytes("/pattern.bin", pattern, 0o644)
			script := vhuScript
			if tc.full {
				script = "FULL=1\n" + script
			}
			g := vhuBoot(t, a, ",cache="+string(tc.mode), tc.queues, script, x)
			if !strings.Contains(g.console, "flushvm-init: exit status 0") {
				t.Fatalf("guest script failed; console:\n%s\nflushvm:\n%s", g.console, g.stderr)
			}
			if g.status != 0 {
				t.Errorf("flushvm exit status %d; stderr:\n%s", g.status, g.stderr)
			}
			other := "write through"
			if tc.wc == other {
				other = "write back"
			}
			for _, want := range []string{"VHU initial=" + tc.wc, "VHU toggled=" + other, "VHU restored=" + tc.wc} {
				if !strings.Contains(g.console, want) {
					t.Errorf("console lacks %q:\n%s", want, g.console)
				}
			}
			if tc.full && !strings.Contains(g.console, "records intact") {
				t.Errorf("fsyncstress did not verify:\n%s", g.console)
			}
			s := g.stats
			t.Logf("stats: %+v\nstats: writes %d flushes %d host_syncs %d elided %d merged %d wce_changes %d wce %v", s,
				s.Writes, s.Flushes, s.HostSyncs, s.FlushesElided, s.FlushesMerged, s.WCEChanges, s.WCE)
			if s.WCEChanges != 2 {
				t.Errorf("wce_changes = %d, want 2 (the guest toggled the cache and back)", s.WCEChanges)
			}
			if s.Cache != tc.mode || s.Writes == 0 || s.Errors != 0 || s.InvalidRequests != 0 {
				t.Errorf("stats: cache %s writes %d errors %d invalid requests %d", s.Cache, s.Writes, s.Errors, s.InvalidRequests)
			}
			switch tc.mode {
			case blk.CacheWriteback:
				if s.HostSyncs == 0 || s.HostSyncs >= s.Flushes {
					t.Errorf("writeback: host_syncs %d, flushes %d: want 0 < syncs < flushes", s.HostSyncs, s.Flushes)
				}
			case blk.CacheUnsafe:
				if s.HostSyncs != 0 {
					t.Errorf("unsafe: host_syncs = %d, want 0", s.HostSyncs)
				}
			}
			f, err := os.Open(g.disk)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got := make([]byte, len(pattern))
			if _, err := f.ReadAt(got, 64<<20); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, pattern) {
				i := 0
				for i < len(got) && got[i] == pattern[i] {
					i++
				}
				whole, _ := os.ReadFile(g.disk)
				t.Errorf("host file at 64 MiB differs from what the guest wrote, from byte %d (pattern found at file offset %d); console:\n%s",
					i, bytes.Index(whole, pattern[:4096]), g.console)
			}
		})
	}
}
