package blk

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/internal/uring"
	"github.com/flushvm/flushvm/virtio"
)

// harness is one device served to one mock driver (queue 0), the way a
// transport would serve it to Linux's virtio_blk.
type harness struct {
	t    testing.TB
	dev  *Device
	drv  *virtio.MockDriver
	irq  *virtio.MockNotifier
	path string
	mem  *memBackend // when the device runs on one
	// faults is the fault layer, when harnessConfig.faults asked for one.
	faults *FaultBackend
}

type harnessConfig struct {
	cache    CacheMode
	readOnly bool
	serial   string
	// diskSize is the size of the temporary disk file (1 MiB when 0).
	diskSize int64
	// backend replaces the file.
	backend *memBackend
	// features are the driver's features (all offered ones when 0).
	features uint64
	opts     Options
	qsize    uint16
	// ignoreDiscard is the SPEC's discard=ignore.
	ignoreDiscard bool
	// faults, when not nil, puts a FaultBackend with these rules over the
	// backend (a memBackend: set backend too).
	faults []FaultRule
	// werror and rerror are the SPEC's error policies ("": report).
	werror, rerror ErrorPolicy
	// aio is the SPEC's aio= ("": threads).
	aio AIOEngine
}

// engines are the I/O engines tests run on.
var engines = []AIOEngine{AIOThreads, AIOIOUring}

// forEngines runs fn as a subtest per I/O engine; io_uring's is skipped
// where the kernel refuses io_uring.
func forEngines(t *testing.T, fn func(t *testing.T, aio AIOEngine)) {
	for _, aio := range engines {
		t.Run(string(aio), func(t *testing.T) {
			if aio == AIOIOUring {
				skipWithoutRing(t)
			}
			fn(t, aio)
		})
	}
}

// skipWithoutRing skips a test where this kernel refuses io_uring.
func skipWithoutRing(t testing.TB) {
	t.Helper()
	r, err := uring.New(4)
	if errors.Is(err, uring.ErrUnsupported) {
		t.Skipf("io_uring unavailable here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
}

func tempDisk(t testing.TB, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func newHarness(t testing.TB, hc harnessConfig) *harness {
	t.Helper()
	if hc.cache == "" {
		hc.cache = CacheWriteback
	}
	if hc.diskSize == 0 {
		hc.diskSize = 1 << 20
	}
	h := &harness{t: t, mem: hc.backend}
	opts := hc.opts
	if hc.backend != nil {
		opts.Backend = hc.backend
		h.path = "mem"
	} else {
		h.path = tempDisk(t, hc.diskSize)
	}
	if hc.faults != nil {
		fb, err := NewFaultBackend(opts.Backend, hc.faults, 1)
		if err != nil {
			t.Fatal(err)
		}
		opts.Backend, h.faults = fb, fb
	}
	dev, err := Open(Spec{Path: h.path, Cache: hc.cache, ReadOnly: hc.readOnly, Serial: hc.serial, IgnoreDiscard: hc.ignoreDiscard,
		WError: hc.werror, RError: hc.rerror, AIO: hc.aio}, opts)
	if err != nil {
		t.Fatal(err)
	}
	h.dev = dev
	t.Cleanup(func() {
		if err := dev.Close(); err != nil {
			t.Error(err)
		}
	})
	h.activate(hc)
	return h
}

// activate makes a fresh driver and activates the device with it.
func (h *harness) activate(hc harnessConfig) {
	h.t.Helper()
	f := hc.features
	if f == 0 {
		f = h.dev.Features()
	}
	qs := hc.qsize
	if qs == 0 {
		qs = 128
	}
	drv, err := virtio.NewMockDriver(virtio.MockConfig{Size: qs, EventIdx: f&virtio.FeatureEventIdx != 0,
		IndirectDesc: f&virtio.FeatureIndirectDesc != 0, MemorySize: 8 << 20})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { drv.Close() })
	q, err := drv.NewQueue()
	if err != nil {
		h.t.Fatal(err)
	}
	h.drv, h.irq = drv, virtio.NewMockNotifier()
	err = h.dev.Activate(virtio.Activation{Memory: drv.Mem, Features: f,
		Queues: []virtio.QueueBinding{{Queue: q, Kick: drv.KickFD(), Interrupt: h.irq}}})
	if err != nil {
		h.t.Fatal(err)
	}
}

// waitUsed collects n used elements.
func (h *harness) waitUsed(n int) []virtio.MockUsed {
	h.t.Helper()
	var out []virtio.MockUsed
	deadline := time.Now().Add(10 * time.Second)
	for len(out) < n {
		u, ok, err := h.drv.PopUsed()
		if err != nil {
			h.t.Fatal(err)
		}
		if ok {
			out = append(out, u)
			continue
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out: %d of %d requests completed", len(out), n)
		}
		select {
		case <-h.irq.C:
		case <-time.After(time.Millisecond):
		}
	}
	return out
}

// result is what a completed request left in guest memory.
type result struct {
	status byte
	used   uint32
	in     [][]byte
}

// do submits one request, kicks, waits for it and returns its result.
func (h *harness) do(r virtio.MockRequest) result {
	h.t.Helper()
	sub := h.submit(r)
	h.kick()
	u := h.waitUsed(1)[0]
	if u.Head != sub.Head {
		h.t.Fatalf("used head %d, submitted %d", u.Head, sub.Head)
	}
	res := h.result(sub)
	res.used = u.Len
	if h.drv.NumFree() == int(h.drv.Size()) {
		h.drv.ResetBuffers() // only with nothing else in flight
	}
	return res
}

func (h *harness) submit(r virtio.MockRequest) virtio.MockSubmission {
	h.t.Helper()
	sub, err := h.drv.Submit(r)
	if err != nil {
		h.t.Fatal(err)
	}
	return sub
}

func (h *harness) kick() {
	h.t.Helper()
	if _, err := h.drv.Kick(); err != nil {
		h.t.Fatal(err)
	}
}

// forceKick notifies the device whatever the ring's suppression state.
func (h *harness) forceKick() {
	h.t.Helper()
	var one [8]byte
	one[0] = 1
	if _, err := unix.Write(h.drv.KickFD(), one[:]); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) result(sub virtio.MockSubmission) result {
	h.t.Helper()
	var res result
	if sub.Status.Len > 0 {
		st, err := h.drv.Read(sub.Status)
		if err != nil {
			h.t.Fatal(err)
		}
		res.status = st[len(st)-1]
	}
	for _, b := range sub.In {
		p, err := h.drv.Read(b)
		if err != nil {
			h.t.Fatal(err)
		}
		res.in = append(res.in, p)
	}
	return res
}

func readReq(sector uint64, sizes ...uint32) virtio.MockRequest {
	return virtio.MockRequest{Header: hdr(TypeIn, sector), In: sizes, Status: 1}
}

func writeReq(sector uint64, data ...[]byte) virtio.MockRequest {
	return virtio.MockRequest{Header: hdr(TypeOut, sector), Out: data, Status: 1}
}

func flushReq() virtio.MockRequest {
	return virtio.MockRequest{Header: hdr(TypeFlush, 0), Status: 1}
}

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7) + byte(i>>9)
	}
	return p
}

// config reads the device's whole config space.
func (h *harness) config() []byte {
	p := make([]byte, h.dev.ConfigSize())
	h.dev.ReadConfig(0, p)
	return p
}

func (h *harness) fileBytes(off, n int64) []byte {
	h.t.Helper()
	f, err := os.ReadFile(h.path)
	if err != nil {
		h.t.Fatal(err)
	}
	return f[off : off+n]
}

func mustStatus(t testing.TB, what string, r result, want byte) {
	t.Helper()
	if r.status != want {
		t.Fatalf("%s: status %d, want %d", what, r.status, want)
	}
}

func cfgByte(h *harness, off int) byte { return h.config()[off] }

var _ = bytes.Equal
