package blk

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/virtio"
)

// The benchmarks compare the device path alone — mock driver, virtqueue,
// parsing, worker pool, completion batching — with the same harness issuing
// the raw preadv calls: same file (page-cached), same 4 KiB buffers in the
// same guest memory, same random offsets, same queue depth, same number of
// worker goroutines. Their ratio (raw ns/op ÷ device ns/op) is the share of
// raw-syscall throughput the device keeps.
//
//	go test ./blk -run '^$' -bench 'RandRead4K|RawPreadv4K' -benchmem

const (
	benchDiskSize = 64 << 20
	benchQD       = 32
	benchBlock    = 4096
)

// benchDisk is a page-cached file full of data, shared by the benchmarks.
var benchDisk = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "flushvm-blk-bench")
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "disk.img")
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*31 + i>>12)
	}
	f, err := os.Create(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	for range benchDiskSize / len(buf) {
		if _, err := f.Write(buf); err != nil {
			return "", err
		}
	}
	// Read it once so it is in the page cache.
	if _, err := os.ReadFile(p); err != nil {
		return "", err
	}
	return p, nil
})

// benchOffsets returns n random 4 KiB-aligned sectors inside the disk.
func benchOffsets(n int) []uint64 {
	r := rand.New(rand.NewPCG(1, 2))
	s := make([]uint64, n)
	for i := range s {
		s[i] = uint64(r.IntN(benchDiskSize/benchBlock)) * (benchBlock / SectorSize)
	}
	return s
}

// benchReq is one preallocated virtio_blk read: header, 4 KiB buffer,
// status.
type benchReq struct {
	bufs []virtio.MockBuffer
	hdr  []byte // guest memory of the header
}

// qdDriver drives a device with benchQD reads always in flight.
type qdDriver struct {
	drv    *virtio.MockDriver
	irq    *virtio.MockNotifier
	reqs   []benchReq
	byHead []int // request index by chain head
	offs   []uint64
	next   int
	// typ is the request type run submits (TypeIn or TypeOut).
	typ uint32
}

func newQDDriver(tb testing.TB, indirect, write bool) (*qdDriver, *virtio.Queue) {
	drv, err := virtio.NewMockDriver(virtio.MockConfig{Size: 128, EventIdx: true, IndirectDesc: indirect, MemorySize: 8 << 20})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { drv.Close() })
	q, err := drv.NewQueue()
	if err != nil {
		tb.Fatal(err)
	}
	d := &qdDriver{drv: drv, irq: virtio.NewMockNotifier(), byHead: make([]int, 128), offs: benchOffsets(1 << 14), typ: TypeIn}
	if write {
		d.typ = TypeOut
	}
	for range benchQD {
		h, _ := drv.Alloc(16, 16)
		data, _ := drv.Alloc(benchBlock, benchBlock)
		st, _ := drv.Alloc(1, 8)
		hb, err := drv.Mem.Slice(h, 16)
		if err != nil {
			tb.Fatal(err)
		}
		d.reqs = append(d.reqs, benchReq{hdr: hb, bufs: []virtio.MockBuffer{
			{Addr: h, Len: 16}, {Addr: data, Len: benchBlock, Writable: !write}, {Addr: st, Len: 1, Writable: true},
		}})
	}
	return d, q
}

// submit makes request i available with the next random sector.
func (d *qdDriver) submit(tb testing.TB, i int) {
	r := &d.reqs[i]
	binary.LittleEndian.PutUint32(r.hdr[0:], d.typ)
	binary.LittleEndian.PutUint64(r.hdr[8:], d.offs[d.next&(len(d.offs)-1)])
	d.next++
	head, err := d.drv.AddChain(r.bufs, false)
	if err != nil {
		tb.Fatal(err)
	}
	d.byHead[head] = i
}

// run keeps benchQD requests in flight until n have completed, resubmitting
// each completed one at once and kicking once per batch. It sleeps on the
// interrupt when nothing is used, like a guest would.
func (d *qdDriver) run(tb testing.TB, n int) {
	for i := range benchQD {
		d.submit(tb, i)
	}
	d.drv.Kick()
	inflight, done := benchQD, 0
	for done < n {
		u, ok, err := d.drv.PopUsed()
		if err != nil {
			tb.Fatal(err)
		}
		if ok {
			i := d.byHead[u.Head]
			done++
			inflight--
			if done+inflight < n {
				d.submit(tb, i)
				inflight++
			}
			continue
		}
		d.drv.Kick()
		if more, _ := d.drv.EnableInterrupts(); more {
			continue
		}
		<-d.irq.C
	}
	for inflight > 0 {
		if _, ok, _ := d.drv.PopUsed(); ok {
			inflight--
		} else {
			runtime.Gosched()
		}
	}
}

// BenchmarkDeviceRandRead4K: 4 KiB random reads at queue depth 32 through
// the whole device path.
func BenchmarkDeviceRandRead4K(b *testing.B) {
	for _, aio := range engines {
		b.Run(string(aio), func(b *testing.B) {
			runBench(b, func(tb testing.TB) (func(int), func()) { return deviceRandIO(tb, aio, false) })
		})
	}
}

// BenchmarkDeviceRandWrite4K: 4 KiB random write-back writes at queue
// depth 32 through the whole device path (buffered pwritev, no flushes).
func BenchmarkDeviceRandWrite4K(b *testing.B) {
	for _, aio := range engines {
		b.Run(string(aio), func(b *testing.B) {
			runBench(b, func(tb testing.TB) (func(int), func()) { return deviceRandIO(tb, aio, true) })
		})
	}
}

// BenchmarkRawPreadv4K: the same harness, but the worker goroutines issue
// the preadv calls directly for sectors handed to them, with no virtqueue
// or request parsing in between.
func BenchmarkRawPreadv4K(b *testing.B) { runBench(b, rawPreadv) }

// BenchmarkRandRead4KRatio runs the two harnesses above alternately, in
// rounds of 100,000 reads each (so load from other processes hits both
// alike), and reports the median raw ns/read divided by the median device
// ns/read: the share of raw preadv throughput the device path keeps. It
// also reports the same ratio in CPU time (user+system of the whole
// process per read), which the load of other processes on a shared machine
// disturbs much less than wall time. Every invocation does all its rounds;
// run it with -benchtime=1x.
func BenchmarkRandRead4KRatio(b *testing.B) {
	for _, aio := range engines {
		b.Run(string(aio), func(b *testing.B) { randRead4KRatio(b, aio) })
	}
}

// randRead4KRatio is BenchmarkRandRead4KRatio on one engine.
func randRead4KRatio(b *testing.B, aio AIOEngine) {
	if aio == AIOIOUring {
		skipWithoutRing(b)
	}
	const rounds, reads = 7, 100_000
	runDev, stopDev := deviceRandIO(b, aio, false)
	defer stopDev()
	runRaw, stopRaw := rawPreadv(b)
	defer stopRaw()
	var dev, raw, devCPU, rawCPU []float64
	timeIt := func(run func(int)) (wall, cpu float64) {
		c0 := cpuTime(b)
		start := time.Now()
		run(reads)
		wall = float64(time.Since(start).Nanoseconds()) / reads
		return wall, float64(cpuTime(b)-c0) / reads
	}
	for range rounds {
		w, c := timeIt(runDev)
		dev, devCPU = append(dev, w), append(devCPU, c)
		w, c = timeIt(runRaw)
		raw, rawCPU = append(raw, w), append(rawCPU, c)
	}
	med := func(x []float64) float64 { slices.Sort(x); return x[len(x)/2] }
	md, mr, mdc, mrc := med(dev), med(raw), med(devCPU), med(rawCPU)
	b.ReportMetric(md, "device-ns/read")
	b.ReportMetric(mr, "raw-ns/read")
	b.ReportMetric(mr/md, "ratio")
	b.ReportMetric(mrc/mdc, "cpu-ratio")
	b.Logf("aio=%s: 4 KiB random reads, QD%d, page-cached, medians of %d rounds:", aio, benchQD, rounds)
	b.Logf("  wall: device %.0f ns/read (min %.0f max %.0f), raw preadv %.0f ns/read (min %.0f max %.0f): ratio raw/device %.2f",
		md, dev[0], dev[rounds-1], mr, raw[0], raw[rounds-1], mr/md)
	b.Logf("  cpu:  device %.0f ns/read, raw preadv %.0f ns/read: ratio raw/device %.2f", mdc, mrc, mrc/mdc)
}

// cpuTime is the user+system CPU time of the process so far, in ns.
func cpuTime(tb testing.TB) int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// runBench times run(b.N) after a warm-up.
func runBench(b *testing.B, setup func(testing.TB) (run func(int), stop func())) {
	run, stop := setup(b)
	defer stop()
	run(1000) // warm up
	b.ReportAllocs()
	b.SetBytes(benchBlock)
	b.ResetTimer()
	run(b.N)
	b.StopTimer()
}

// deviceRandRead sets up a device on the page-cached disk and a QD32
// driver; run(n) completes n random 4 KiB reads.
func deviceRandIO(tb testing.TB, aio AIOEngine, write bool) (func(int), func()) {
	if aio == AIOIOUring {
		skipWithoutRing(tb)
	}
	path, err := benchDisk()
	if err != nil {
		tb.Fatal(err)
	}
	dev, err := Open(Spec{Path: path, Cache: CacheWriteback, AIO: aio}, Options{})
	if err != nil {
		tb.Fatal(err)
	}
	d, q := newQDDriver(tb, false, write)
	err = dev.Activate(virtio.Activation{Memory: d.drv.Mem, Features: dev.Features(),
		Queues: []virtio.QueueBinding{{Queue: q, Kick: d.drv.KickFD(), Interrupt: d.irq}}})
	if err != nil {
		tb.Fatal(err)
	}
	return func(n int) { d.run(tb, n) }, func() {
		dev.Reset()
		if s := dev.Stats(); s.Errors != 0 || s.AIO != aio {
			tb.Errorf("%d errors, aio=%s (want %s)", s.Errors, s.AIO, aio)
		}
		dev.Close()
	}
}

// rawPreadv sets up the same harness with the device replaced by worker
// goroutines calling preadv.
func rawPreadv(tb testing.TB) (func(int), func()) {
	path, err := benchDisk()
	if err != nil {
		tb.Fatal(err)
	}
	// BenchmarkRandRead4KRatio holds the device open on the same file
	// meanwhile, with its image lock.
	fb, err := OpenFile(path, FileOptions{NoLock: true})
	if err != nil {
		tb.Fatal(err)
	}
	mem, err := virtio.NewMockMemory(virtio.MockMemoryBase, 8<<20)
	if err != nil {
		tb.Fatal(err)
	}
	type job struct {
		v   *Vec
		off int64
	}
	jobs := make([]job, benchQD)
	for i := range jobs {
		buf, err := mem.Slice(virtio.MockMemoryBase+uint64(i)*benchBlock, benchBlock)
		if err != nil {
			tb.Fatal(err)
		}
		v := NewVec(1)
		v.Append(buf)
		jobs[i] = job{v: v}
	}
	work := make(chan *job, benchQD)
	done := make(chan *job, benchQD)
	var wg sync.WaitGroup
	for range DefaultWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				if err := fb.ReadAt(j.v, j.off); err != nil {
					panic(err)
				}
				done <- j
			}
		}()
	}
	offs := benchOffsets(1 << 14)
	next := 0
	run := func(n int) {
		inflight := 0
		for i := range benchQD {
			if inflight == n {
				break
			}
			jobs[i].off = int64(offs[next&(len(offs)-1)] * SectorSize)
			next++
			work <- &jobs[i]
			inflight++
		}
		for c := 0; c < n; c++ {
			j := <-done
			inflight--
			if c+inflight+1 < n {
				j.off = int64(offs[next&(len(offs)-1)] * SectorSize)
				next++
				work <- j
				inflight++
			}
		}
	}
	return run, func() {
		close(work)
		wg.Wait()
		fb.Close()
	}
}

// BenchmarkRawPreadvLoop4K: the floor: one goroutine calling preadv on the
// same buffers and offsets back to back.
func BenchmarkRawPreadvLoop4K(b *testing.B) {
	path, err := benchDisk()
	if err != nil {
		b.Fatal(err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	mem, err := virtio.NewMockMemory(virtio.MockMemoryBase, 8<<20)
	if err != nil {
		b.Fatal(err)
	}
	buf, _ := mem.Slice(virtio.MockMemoryBase, benchBlock)
	iov := []unix.Iovec{{Base: &buf[0]}}
	iov[0].SetLen(benchBlock)
	offs := benchOffsets(1 << 14)
	b.ReportAllocs()
	b.SetBytes(benchBlock)
	b.ResetTimer()
	for i := range b.N {
		if _, err := preadv(fd, iov, int64(offs[i&(len(offs)-1)]*SectorSize)); err != nil {
			b.Fatal(err)
		}
	}
}

// TestNoAllocsPerRequest: once warm, a read request through the whole path
// (driver, ring, parse, worker, preadv, completion) allocates nothing,
// counting every goroutine of the process.
func TestNoAllocsPerRequest(t *testing.T) { forEngines(t, testNoAllocsPerRequest) }

func testNoAllocsPerRequest(t *testing.T, aio AIOEngine) {
	for _, tc := range []struct {
		name     string
		indirect bool
		cache    CacheMode
		write    bool // a write and a FLUSH instead of a read
	}{
		{"read, direct chain", false, CacheWriteback, false},
		{"read, indirect chain", true, CacheWriteback, false},
		{"read, O_DIRECT", false, CacheNone, false},
		{"write and flush", false, CacheWriteback, true},
		{"O_DIRECT write and flush", false, CacheNone, true},
		{"write-through write and flush", false, CacheWritethrough, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tempDisk(t, 1<<20)
			dev, err := Open(Spec{Path: path, Cache: tc.cache, AIO: aio}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			d, q := newQDDriver(t, tc.indirect, false)
			err = dev.Activate(virtio.Activation{Memory: d.drv.Mem, Features: dev.Features(),
				Queues: []virtio.QueueBinding{{Queue: q, Kick: d.drv.KickFD(), Interrupt: d.irq}}})
			if err != nil {
				t.Fatal(err)
			}
			r, fl := &d.reqs[0], &d.reqs[1]
			typ := TypeIn
			if tc.write {
				typ = TypeOut
				r.bufs[1].Writable = false
				binary.LittleEndian.PutUint32(fl.hdr[0:], TypeFlush)
				binary.LittleEndian.PutUint64(fl.hdr[8:], 0)
			}
			flush := []virtio.MockBuffer{fl.bufs[0], fl.bufs[2]}
			wait := func() {
				for {
					if _, ok, _ := d.drv.PopUsed(); ok {
						return
					}
					runtime.Gosched()
				}
			}
			one := func() {
				binary.LittleEndian.PutUint32(r.hdr[0:], typ)
				binary.LittleEndian.PutUint64(r.hdr[8:], 8)
				if _, err := d.drv.AddChain(r.bufs, tc.indirect); err != nil {
					panic(err)
				}
				d.drv.Kick()
				wait()
				if tc.write {
					if _, err := d.drv.AddChain(flush, tc.indirect); err != nil {
						panic(err)
					}
					d.drv.Kick()
					wait()
				}
			}
			for range 100 {
				one()
			}
			if a := testing.AllocsPerRun(300, one); a != 0 {
				t.Fatalf("%.2f allocations per request, want 0", a)
			}
			dev.Reset()
			// AllocsPerRun runs the function once more to warm up.
			s := dev.Stats()
			if s.Reads+s.Writes != 401 || s.Errors != 0 || (tc.write && (s.Flushes != 401 || s.HostSyncs < 401)) {
				t.Fatalf("stats %+v", s)
			}
			// On io_uring every read and O_DIRECT write took the ring
			// (buffered writes and write-through writes run on the
			// workers).
			if ring := aio == AIOIOUring && (!tc.write || tc.cache == CacheNone); ring != (s.RingRequests == 401) {
				t.Fatalf("%d of 401 requests through io_uring (aio=%s, cache=%s)", s.RingRequests, aio, tc.cache)
			}
		})
	}
}
