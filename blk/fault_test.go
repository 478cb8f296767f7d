package blk

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/virtio"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// Guest memory of the fault tests: a memfd mapped shared, as a vhost-user
// frontend hands it over, which the test truncates under the mapping.
const (
	faultMemBase uint64 = 0x100000
	faultMemSize uint64 = 1 << 20
	// faultRingBytes is what the rings of a 16-entry mock ring take
	// (descriptor table and avail ring in the first page, used ring in
	// the second): truncating the file to it leaves them mapped.
	faultRingBytes uint64 = 2 << 12
)

// shrinkable is a device serving a mock driver whose guest memory can be
// truncated under the device.
type shrinkable struct {
	t      *testing.T
	dev    *Device
	drv    *virtio.MockDriver
	memfd  int
	faults chan error // what the memory's fault handler heard
	// hung is set when Reset hung: Close would hang too.
	hung bool
}

// shrinkSetup is one way of placing the rings and of serving requests.
type shrinkSetup struct {
	backend Backend
	// usedAtEnd moves the device's used ring to the last page of guest
	// memory, where a truncation can take it alone.
	usedAtEnd bool
}

func newShrinkable(t *testing.T, ss shrinkSetup) *shrinkable {
	t.Helper()
	fd, err := unix.MemfdCreate("blk-fault-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, int64(faultMemSize)); err != nil {
		t.Fatal(err)
	}
	raw, err := unix.Mmap(fd, 0, int(faultMemSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(raw) }) // after the device is closed
	s := &shrinkable{t: t, memfd: fd, faults: make(chan error, 16)}
	mem, err := guestmem.New(guestmem.Region{GuestAddr: faultMemBase, Host: raw})
	if err != nil {
		t.Fatal(err)
	}
	mem = mem.WithFaultHandler(func(err error) {
		select {
		case s.faults <- err:
		default:
		}
	})
	s.drv, err = virtio.NewMockDriver(virtio.MockConfig{Size: 16, EventIdx: true, IndirectDesc: true,
		Memory: mem, ArenaStart: faultMemBase, ArenaEnd: faultMemBase + faultMemSize - 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.drv.Close() })
	// Buffers and indirect tables go behind the rings.
	if _, err := s.drv.Alloc(0, faultRingBytes); err != nil {
		t.Fatal(err)
	}
	cfg := s.drv.QueueConfig()
	if ss.usedAtEnd {
		cfg.UsedRing = faultMemBase + faultMemSize - 4096
	}
	q, err := virtio.NewQueue(mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ss.backend == nil {
		ss.backend = newMemBackend(1 << 20)
	}
	s.dev, err = Open(Spec{Path: "mem", Cache: CacheWriteback}, Options{Backend: ss.backend})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !s.hung {
			s.dev.Close()
		}
	})
	err = s.dev.Activate(virtio.Activation{Memory: mem, Features: s.dev.Features(),
		Queues: []virtio.QueueBinding{{Queue: q, Kick: s.drv.KickFD(), Interrupt: virtio.NewMockNotifier()}}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// shrink truncates guest memory to its first n bytes.
func (s *shrinkable) shrink(n uint64) {
	s.t.Helper()
	if err := unix.Ftruncate(s.memfd, int64(n)); err != nil {
		s.t.Fatal(err)
	}
}

func (s *shrinkable) submit(r virtio.MockRequest) {
	s.t.Helper()
	if _, err := s.drv.Submit(r); err != nil {
		s.t.Fatal(err)
	}
}

// submitHeld adds rs where the device cannot see them yet, shrinks guest
// memory to n bytes and only then publishes them: with the device's loop
// polling its ring, a chain published before the shrink may be popped
// and served whole before the memory goes (it failed 2 runs in 600 under
// CPU load that way). The avail ring must stay within the n bytes.
func (s *shrinkable) submitHeld(n uint64, rs ...virtio.MockRequest) {
	s.t.Helper()
	s.drv.HoldAvail()
	for _, r := range rs {
		s.submit(r)
	}
	s.shrink(n)
	if err := s.drv.ReleaseAvail(); err != nil {
		s.t.Fatal(err)
	}
}

// kick notifies the device without reading the ring (it may be gone).
func (s *shrinkable) kick() {
	s.t.Helper()
	var one [8]byte
	one[0] = 1
	if _, err := unix.Write(s.drv.KickFD(), one[:]); err != nil {
		s.t.Fatal(err)
	}
}

// do submits r, kicks and waits for its completion.
func (s *shrinkable) do(r virtio.MockRequest) {
	s.t.Helper()
	s.submit(r)
	s.kick()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, ok, err := s.drv.PopUsed()
		if err != nil {
			s.t.Fatal(err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatal("request not completed")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// wantFault waits for the fault handler to hear of a fault at or past
// guest address from.
func (s *shrinkable) wantFault(from uint64) {
	s.t.Helper()
	select {
	case err := <-s.faults:
		var fe *guestmem.FaultError
		if !errors.As(err, &fe) || !fe.InGuest || fe.GuestAddr < from {
			s.t.Fatalf("fault reported as %v, want one in guest memory at or past %#x", err, from)
		}
	case <-time.After(10 * time.Second):
		s.t.Fatal("no fault reported")
	}
}

// reset resets the device, failing the test if that hangs: a request that
// faulted and was never completed keeps the in-flight count up for ever.
func (s *shrinkable) reset() {
	s.t.Helper()
	done := make(chan struct{})
	go func() { s.dev.Reset(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.hung = true
		s.t.Fatal("Reset hangs: a request whose memory faulted was never completed")
	}
}

// gatedIO is a memBackend whose reads and writes wait for the test.
type gatedIO struct {
	*memBackend
	entered chan struct{}
	release chan struct{}
}

func newGatedIO() *gatedIO {
	return &gatedIO{memBackend: newMemBackend(1 << 20), entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (g *gatedIO) ReadAt(v *Vec, off int64) error {
	g.entered <- struct{}{}
	<-g.release
	return g.memBackend.ReadAt(v, off)
}

func (g *gatedIO) WriteAt(v *Vec, off int64) error {
	g.entered <- struct{}{}
	<-g.release
	return g.memBackend.WriteAt(v, off)
}

// TestGuestMemoryFaults: guest memory shrinks under the device (a
// vhost-user frontend truncating its memfd) while each of the device's
// goroutines uses it. The fault, which used to kill the process with
// SIGBUS, is reported to the memory's fault handler; the request that
// faulted is completed for the in-flight count, so Reset returns; and the
// device serves a fresh activation.
func TestGuestMemoryFaults(t *testing.T) {
	base, end := faultMemBase, faultMemBase+faultMemSize
	gated := func(s *shrinkable, g *gatedIO, cut uint64) {
		waitOrFail(t, g.entered)
		s.shrink(cut)
		close(g.release)
	}
	cases := []struct {
		name string
		// run submits, shrinks memory and kicks; it returns the guest
		// address the memory now ends at.
		run   func(s *shrinkable, g *gatedIO, m *memBackend) uint64
		setup func(g *gatedIO, m *memBackend) shrinkSetup
	}{
		{"avail ring gone (queue loop, accessor)", func(s *shrinkable, _ *gatedIO, _ *memBackend) uint64 {
			s.submit(readReq(0, 512))
			s.shrink(0)
			s.kick()
			return base
		}, nil},
		{"indirect table gone (queue loop, in Pop)", func(s *shrinkable, _ *gatedIO, _ *memBackend) uint64 {
			r := readReq(0, 512, 512)
			r.Indirect = true
			s.submitHeld(faultRingBytes, r)
			s.kick()
			return base + faultRingBytes
		}, nil},
		{"header gone (queue loop, request popped)", func(s *shrinkable, _ *gatedIO, _ *memBackend) uint64 {
			s.submitHeld(faultRingBytes, readReq(0, 512), readReq(1, 512))
			s.kick()
			return base + faultRingBytes
		}, nil},
		{"data buffers gone (worker)", func(s *shrinkable, g *gatedIO, _ *memBackend) uint64 {
			for i := range 3 {
				s.submit(readReq(uint64(i), 4096))
			}
			s.kick()
			gated(s, g, faultRingBytes)
			return base + faultRingBytes
		}, func(g *gatedIO, _ *memBackend) shrinkSetup { return shrinkSetup{backend: g} }},
		{"status byte gone (flusher)", func(s *shrinkable, _ *gatedIO, m *memBackend) uint64 {
			s.do(writeReq(0, pattern(512, 1))) // so the FLUSH needs a sync
			s.submit(flushReq())
			s.kick()
			m.waitEntered(t)
			s.shrink(faultRingBytes)
			m.gate <- struct{}{}
			return base + faultRingBytes
		}, func(_ *gatedIO, m *memBackend) shrinkSetup { return shrinkSetup{backend: m} }},
		{"used ring gone (publication)", func(s *shrinkable, _ *gatedIO, _ *memBackend) uint64 {
			s.submitHeld(faultMemSize-4096, virtio.MockRequest{Header: hdr(TypeGetID, 0), In: []uint32{MaxSerialLen}, Status: 1})
			s.kick()
			return end - 4096
		}, func(*gatedIO, *memBackend) shrinkSetup { return shrinkSetup{usedAtEnd: true} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, m := newGatedIO(), gatedBackend()
			ss := shrinkSetup{}
			if tc.setup != nil {
				ss = tc.setup(g, m)
			}
			s := newShrinkable(t, ss)
			s.wantFault(tc.run(s, g, m))
			s.reset()
			h := &harness{t: t, dev: s.dev}
			h.activate(harnessConfig{})
			mustStatus(t, "read after the fault", h.do(readReq(0, 512)), StatusOK)
		})
	}
}

func waitOrFail(t *testing.T, c chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the backend to be called")
	}
}
