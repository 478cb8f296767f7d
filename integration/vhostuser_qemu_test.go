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

// vhuDisk is one `flushvm vhost-user-blk` backend of a guest boot: a
// fresh sparse 128 MiB image served with SPEC options spec and queues
// queues, its serial= set to name so the guest finds it.
type vhuDisk struct {
	name   string
	spec   string
	queues int
	img    string
	sock   string
	stats  string
	cmd    *exec.Cmd
	stderr bytes.Buffer
	status int       // flushvm's exit status, once it ended
	st     blk.Stats // from --stats, once it ended
}

// vhuStart starts d's backend in dir.
func vhuStart(ctx context.Context, t *testing.T, a *vhuArtifacts, dir string, d *vhuDisk) {
	t.Helper()
	d.img, d.sock, d.stats = filepath.Join(dir, d.name+".img"), filepath.Join(dir, d.name+".sock"), filepath.Join(dir, d.name+".json")
	if err := os.WriteFile(d.img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(d.img, 128<<20); err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.CommandContext(ctx, "nice", a.flushvm, "vhost-user-blk", "--socket", d.sock,
		"--disk", "path="+d.img+",serial="+d.name+d.spec, "--queues", strconv.Itoa(d.queues), "--stats", d.stats)
	d.cmd.Stderr = &d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.cmd.Process.Kill(); d.cmd.Wait() })
	vhuWaitSocket(t, d.cmd, d.sock, &d.stderr)
}

// vhuBootDisks serves every disk with flushvm, boots one guest running
// script against all of them, waits for each backend to exit after QEMU
// ended and reads its --stats. It returns the guest's console.
func vhuBootDisks(t *testing.T, a *vhuArtifacts, disks []*vhuDisk, script string, extra *initramfs.Builder) string {
	t.Helper()
	dir := t.TempDir()
	extra.Bytes("/run.sh", []byte(script), 0o755)
	img, err := initramfs.Append(a.cache, a.base, extra)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	socks := make([]vhuSocket, len(disks))
	for i, d := range disks {
		vhuStart(ctx, t, a, dir, d)
		socks[i] = vhuSocket{path: d.sock, queues: d.queues}
	}
	q := exec.CommandContext(ctx, "nice", vhuQEMUArgs(a.kernel, img, socks...)...)
	var console bytes.Buffer
	q.Stdout, q.Stderr = &console, &console
	t0 := time.Now()
	qerr := q.Run()
	t.Logf("guest boot: qemu-system-x86_64 -accel tcg, %d vhost-user-blk-pci disks, each served by flushvm vhost-user-blk: %.1f s wall%s",
		len(disks), time.Since(t0).Seconds(), vhuUptime(console.String()))
	for _, d := range disks {
		vhuEnd(t, d)
	}
	if qerr != nil {
		t.Fatalf("qemu: %v; console:\n%s", qerr, console.String())
	}
	return console.String()
}

// vhuEnd waits (up to 30 s) for d's backend to exit after QEMU
// disconnected and reads its --stats.
func vhuEnd(t *testing.T, d *vhuDisk) {
	t.Helper()
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-done
		t.Fatalf("%s: flushvm did not exit after QEMU disconnected; stderr:\n%s", d.name, d.stderr.String())
	}
	d.status = d.cmd.ProcessState.ExitCode()
	b, err := os.ReadFile(d.stats)
	if err != nil {
		t.Fatalf("%s: --stats: %v; flushvm:\n%s", d.name, err, d.stderr.String())
	}
	var doc disk.Stats
	if err := json.Unmarshal(b, &doc); err != nil || len(doc.Disks) != 1 {
		t.Fatalf("%s: --stats %s: %v", d.name, b, err)
	}
	d.st = doc.Disks[0].Stats
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

// vhuSocket is one vhost-user-blk-pci disk of a guest: the backend's
// socket and the number of queues.
type vhuSocket struct {
	path   string
	queues int
}

// vhuQEMUArgs is the QEMU command line (after "nice") booting kernel and
// initrd with one vhost-user-blk-pci disk per socket, in order.
func vhuQEMUArgs(kernelPath, initrd string, socks ...vhuSocket) []string {
	extra := []string{"-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem"}
	for i, s := range socks {
		id := "vhu" + strconv.Itoa(i)
		extra = append(extra, "-chardev", "socket,id="+id+",path="+s.path,
			"-device", "vhost-user-blk-pci,chardev="+id+",num-queues="+strconv.Itoa(s.queues))
	}
	return harness.QEMUCommand{SMP: 2, Kernel: kernelPath, Initrd: initrd,
		Append: "console=ttyS0 panic=-1 quiet flushvm.run=script", Extra: extra}.Args()
}

// vhuScript defines check NAME FULL: it finds the disk whose serial is
// NAME, checks and toggles the cache the guest sees, with FULL=1 runs
// fsyncstress and fio with crc32c verification and checks large O_DIRECT
// writes read back, and writes /pattern.bin at 64 MiB. Linux's
// /sys/block/vdX/queue/write_cache is the block layer's view; the device's
// writeback field is changed through virtio_blk's own
// /sys/block/vdX/cache_type (writing queue/write_cache never reaches the
// device). The test appends one check line per disk.
const vhuScript = `set -e
dev_of() {
	for d in /sys/block/vd*; do
		if [ "$(cat $d/serial)" = "$1" ]; then echo ${d#/sys/block/}; return; fi
	done
	echo "VHU no disk has serial $1" >&2
	exit 1
}
check() {
	name=$1 full=$2
	dev=$(dev_of $name)
	wc() { cat /sys/block/$dev/queue/write_cache; }
	echo "VHU $name initial=$(wc)"
	orig=$(cat /sys/block/$dev/cache_type)
	if [ "$orig" = "write back" ]; then flip="write through"; else flip="write back"; fi
	echo "$flip" > /sys/block/$dev/cache_type
	echo "VHU $name toggled=$(wc)"
	echo "$orig" > /sys/block/$dev/cache_type
	echo "VHU $name restored=$(wc)"
	if [ "$full" = 1 ]; then
		/bin/fsyncstress -dev /dev/$dev -writers 4 -records 100 >/tmp/fsyncstress.out
		grep -q "records intact" /tmp/fsyncstress.out
		echo "VHU $name fsyncstress=ok"
		/usr/bin/fio --name=verify --filename=/dev/$dev --size=32M --rw=randwrite --bs=4k \
			--ioengine=libaio --iodepth=16 --direct=1 --verify=crc32c --do_verify=1 \
			--verify_fatal=1 --randrepeat=1 --output-format=terse --terse-version=3 >/tmp/fio.out
		echo "VHU $name fio=ok"
		# Large O_DIRECT writes, each read back from the device.
		want=$(md5sum </pattern.bin)
		i=0
		while [ $i -lt 16 ]; do
			dd if=/pattern.bin of=/dev/$dev bs=1M seek=$((80 + i)) oflag=direct 2>/dev/null
			got=$(dd if=/dev/$dev bs=1M skip=$((80 + i)) count=1 iflag=direct 2>/dev/null | md5sum)
			[ "$got" = "$want" ] || { echo "VHU $name readback $i differs"; exit 1; }
			i=$((i + 1))
		done
		echo "VHU $name readback=ok"
	fi
	dd if=/pattern.bin of=/dev/$dev bs=1M seek=64 oflag=direct conv=fsync 2>/dev/null
	echo "VHU $name pattern=written"
}
`

// vhuCase is one disk of TestVhostUserBlkQEMU.
type vhuCase struct {
	mode   blk.CacheMode
	queues int
	wc     string // the write cache the guest sees first
	full   bool   // fsyncstress, fio and large O_DIRECT read-back too
	uring  bool   // aio=io_uring
}

func (c vhuCase) name() string {
	// The name is the disk's serial too: at most 20 bytes.
	n := string(c.mode)
	if c.queues > 1 {
		n += "-" + strconv.Itoa(c.queues) + "q"
	}
	if c.uring {
		n += "-uring"
	}
	return n
}

// spec is the case's SPEC options.
func (c vhuCase) spec() string {
	s := ",cache=" + string(c.mode)
	if c.uring {
		s += ",aio=io_uring"
	}
	return s
}

// TestVhostUserBlkQEMU boots one Linux guest under QEMU TCG with a disk
// per cache mode (and writeback with two queues), each served by its own
// flushvm vhost-user-blk: the guest finds each disk by its serial (GET_ID),
// sees the right write cache, toggles it (the device counts the changes),
// runs fsyncstress and fio with crc32c verification and checks large
// O_DIRECT writes read back (writeback and none), and the pattern it writes
// is byte-exact in each host file after the VM is gone.
func TestVhostUserBlkQEMU(t *testing.T) {
	a := vhuPrepare(t)
	cases := []vhuCase{
		{blk.CacheWriteback, 1, "write back", true, false},
		{blk.CacheWriteback, 2, "write back", true, true},
		{blk.CacheNone, 1, "write back", true, true},
		{blk.CacheWritethrough, 1, "write through", false, false},
		{blk.CacheDirectSync, 1, "write through", false, false},
		{blk.CacheUnsafe, 1, "write back", false, false},
	}
	pattern := make([]byte, 1<<20)
	rand.Read(pattern)
	x := initramfs.Extra()
	x.Bytes("/pattern.bin", pattern, 0o644)
	script := vhuScript
	disks := make([]*vhuDisk, len(cases))
	for i, tc := range cases {
		disks[i] = &vhuDisk{name: tc.name(), spec: tc.spec(), queues: tc.queues}
		full := 0
		if tc.full {
			full = 1
		}
		script += fmt.Sprintf("check %s %d\n", tc.name(), full)
	}
	console := vhuBootDisks(t, a, disks, script, x)
	if !strings.Contains(console, "flushvm-init: exit status 0") {
		t.Fatalf("guest script failed; console:\n%s", console)
	}
	for i, tc := range cases {
		t.Run(tc.name(), func(t *testing.T) { checkVhuCase(t, tc, disks[i], console, pattern) })
	}
}

// checkVhuCase checks what the guest printed for one disk, its backend's
// --stats and the pattern in its host file.
func checkVhuCase(t *testing.T, tc vhuCase, d *vhuDisk, console string, pattern []byte) {
	if d.status != 0 {
		t.Errorf("flushvm exit status %d; stderr:\n%s", d.status, d.stderr.String())
	}
	other := "write through"
	if tc.wc == other {
		other = "write back"
	}
	want := []string{"initial=" + tc.wc, "toggled=" + other, "restored=" + tc.wc, "pattern=written"}
	if tc.full {
		want = append(want, "fsyncstress=ok", "fio=ok", "readback=ok")
	}
	for _, w := range want {
		if !strings.Contains(console, "VHU "+d.name+" "+w) {
			t.Errorf("console lacks %q:\n%s", "VHU "+d.name+" "+w, console)
		}
	}
	s := d.st
	t.Logf("stats: %+v\nstats: writes %d flushes %d host_syncs %d elided %d merged %d wce_changes %d wce %v", s,
		s.Writes, s.Flushes, s.HostSyncs, s.FlushesElided, s.FlushesMerged, s.WCEChanges, s.WCE)
	if s.WCEChanges != 2 {
		t.Errorf("wce_changes = %d, want 2 (the guest toggled the cache and back)", s.WCEChanges)
	}
	if s.Cache != tc.mode || s.Writes == 0 || s.GetIDs == 0 || s.Errors != 0 || s.InvalidRequests != 0 {
		t.Errorf("stats: cache %s writes %d get_ids %d errors %d invalid requests %d", s.Cache, s.Writes, s.GetIDs, s.Errors, s.InvalidRequests)
	}
	// aio=io_uring: every read of the guest went through the ring, and
	// with cache=none every write too (O_DIRECT, page-aligned guest
	// buffers); buffered writes stay on the worker pool (vhost-user guest
	// memory, two queues).
	ringWant := uint64(0)
	if tc.uring {
		ringWant = s.Reads
		if tc.mode == blk.CacheNone {
			ringWant += s.Writes
		}
	}
	if want := map[bool]blk.AIOEngine{false: blk.AIOThreads, true: blk.AIOIOUring}[tc.uring]; s.AIO != want ||
		s.RingRequests != ringWant {
		t.Errorf("stats: aio %q (fallback %q) ring_requests %d, want %s and %d", s.AIO, s.AIOFallback, s.RingRequests, want, ringWant)
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
	checkPatternAt(t, d.img, 64<<20, pattern, console)
}

// checkPatternAt checks that file holds pattern at offset off.
func checkPatternAt(t *testing.T, file string, off int64, pattern []byte, console string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, len(pattern))
	if _, err := f.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pattern) {
		i := 0
		for i < len(got) && got[i] == pattern[i] {
			i++
		}
		whole, _ := os.ReadFile(file)
		t.Errorf("host file at %d differs from what the guest wrote, from byte %d (pattern found at file offset %d); console:\n%s",
			off, i, bytes.Index(whole, pattern[:4096]), console)
	}
}
