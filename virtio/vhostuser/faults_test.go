package vhostuser

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/virtio"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// TestFrontendShrinksMemory: a frontend truncates its unsealed memfd after
// SET_MEM_TABLE. Touching the mapping then raises SIGBUS; the session must
// end with ErrMemoryFault, the device reset, and this process live on,
// whether the fault hits the session's goroutine (activating a ring reads
// it) or a device goroutine (popping a chain after a kick).
func TestFrontendShrinksMemory(t *testing.T) {
	cases := []struct {
		name    string
		serving bool // the device serves the ring before the truncation
		trigger func(f *testFrontend, r *ring)
		inMsg   string // the message being handled at the fault, if any
	}{
		{"fault activating the ring", false, func(f *testFrontend, r *ring) {
			f.send(reqSetVringEnable, 0, state(0, 1))
		}, "SET_VRING_ENABLE"},
		{"fault in a device goroutine after a kick", true, func(f *testFrontend, r *ring) {
			unix.Write(r.d.KickFD(), one[:])
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev := newFakeDevice(1)
			f := startFrontend(t, dev)
			r := f.newRing(0, 16)
			before := openFDs(t)
			f.negotiate(allProto, dev.features&^virtio.FeatureRingPacked|FeatureProtocolFeatures)
			f.setMemTable()
			f.setupRing(0, r, 0)
			if tc.serving {
				f.mustAck(reqSetVringEnable, state(0, 1))
				f.roundTrip(r, 2)
			}
			// From here on this process must not touch f.mem either.
			if err := unix.Ftruncate(f.memfd, 0); err != nil {
				t.Fatal(err)
			}
			tc.trigger(f, r)
			err := f.wait()
			if !errors.Is(err, ErrMemoryFault) || !errors.Is(err, guestmem.ErrFault) {
				t.Fatalf("Serve = %v, want ErrMemoryFault wrapping guestmem.ErrFault", err)
			}
			if !strings.Contains(err.Error(), tc.inMsg) || !strings.Contains(err.Error(), "guest address") {
				t.Errorf("error %q does not say where the fault was", err)
			}
			acts, resets, active := dev.snapshot()
			if active || resets < len(acts) {
				t.Errorf("device left active (%d activations, %d resets)", len(acts), resets)
			}
			if after := openFDs(t); after > before {
				t.Errorf("descriptor leak: %d before, %d after", before, after)
			}
		})
	}
}

// TestBlkSurvivesShrunkMemory: the frontend truncates its memfd while
// flushvm's blk device serves it. The first case is the reported crash:
// memory truncated to nothing, then a kick; the queue loop faulted in
// guestmem.LoadUint16Acquire under Queue.Pop and took the process down. In
// the second only the rings stay mapped while requests are in flight in
// the device's workers and more wait in the ring: the workers fault
// writing status bytes, and the queue loop reading the indirect tables of
// the others (or a worker their data, had it popped them before), all
// outside guestmem's accessors. Each time the fault is an error, the
// session ends with ErrMemoryFault, and the device resets, which it can
// only do once every request that faulted was completed.
func TestBlkSurvivesShrunkMemory(t *testing.T) {
	cases := []struct {
		name string
		// keep is how much of the memfd the frontend keeps; ring 0's
		// rings take its first 8 KiB.
		keep int64
		// inFlight is how many writes the backend holds when the memory
		// shrinks; queued is how many more requests wait in the ring.
		inFlight, queued int
	}{
		{"truncated to nothing, then a kick", 0, 0, 0},
		{"truncated behind the rings, requests in flight", 8 << 10, 3, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			disk := openGatedBlk(t)
			f := startFrontend(t, disk.dev)
			f.negotiate(allProto, disk.dev.Features()|FeatureProtocolFeatures)
			f.setMemTable()
			r := f.newRing(0, 64)
			if _, err := r.d.Alloc(0, 8<<10); err != nil { // buffers behind the rings
				t.Fatal(err)
			}
			f.setupRing(0, r, 0)
			f.mustAck(reqSetVringEnable, state(0, 1))
			disk.pass(1)
			if _, st := f.submitWait(r, virtio.MockRequest{Header: blkHeader(blk.TypeOut, 0), Out: [][]byte{make([]byte, 512)}, Status: 1}); st != blk.StatusOK {
				t.Fatalf("write status %d", st)
			}
			for i := range tc.inFlight {
				submit(t, r, virtio.MockRequest{Header: blkHeader(blk.TypeOut, uint64(8*i)), Out: [][]byte{make([]byte, 4096)}, Status: 1})
			}
			kick(t, r)
			disk.waitEntered(t, tc.inFlight)
			for i := range tc.queued {
				submit(t, r, virtio.MockRequest{Header: blkHeader(blk.TypeIn, uint64(8*i)), In: []uint32{512, 512}, Status: 1, Indirect: true})
			}
			// From here on this process must not touch f.mem past keep.
			if err := unix.Ftruncate(f.memfd, tc.keep); err != nil {
				t.Fatal(err)
			}
			kick(t, r)
			disk.pass(tc.inFlight + tc.queued)
			err := f.wait()
			if !errors.Is(err, ErrMemoryFault) || !strings.Contains(err.Error(), "guest address") {
				t.Fatalf("Serve = %v, want ErrMemoryFault saying where", err)
			}
			if st := disk.dev.Stats(); st.Writes != 1 {
				t.Errorf("device completed %d writes, want 1", st.Writes)
			}
		})
	}
}

// gatedBlk is flushvm's blk device on a file whose reads and writes wait
// for the test to let them pass, so requests stay in flight.
type gatedBlk struct {
	*blk.FileBackend
	dev     *blk.Device
	entered chan struct{}
	gate    chan struct{}
}

func openGatedBlk(t *testing.T) *gatedBlk {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	fb, err := blk.OpenFile(path, blk.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedBlk{FileBackend: fb, entered: make(chan struct{}, 64), gate: make(chan struct{}, 64)}
	g.dev, err = blk.Open(blk.Spec{Path: path, Cache: blk.CacheWriteback}, blk.Options{MaxQueueSize: 64, Backend: g})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.dev.Close() })
	return g
}

func (g *gatedBlk) ReadAt(v *blk.Vec, off int64) error {
	g.entered <- struct{}{}
	<-g.gate
	return g.FileBackend.ReadAt(v, off)
}

func (g *gatedBlk) WriteAt(v *blk.Vec, off int64) error {
	g.entered <- struct{}{}
	<-g.gate
	return g.FileBackend.WriteAt(v, off)
}

// pass lets n more reads or writes through.
func (g *gatedBlk) pass(n int) {
	for range n {
		g.gate <- struct{}{}
	}
}

// waitEntered waits for n reads or writes to reach the backend.
func (g *gatedBlk) waitEntered(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-g.entered:
		case <-time.After(10 * time.Second):
			t.Fatal("request did not reach the backend")
		}
	}
}

func submit(t *testing.T, r *ring, req virtio.MockRequest) {
	t.Helper()
	if _, err := r.d.Submit(req); err != nil {
		t.Fatal(err)
	}
}

// kick notifies the device without looking at the ring, which may be gone.
func kick(t *testing.T, r *ring) {
	t.Helper()
	if _, err := unix.Write(r.d.KickFD(), one[:]); err != nil {
		t.Fatal(err)
	}
}

// TestMemTableSeals: regions are accepted sealed or not, and the ones a
// frontend could shrink are logged.
func TestMemTableSeals(t *testing.T) {
	cases := []struct {
		name  string
		seals int
		warn  bool
	}{
		{"sealed against shrinking", unix.F_SEAL_SHRINK | unix.F_SEAL_GROW, false},
		{"unsealed", 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := startFrontend(t, newFakeDevice(1))
			f.negotiate(allProto, virtio.FeatureVersion1|FeatureProtocolFeatures)
			fd := newMemfd(t, memSize)
			if tc.seals != 0 {
				if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, tc.seals); err != nil {
					t.Fatalf("F_ADD_SEALS: %v", err)
				}
			}
			f.mustAck(reqSetMemTable, memTable(wholeRegion), fd)
			if err := f.end(); err != nil {
				t.Fatalf("Serve = %v", err)
			}
			if got := strings.Contains(f.logs.String(), "not sealed against shrinking"); got != tc.warn {
				t.Errorf("warning logged: %v, want %v; log:\n%s", got, tc.warn, f.logs)
			}
		})
	}
}

// TestShutdownWithWedgedCallFD: the frontend passes a blocking call eventfd
// whose counter it has saturated, so a blocking write of 1 would never
// return. The blk device must still complete requests, and shutting the
// socket down (what SIGTERM does in flushvm vhost-user-blk) must end the
// session promptly instead of leaving a worker stuck in Notify and Reset
// waiting for it.
func TestShutdownWithWedgedCallFD(t *testing.T) {
	dev, _ := openBlk(t, 1, 64)
	f := startFrontend(t, dev)
	f.negotiate(allProto, dev.Features()|FeatureProtocolFeatures)
	f.setMemTable()
	r := f.newRing(0, 64)
	wedged, err := unix.Eventfd(0, unix.EFD_CLOEXEC) // blocking
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(wedged)
	max := [8]byte{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if _, err := unix.Write(wedged, max[:]); err != nil {
		t.Fatal(err)
	}
	r.call = wedged
	f.setupRing(0, r, 0)
	f.mustAck(reqSetVringEnable, state(0, 1))

	for i := range 4 {
		if _, err := r.d.Submit(virtio.MockRequest{Header: blkHeader(blk.TypeOut, uint64(8*i)), Out: [][]byte{make([]byte, 512)}, Status: 1}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.d.Kick(); err != nil {
			t.Fatal(err)
		}
		waitUsed(t, f, r)
	}
	start := time.Now()
	unix.Shutdown(f.fd, unix.SHUT_RDWR)
	if err := f.wait(); err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	if st := dev.Stats(); st.Writes != 4 {
		t.Errorf("device completed %d writes, want 4", st.Writes)
	}
}

// waitUsed waits for one completion on r without relying on its call fd.
func waitUsed(t *testing.T, f *testFrontend, r *ring) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, ok, err := r.d.PopUsed()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("request not completed; backend log:\n%s", f.logs)
		}
		time.Sleep(time.Millisecond)
	}
}
