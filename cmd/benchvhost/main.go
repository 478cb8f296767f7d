// Command benchvhost benchmarks flushvm's vhost-user-blk backend against
// the two block paths QEMU users have today, with the same QEMU TCG guest
// (Debian kernel, flushvm's test initramfs plus fio), the same host file and
// the same jobs (fio, and the crash tests' fsyncstress workload), one
// backend after another, repeated:
//
//  1. flushvm vhost-user-blk (cache=writeback), on the worker pool
//  2. the same with aio=io_uring
//  3. qemu-storage-daemon's vhost-user-blk export (file driver, page cache)
//  4. QEMU's built-in virtio-blk (-drive cache=writeback, aio=threads)
//
// It prints one table of medians with min/max and the ratios of each
// flushvm engine to each peer, flushvm's interrupts per request (from its
// --stats),
// and writes it as CSV and as an SVG bar chart. A separate boot per backend
// runs the fdatasync jobs with the backend under `strace -c -f
// --seccomp-bpf -e trace=fdatasync,fsync`, to count host syncs against the
// guest's flushes (from /sys/block/vda/stat) without slowing the timed runs.
//
// Usage (from the repository root; `make bench-vhost` runs it):
//
//	go run ./cmd/benchvhost [-reps 3] [-runtime 5] [-out build/bench-vhost]
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/host"
	"github.com/flushvm/flushvm/host/harness"
	"github.com/flushvm/flushvm/host/initramfs"
	"github.com/flushvm/flushvm/host/kernel"
)

// job is one fio job, or one run of the guest's fsyncstress, in the guest
// against /dev/vda.
type job struct {
	Name string
	// Args are fio arguments beyond the common ones, or with Stress the
	// arguments of /bin/fsyncstress.
	Args string
	// Metric names what is compared: "iops", "MiB/s" or "records/s".
	Metric string
	// Sync marks the fdatasync jobs, whose host syncs are counted.
	Sync bool
	// Stress runs /bin/fsyncstress -dev /dev/vda Args instead of fio: the
	// in-guest workload of the crash tests (writers appending 4 KiB
	// records, an fdatasync after each), reported in records per second.
	Stress bool
}

var jobs = []job{
	{"randread-4k-qd1", "--rw=randread --bs=4k --iodepth=1 --ioengine=psync", "iops", false, false},
	{"randread-4k-qd32", "--rw=randread --bs=4k --iodepth=32 --ioengine=libaio", "iops", false, false},
	{"randwrite-4k-qd32", "--rw=randwrite --bs=4k --iodepth=32 --ioengine=libaio", "iops", false, false},
	{"write-4k-fdatasync-1job", "--rw=write --bs=4k --ioengine=psync --fdatasync=1 --numjobs=1 --size=16M", "iops", true, false},
	{"write-4k-fdatasync-8jobs", "--rw=write --bs=4k --ioengine=psync --fdatasync=1 --numjobs=8 --size=16M --offset_increment=16M", "iops", true, false},
	{"seqread-1m", "--rw=read --bs=1M --iodepth=4 --ioengine=libaio", "MiB/s", false, false},
	{"seqwrite-1m", "--rw=write --bs=1M --iodepth=4 --ioengine=libaio", "MiB/s", false, false},
	{"fsyncstress-4writers", "-writers 4 -records 500", "records/s", true, true},
}

// backend is one way of giving the guest its disk.
type backend struct {
	Name string
	// Short is the column name.
	Short string
	// AIO is the engine of a flushvm backend ("" for the peers).
	AIO blk.AIOEngine
}

// flushvm reports whether b is flushvm's own backend.
func (b backend) flushvm() bool { return b.AIO != "" }

var backends = []backend{
	{"flushvm vhost-user-blk", "flushvm", blk.AIOThreads},
	{"flushvm vhost-user-blk aio=io_uring", "flushvm-uring", blk.AIOIOUring},
	{"qemu-storage-daemon vhost-user-blk", "qsd", ""},
	{"QEMU virtio-blk cache=writeback", "qemu", ""},
}

type config struct {
	reps     int
	runtime  int
	diskMiB  int
	out      string
	flushvm  string
	only     string
	noStrace bool
}

func main() {
	var c config
	flag.IntVar(&c.reps, "reps", 3, "repetitions of every backend")
	flag.IntVar(&c.runtime, "runtime", 5, "seconds per fio job")
	flag.IntVar(&c.diskMiB, "disk", 256, "host file size in MiB")
	flag.StringVar(&c.out, "out", "build/bench-vhost", "output directory (CSV, SVG, logs)")
	flag.StringVar(&c.flushvm, "flushvm", "", "flushvm binary (default: go build ./cmd/flushvm)")
	flag.StringVar(&c.only, "backends", "flushvm,flushvm-uring,qsd,qemu", "backends to run, comma separated")
	flag.BoolVar(&c.noStrace, "no-strace", false, "skip the host sync counting boots")
	flag.Parse()
	if err := run(c); err != nil {
		fmt.Fprintf(os.Stderr, "benchvhost: %v\n", err)
		os.Exit(1)
	}
}

// env is everything prepared once per benchmark.
type env struct {
	config
	kernel, initrd string
	disk           string
	logs           *os.File
}

func run(c config) error {
	for _, p := range []string{"qemu-system-x86_64", "qemu-storage-daemon", "fio", "strace"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s is not installed", p)
		}
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	ctx := context.Background()
	e := &env{config: c}
	var err error
	if e.kernel, e.initrd, err = buildImage(ctx, c.runtime); err != nil {
		return err
	}
	if e.flushvm == "" {
		e.flushvm = filepath.Join(c.out, "flushvm")
		cmd := exec.Command("go", "build", "-o", e.flushvm, "./cmd/flushvm")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/flushvm: %v\n%s", err, out)
		}
	}
	e.disk, err = filepath.Abs(filepath.Join(c.out, "disk.img"))
	if err != nil {
		return err
	}
	if err := fillDisk(e.disk, c.diskMiB); err != nil {
		return err
	}
	if e.logs, err = os.Create(filepath.Join(c.out, "console.log")); err != nil {
		return err
	}
	defer e.logs.Close()

	var selected []backend
	for _, b := range backends {
		if strings.Contains(","+c.only+",", ","+b.Short+",") {
			selected = append(selected, b)
		}
	}
	res := results{iops: map[string]map[string][]float64{}, wc: map[string]string{},
		syncs: map[string]map[string]syncCount{}, cpu: map[string][]float64{}, irq: map[string][][3]uint64{}}
	for rep := 1; rep <= c.reps; rep++ {
		for _, b := range selected {
			fmt.Fprintf(os.Stderr, "rep %d/%d: %s ...", rep, c.reps, b.Name)
			t0 := time.Now()
			r, err := e.boot(ctx, b, "")
			if err != nil {
				return fmt.Errorf("%s rep %d: %w", b.Name, rep, err)
			}
			fmt.Fprintf(os.Stderr, " %.0f s\n", time.Since(t0).Seconds())
			res.add(b, r)
		}
	}
	if !c.noStrace {
		for _, b := range selected {
			res.syncs[b.Short] = map[string]syncCount{}
			for _, j := range jobs {
				if !j.Sync {
					continue
				}
				fmt.Fprintf(os.Stderr, "sync counting boot: %s, %s ...", b.Name, j.Name)
				r, err := e.boot(ctx, b, j.Name)
				if err != nil {
					return fmt.Errorf("%s strace boot: %w", b.Name, err)
				}
				fmt.Fprintf(os.Stderr, " done\n")
				res.syncs[b.Short][j.Name] = r.syncs
			}
		}
	}
	return res.report(os.Stdout, c, selected)
}

// fillDisk makes the shared host file: fully written (no holes), so every
// backend reads real data, and left in the page cache.
func fillDisk(path string, mib int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>9)
	}
	for i := 0; i < mib; i++ {
		buf[0] = byte(i)
		if _, err := f.Write(buf); err != nil {
			return err
		}
	}
	return f.Sync()
}

// buildImage builds the kernel and an initramfs holding fio (and its
// shared libraries) and the benchmark script.
func buildImage(ctx context.Context, runtime int) (kernelPath, initrd string, err error) {
	cache, err := host.CacheDir()
	if err != nil {
		return "", "", err
	}
	k, err := kernel.Fetch(ctx, cache)
	if err != nil {
		return "", "", err
	}
	mods, err := k.Modules(kernel.GuestModules...)
	if err != nil {
		return "", "", err
	}
	b := initramfs.New()
	b.Busybox()
	b.GoProgram(ctx, "/init", "./guest/cmd/init")
	b.GoProgram(ctx, "/bin/fsyncstress", "./guest/fsyncstress")
	b.Modules(mods)
	if err := addDynamic(b, "/usr/bin/fio"); err != nil {
		return "", "", err
	}
	base, err := b.Build(cache)
	if err != nil {
		return "", "", fmt.Errorf("initramfs: %w", err)
	}
	x := initramfs.Extra()
	x.Bytes("/run.sh", []byte(script(runtime)), 0o755)
	img, err := initramfs.Append(cache, base, x)
	if err != nil {
		return "", "", err
	}
	return k.BzImage, img, nil
}

var lddRE = regexp.MustCompile(`(?m)(?:=>\s*)?(/\S+)\s+\(0x`)

// addDynamic adds a dynamically linked host program and every library ldd
// lists, at the same paths.
func addDynamic(b *initramfs.Builder, prog string) error {
	out, err := exec.Command("ldd", prog).Output()
	if err != nil {
		return fmt.Errorf("ldd %s: %w", prog, err)
	}
	b.File(prog, prog, 0o755)
	for _, m := range lddRE.FindAllStringSubmatch(string(out), -1) {
		real, err := filepath.EvalSymlinks(m[1])
		if err != nil {
			return err
		}
		b.Dir(filepath.Dir(m[1]))
		b.File(m[1], real, 0o755)
	}
	return b.Err()
}

// script is the guest's /run.sh: every job (argument "all") or the one job
// named, each framed by markers and the disk's stat line (field 16 counts
// the flushes the guest sent).
func script(runtime int) string {
	var s strings.Builder
	s.WriteString("echo \"BENCH write_cache=$(cat /sys/block/vda/queue/write_cache)\"\n")
	common := fmt.Sprintf("--filename=/dev/vda --direct=1 --time_based --runtime=%d --ramp_time=1 --size=192M --group_reporting --output-format=json", runtime)
	for _, j := range jobs {
		fmt.Fprintf(&s, "if [ \"$1\" = all ] || [ \"$1\" = %s ]; then\n", j.Name)
		fmt.Fprintf(&s, "echo \"BENCH-STAT %s before $(cat /sys/block/vda/stat)\"\n", j.Name)
		fmt.Fprintf(&s, "echo BENCH-BEGIN %s\n", j.Name)
		if j.Stress {
			fmt.Fprintf(&s, "/bin/fsyncstress -dev /dev/vda %s\n", j.Args)
		} else {
			fmt.Fprintf(&s, "/usr/bin/fio --name=%s %s %s\n", j.Name, common, j.Args)
		}
		fmt.Fprintf(&s, "echo BENCH-END %s\n", j.Name)
		fmt.Fprintf(&s, "echo \"BENCH-STAT %s after $(cat /sys/block/vda/stat)\"\n", j.Name)
		s.WriteString("fi\n")
	}
	return s.String()
}

// bootResult is what one guest boot measured.
type bootResult struct {
	values     map[string]float64 // job -> iops or MiB/s
	writeCache string
	syncs      syncCount
	// cpu is the host CPU time of the backend process (for QEMU's
	// built-in device, of QEMU itself, vCPUs included).
	cpu time.Duration
	// stats is flushvm's --stats entry for the disk (nil for the peers).
	stats *blk.Stats
}

// syncCount compares the guest's flushes with the backend's host syncs
// during one fdatasync job.
type syncCount struct {
	GuestFlushes map[string]uint64 // job -> flushes the guest sent
	HostSyncs    uint64            // fdatasync+fsync calls of the backend
	Measured     bool
}

// boot runs the guest once against b: every job, or with syncJob set only
// that job, with the backend under strace to count its host syncs.
func (e *env) boot(ctx context.Context, b backend, syncJob string) (bootResult, error) {
	syncCounting := syncJob != ""
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "benchvhost-")
	if err != nil {
		return bootResult{}, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "vhu.sock")
	straceOut := filepath.Join(dir, "strace.txt")
	strace := func(args ...string) []string {
		if !syncCounting {
			return args
		}
		return append([]string{"strace", "-f", "-c", "--seccomp-bpf", "-e", "trace=fdatasync,fsync", "-o", straceOut}, args...)
	}
	runArg := "all"
	if syncCounting {
		runArg = syncJob
	}
	qemu := harness.QEMUCommand{SMP: 2, Kernel: e.kernel, Initrd: e.initrd,
		Append: "console=ttyS0 panic=-1 quiet flushvm.run=script flushvm.args=" + runArg,
		Extra:  []string{"-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem"},
	}.Args()
	var daemonErr bytes.Buffer
	daemon := e.daemon(ctx, b, sock, dir, strace)
	if daemon != nil {
		daemon.Stderr = &daemonErr
		daemon.Stdout = &daemonErr
		if err := daemon.Start(); err != nil {
			return bootResult{}, err
		}
		defer func() {
			if daemon.ProcessState == nil {
				daemon.Process.Kill()
				daemon.Wait()
			}
		}()
		if err := waitFor(sock); err != nil {
			return bootResult{}, fmt.Errorf("%s: %w: %s", b.Name, err, daemonErr.String())
		}
		qemu = append(qemu, "-chardev", "socket,id=vhu,path="+sock,
			"-device", "vhost-user-blk-pci,chardev=vhu,num-queues=1")
	} else {
		qemu = append(qemu, "-drive", "file="+e.disk+",format=raw,if=none,id=d0,cache=writeback,aio=threads",
			"-device", "virtio-blk-pci,drive=d0,num-queues=1")
	}
	var q *exec.Cmd
	if daemon == nil {
		q = exec.CommandContext(ctx, "nice", strace(qemu...)...)
	} else {
		q = exec.CommandContext(ctx, "nice", qemu...)
	}
	var console bytes.Buffer
	q.Stdout = io.MultiWriter(&console, e.logs)
	q.Stderr = q.Stdout
	fmt.Fprintf(e.logs, "\n===== %s (sync counting %v) =====\n", b.Name, syncCounting)
	if err := q.Run(); err != nil {
		return bootResult{}, fmt.Errorf("qemu: %w", err)
	}
	if daemon != nil {
		if err := stopDaemon(daemon, b, syncCounting); err != nil {
			return bootResult{}, fmt.Errorf("%w: %s", err, daemonErr.String())
		}
	}
	// The backend's CPU time: the daemon's, or QEMU's for its own device.
	served := q
	if daemon != nil {
		served = daemon
	}
	r, err := resultOf(b, console.String(), straceOut, syncCounting, served)
	if err == nil && b.flushvm() {
		r.stats, err = flushvmStats(filepath.Join(dir, "stats.json"), b)
	}
	return r, err
}

// flushvmStats reads the disk's entry of flushvm's --stats file and checks
// that the engine b names served it: a fallback to threads would make the
// io_uring column measure the worker pool.
func flushvmStats(path string, b backend) (*blk.Stats, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.Name, err)
	}
	var doc disk.Stats
	if err := json.Unmarshal(data, &doc); err != nil || len(doc.Disks) != 1 {
		return nil, fmt.Errorf("%s: %s: not a one-disk stats document (%v)", b.Name, path, err)
	}
	st := doc.Disks[0].Stats
	if st.AIO != b.AIO {
		return nil, fmt.Errorf("%s: the disk ran on %s, not %s (%s)", b.Name, st.AIO, b.AIO, st.AIOFallback)
	}
	return &st, nil
}

// resultOf reads a finished boot of backend b: fio's numbers from the
// console, the host syncs strace counted in straceOut (when counting), and
// the CPU time of served, the process that served the disk.
func resultOf(b backend, console, straceOut string, syncCounting bool, served *exec.Cmd) (bootResult, error) {
	r, err := parseConsole(console)
	if err != nil {
		return r, fmt.Errorf("%s: %w", b.Name, err)
	}
	if syncCounting {
		n, err := parseStrace(straceOut)
		if err != nil {
			return r, err
		}
		r.syncs.HostSyncs, r.syncs.Measured = n, true
	}
	if ps := served.ProcessState; ps != nil {
		r.cpu = ps.UserTime() + ps.SystemTime()
	}
	return r, nil
}

// daemon is the vhost-user backend's command for backend b serving e's
// disk on sock (nil: b is QEMU's own virtio-blk); wrap adds strace when
// host syncs are counted.
func (e *env) daemon(ctx context.Context, b backend, sock, dir string, wrap func(...string) []string) *exec.Cmd {
	switch {
	case b.flushvm():
		return exec.CommandContext(ctx, "nice", wrap(e.flushvm, "vhost-user-blk", "--socket", sock,
			"--disk", "path="+e.disk+",cache=writeback,aio="+string(b.AIO), "--stats", filepath.Join(dir, "stats.json"))...)
	case b.Short == "qsd":
		return exec.CommandContext(ctx, "nice", wrap("qemu-storage-daemon",
			"--blockdev", "driver=file,node-name=f0,filename="+e.disk,
			"--blockdev", "driver=raw,node-name=d0,file=f0",
			"--export", "type=vhost-user-blk,id=e0,addr.type=unix,addr.path="+sock+",node-name=d0,writable=on,num-queues=1")...)
	}
	return nil
}

// stopDaemon waits (up to a minute) for the backend to exit once QEMU has:
// flushvm's ends with its frontend; qemu-storage-daemon serves on, so it
// gets SIGTERM (under strace, strace's child does).
func stopDaemon(daemon *exec.Cmd, b backend, syncCounting bool) error {
	if b.Short == "qsd" {
		signalDaemon(daemon, syncCounting)
	}
	done := make(chan error, 1)
	go func() { done <- daemon.Wait() }()
	select {
	case <-done:
		return nil
	case <-time.After(60 * time.Second):
		daemon.Process.Kill()
		<-done
		return fmt.Errorf("%s did not exit", b.Name)
	}
}

// signalDaemon sends SIGTERM to the daemon process (the child of strace
// when it runs under strace).
func signalDaemon(cmd *exec.Cmd, underStrace bool) {
	pid := cmd.Process.Pid
	// cmd is `nice ...`: nice execs, so pid is strace or the daemon.
	if underStrace {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				if c, err := strconv.Atoi(f[0]); err == nil {
					pid = c
				}
			}
		}
	}
	syscall.Kill(pid, syscall.SIGTERM)
}

func waitFor(path string) error {
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("socket never appeared")
}

// fioJSON is the part of fio's JSON output the benchmark reads.
type fioJSON struct {
	Jobs []struct {
		Read  fioDir `json:"read"`
		Write fioDir `json:"write"`
	} `json:"jobs"`
}

type fioDir struct {
	IOPS float64 `json:"iops"`
	BW   float64 `json:"bw"` // KiB/s
}

// stressRE finds the rate in fsyncstress's summary line ("..., 437
// records/s, ...").
var stressRE = regexp.MustCompile(`fdatasyncs in [0-9.]+ s, ([0-9.]+) records/s`)

func parseConsole(console string) (bootResult, error) {
	r := bootResult{values: map[string]float64{}, syncs: syncCount{GuestFlushes: map[string]uint64{}}}
	if m := regexp.MustCompile(`BENCH write_cache=([a-z ]+)`).FindStringSubmatch(console); m != nil {
		r.writeCache = strings.TrimSpace(m[1])
	}
	before := map[string]uint64{}
	for _, line := range strings.Split(console, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3+16 && f[0] == "BENCH-STAT" {
			flushes, _ := strconv.ParseUint(f[3+15], 10, 64)
			if f[2] == "before" {
				before[f[1]] = flushes
			} else {
				r.syncs.GuestFlushes[f[1]] = flushes - before[f[1]]
			}
		}
	}
	for _, j := range jobs {
		begin := strings.Index(console, "BENCH-BEGIN "+j.Name)
		end := strings.Index(console, "BENCH-END "+j.Name)
		if begin < 0 || end < begin {
			continue
		}
		body := console[begin+len("BENCH-BEGIN "+j.Name) : end]
		if j.Stress {
			m := stressRE.FindStringSubmatch(body)
			if m == nil {
				return r, fmt.Errorf("job %s: no fsyncstress summary line", j.Name)
			}
			r.values[j.Name], _ = strconv.ParseFloat(m[1], 64)
			continue
		}
		if i := strings.Index(body, "{"); i >= 0 {
			body = body[i:]
		}
		var out fioJSON
		if err := json.NewDecoder(strings.NewReader(body)).Decode(&out); err != nil || len(out.Jobs) == 0 {
			return r, fmt.Errorf("job %s: fio output not understood: %v", j.Name, err)
		}
		d := out.Jobs[0].Read
		if strings.Contains(j.Args, "write") {
			d = out.Jobs[0].Write
		}
		if j.Metric == "MiB/s" {
			r.values[j.Name] = d.BW / 1024
		} else {
			r.values[j.Name] = d.IOPS
		}
	}
	if len(r.values) == 0 {
		return r, errors.New("no fio results on the console (see console.log)")
	}
	return r, nil
}

// parseStrace sums the calls column of `strace -c` for fdatasync and fsync.
func parseStrace(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("strace summary: %w", err)
	}
	defer f.Close()
	var n uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) >= 5 && (fl[len(fl)-1] == "fdatasync" || fl[len(fl)-1] == "fsync") {
			// % time, seconds, usecs/call, calls, [errors,] syscall
			c, err := strconv.ParseUint(fl[3], 10, 64)
			if err == nil {
				n += c
			}
		}
	}
	return n, sc.Err()
}

// results collects every boot.
type results struct {
	iops  map[string]map[string][]float64 // backend -> job -> values
	wc    map[string]string
	syncs map[string]map[string]syncCount // backend -> job -> counts
	cpu   map[string][]float64            // backend -> CPU seconds per timed boot
	// irq holds flushvm's counters per timed boot: completed requests,
	// used-ring batches and interrupts.
	irq map[string][][3]uint64
}

func (r *results) add(b backend, br bootResult) {
	if r.iops[b.Short] == nil {
		r.iops[b.Short] = map[string][]float64{}
	}
	for j, v := range br.values {
		r.iops[b.Short][j] = append(r.iops[b.Short][j], v)
	}
	r.wc[b.Short] = br.writeCache
	r.cpu[b.Short] = append(r.cpu[b.Short], br.cpu.Seconds())
	if st := br.stats; st != nil {
		reqs := st.Reads + st.Writes + st.Flushes + st.Discards + st.WriteZeroes + st.GetIDs + st.Unsupported + st.Errors
		r.irq[b.Short] = append(r.irq[b.Short], [3]uint64{reqs, st.UsedBatches, st.Interrupts})
	}
}

// stat is a median with its range.
type stat struct{ med, min, max float64 }

func summarize(v []float64) (stat, bool) {
	if len(v) == 0 {
		return stat{}, false
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{m, s[0], s[len(s)-1]}, true
}

func (r *results) report(w io.Writer, c config, sel []backend) error {
	fmt.Fprintf(w, "\nvhost-user-blk benchmark: QEMU TCG guest (-smp 2, 512 MiB), fio and fsyncstress on /dev/vda, %d s per fio job, %d repetitions, medians [min-max]\n\n", c.runtime, c.reps)
	header := []string{"job", "metric"}
	for _, b := range sel {
		header = append(header, b.Short+" median", b.Short+" min", b.Short+" max")
	}
	ratios := ratioPairs(sel)
	ratioCols := []string{}
	for _, p := range ratios {
		ratioCols = append(ratioCols, p[0]+"/"+p[1])
	}
	header = append(header, ratioCols...)
	var rows [][]string
	fmt.Fprintf(w, "%-26s %-6s", "job", "unit")
	for _, b := range sel {
		fmt.Fprintf(w, " %24s", b.Short)
	}
	for _, rc := range ratioCols {
		fmt.Fprintf(w, " %13s", rc)
	}
	fmt.Fprintln(w)
	chart := map[string]map[string]stat{}
	for _, j := range jobs {
		row := []string{j.Name, j.Metric}
		fmt.Fprintf(w, "%-26s %-6s", j.Name, j.Metric)
		meds := map[string]float64{}
		for _, b := range sel {
			s, ok := summarize(r.iops[b.Short][j.Name])
			if !ok {
				fmt.Fprintf(w, " %24s", "-")
				row = append(row, "", "", "")
				continue
			}
			meds[b.Short] = s.med
			if chart[j.Name] == nil {
				chart[j.Name] = map[string]stat{}
			}
			chart[j.Name][b.Short] = s
			fmt.Fprintf(w, " %24s", fmt.Sprintf("%.0f [%.0f-%.0f]", s.med, s.min, s.max))
			row = append(row, f1(s.med), f1(s.min), f1(s.max))
		}
		for _, p := range ratios {
			ratio := ""
			if meds[p[0]] > 0 && meds[p[1]] > 0 {
				ratio = fmt.Sprintf("%.2f", meds[p[0]]/meds[p[1]])
			}
			fmt.Fprintf(w, " %13s", ratio)
			row = append(row, ratio)
		}
		fmt.Fprintln(w)
		rows = append(rows, row)
	}
	r.syncTable(w, sel)
	r.irqTable(w, sel)
	if err := writeCSV(filepath.Join(c.out, "bench-vhost.csv"), header, rows, r, sel); err != nil {
		return err
	}
	if err := writeSVG(filepath.Join(c.out, "bench-vhost.svg"), chart, sel, c); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nwrote %s and %s\n", filepath.Join(c.out, "bench-vhost.csv"), filepath.Join(c.out, "bench-vhost.svg"))
	return nil
}

// syncTable prints, per backend and fdatasync job, the write cache the
// guest saw, the backend's CPU time, and guest flushes against host syncs.
func (r *results) syncTable(w io.Writer, sel []backend) {
	fmt.Fprintf(w, "\n%-36s %-13s %-10s %-26s %-14s %-11s %s\n", "backend", "write_cache", "CPU s/run", "fdatasync job", "guest flushes", "host syncs", "syncs/flush")
	for _, b := range sel {
		cpu, _ := summarize(r.cpu[b.Short])
		for _, j := range jobs {
			if !j.Sync {
				continue
			}
			sc := r.syncs[b.Short][j.Name]
			host, per := "not measured", ""
			if sc.Measured {
				host = strconv.FormatUint(sc.HostSyncs, 10)
				if g := sc.GuestFlushes[j.Name]; g > 0 {
					per = fmt.Sprintf("%.2f", float64(sc.HostSyncs)/float64(g))
				}
			}
			fmt.Fprintf(w, "%-36s %-13s %-10.1f %-26s %-14d %-11s %s\n", b.Name, r.wc[b.Short], cpu.med, j.Name, sc.GuestFlushes[j.Name], host, per)
		}
	}
}

// ratioPairs are the ratio columns: each flushvm engine over each peer.
func ratioPairs(sel []backend) [][2]string {
	var pairs [][2]string
	for _, own := range sel {
		if !own.flushvm() {
			continue
		}
		for _, peer := range sel {
			if !peer.flushvm() {
				pairs = append(pairs, [2]string{own.Short, peer.Short})
			}
		}
	}
	return pairs
}

// irqTable prints, per flushvm engine, the requests, used-ring batches and
// interrupts of its timed boots (medians over the repetitions, all jobs of
// a boot together): interrupts per request is what completion batching
// saved the guest.
func (r *results) irqTable(w io.Writer, sel []backend) {
	fmt.Fprintf(w, "\n%-36s %-12s %-14s %-12s %-15s %s\n", "backend", "requests", "used batches", "interrupts", "batches/request", "interrupts/request")
	for _, b := range sel {
		var col [3][]float64
		for _, c := range r.irq[b.Short] {
			for i := range col {
				col[i] = append(col[i], float64(c[i]))
			}
		}
		reqs, ok := summarize(col[0])
		if !ok || reqs.med == 0 {
			continue
		}
		batches, _ := summarize(col[1])
		irqs, _ := summarize(col[2])
		fmt.Fprintf(w, "%-36s %-12.0f %-14.0f %-12.0f %-15.2f %.2f\n", b.Name, reqs.med, batches.med, irqs.med, batches.med/reqs.med, irqs.med/reqs.med)
	}
}

func f1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

func writeCSV(path string, header []string, rows [][]string, r *results, sel []backend) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	cw := csv.NewWriter(f)
	cw.Write(header)
	cw.WriteAll(rows)
	cw.Write(nil)
	cw.Write([]string{"backend", "write_cache", "cpu_seconds_median", "job", "guest_flushes", "host_syncs"})
	for _, b := range sel {
		cpu, _ := summarize(r.cpu[b.Short])
		for _, j := range jobs {
			if !j.Sync {
				continue
			}
			sc := r.syncs[b.Short][j.Name]
			host := ""
			if sc.Measured {
				host = strconv.FormatUint(sc.HostSyncs, 10)
			}
			cw.Write([]string{b.Short, r.wc[b.Short], f1(cpu.med), j.Name, strconv.FormatUint(sc.GuestFlushes[j.Name], 10), host})
		}
	}
	cw.Flush()
	return cw.Error()
}

// writeSVG draws one group of bars per job, each bar the backend's median
// relative to QEMU's built-in virtio-blk (or the last backend), with the
// min-max range as a whisker and the absolute median printed above.
func writeSVG(path string, chart map[string]map[string]stat, sel []backend, c config) error {
	colors := map[string]string{"flushvm": "#2b7bba", "flushvm-uring": "#7b3fb0", "qsd": "#e08a2c", "qemu": "#6a9f4a"}
	ref := sel[len(sel)-1].Short
	const (
		left, top, groupW, barW, plotH = 60, 50, 150, 30, 300
	)
	width := left + groupW*len(jobs) + 20
	height := top + plotH + 110
	maxRel := 1.0
	for _, j := range jobs {
		for _, b := range sel {
			s, ok := chart[j.Name][b.Short]
			r := chart[j.Name][ref].med
			if ok && r > 0 && s.max/r > maxRel {
				maxRel = s.max / r
			}
		}
	}
	maxRel *= 1.1
	y := func(v float64) float64 { return float64(top+plotH) - v/maxRel*plotH }
	var s strings.Builder
	fmt.Fprintf(&s, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&s, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&s, `<text x="%d" y="20" font-size="14">vhost-user-blk under QEMU TCG: median relative to %s (whiskers: min-max over %d runs; labels: absolute median)</text>`+"\n", left, ref, c.reps)
	for t := 0.0; t <= maxRel; t += 0.25 {
		fmt.Fprintf(&s, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%.2f</text>`+"\n",
			left, width-20, y(t), y(t), left-5, y(t)+4, t)
	}
	fmt.Fprintf(&s, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#888" stroke-dasharray="4 3"/>`+"\n", left, width-20, y(1), y(1))
	for gi, j := range jobs {
		x0 := left + gi*groupW + 10
		r := chart[j.Name][ref].med
		for bi, b := range sel {
			st, ok := chart[j.Name][b.Short]
			if !ok || r <= 0 {
				continue
			}
			x := float64(x0 + bi*(barW+4))
			fmt.Fprintf(&s, `<rect x="%.1f" y="%.1f" width="%d" height="%.1f" fill="%s"/>`+"\n", x, y(st.med/r), barW, y(0)-y(st.med/r), colors[b.Short])
			cx := x + barW/2
			fmt.Fprintf(&s, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/>`+"\n", cx, cx, y(st.min/r), y(st.max/r))
			fmt.Fprintf(&s, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="9">%.0f</text>`+"\n", cx, y(st.max/r)-4, st.med)
		}
		fmt.Fprintf(&s, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", x0+len(sel)*(barW+4)/2, top+plotH+16, j.Name)
		fmt.Fprintf(&s, `<text x="%d" y="%d" text-anchor="middle" fill="#555">(%s)</text>`+"\n", x0+len(sel)*(barW+4)/2, top+plotH+30, j.Metric)
	}
	for bi, b := range sel {
		x := left + bi*260
		fmt.Fprintf(&s, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", x, height-40, colors[b.Short], x+16, height-30, b.Name)
	}
	s.WriteString("</svg>\n")
	return os.WriteFile(path, []byte(s.String()), 0o644)
}
