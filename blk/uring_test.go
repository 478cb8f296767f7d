package blk

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/flushvm/flushvm/virtio"
)

// TestRingFallbacks: aio=io_uring takes the ring only where the request
// reaches a file as it is; everything else runs on the worker pool, and
// Stats says which engine serves the disk and why not io_uring.
func TestRingFallbacks(t *testing.T) {
	skipWithoutRing(t)
	t.Run("layer_without_a_file", func(t *testing.T) {
		h := newHarness(t, harnessConfig{backend: newMemBackend(1 << 20), aio: AIOIOUring})
		mustStatus(t, "write", h.do(writeReq(0, pattern(4096, 1))), StatusOK)
		mustStatus(t, "read", h.do(readReq(0, 4096)), StatusOK)
		st := h.dev.Stats()
		if st.AIO != AIOThreads || !strings.Contains(st.AIOFallback, "a layer") || st.RingRequests != 0 {
			t.Fatalf("aio %q fallback %q ring_requests %d: want threads, naming the layer, none", st.AIO, st.AIOFallback, st.RingRequests)
		}
	})
	t.Run("fault_rules_in_the_way", func(t *testing.T) {
		path := tempDisk(t, 1<<20)
		fb, err := OpenFile(path, FileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rule, err := ParseFaultRule("read sectors=8-15 eio")
		if err != nil {
			t.Fatal(err)
		}
		faults, err := NewFaultBackend(fb, nil, 1)
		if err != nil {
			t.Fatal(err)
		}
		h := newHarness(t, harnessConfig{opts: Options{Backend: faults}, aio: AIOIOUring})
		mustStatus(t, "read, no rule", h.do(readReq(8, 4096)), StatusOK)
		if err := faults.SetRules([]FaultRule{rule}); err != nil {
			t.Fatal(err)
		}
		mustStatus(t, "read under the rule", h.do(readReq(8, 4096)), StatusIOErr)
		mustStatus(t, "read beside it", h.do(readReq(0, 4096)), StatusOK)
		if st := h.dev.Stats(); st.AIO != AIOIOUring || st.RingRequests != 1 || st.Reads != 2 {
			t.Fatalf("aio %q ring_requests %d reads %d: want io_uring, 1 (the read before the rule), 2", st.AIO, st.RingRequests, st.Reads)
		}
	})
}

// TestShortTransfer: an image truncated under a running disk makes reads
// past its new end short; on either engine the guest gets IOERR for them
// (io_uring hands the short read to a worker, which finds the end), and
// the bytes before the end still read back.
func TestShortTransfer(t *testing.T) {
	forEngines(t, func(t *testing.T, aio AIOEngine) {
		h := newHarness(t, harnessConfig{aio: aio, diskSize: 64 << 10})
		data := pattern(8192, 4)
		mustStatus(t, "write", h.do(writeReq(0, data)), StatusOK)
		if err := os.Truncate(h.path, 4096); err != nil {
			t.Fatal(err)
		}
		mustStatus(t, "read across the new end", h.do(readReq(0, 8192)), StatusIOErr)
		r := h.do(readReq(0, 4096))
		mustStatus(t, "read before it", r, StatusOK)
		if !bytes.Equal(r.in[0], data[:4096]) {
			t.Fatal("the bytes before the end read back wrong")
		}
		if st := h.dev.Stats(); st.Errors != 1 || st.AIO != aio {
			t.Fatalf("errors %d aio %q: want 1, %s", st.Errors, st.AIO, aio)
		}
	})
}

// TestRingBatch: a full ring of writes, then of reads, each kicked once,
// goes to io_uring as one batch per pass and comes back intact; a Reset
// with a ring full of reads in flight waits for them all and leaves the
// device ready for the next activation.
func TestRingBatch(t *testing.T) {
	forEngines(t, func(t *testing.T, aio AIOEngine) {
		const n = 32 // a 128-entry ring holds 42 three-descriptor chains
		h := newHarness(t, harnessConfig{aio: aio, diskSize: 4 << 20})
		batch := func(req func(i int) virtio.MockRequest) []virtio.MockSubmission {
			subs := make([]virtio.MockSubmission, n)
			for i := range subs {
				subs[i] = h.submit(req(i))
			}
			h.kick()
			return subs
		}
		subs := batch(func(i int) virtio.MockRequest { return writeReq(uint64(i*16), pattern(8192, byte(i))) })
		h.waitUsed(n)
		for _, s := range subs {
			mustStatus(t, "write", h.result(s), StatusOK)
		}
		h.drv.ResetBuffers()
		subs = batch(func(i int) virtio.MockRequest { return readReq(uint64(i*16), 4096, 4096) })
		h.waitUsed(n)
		for i, s := range subs {
			r := h.result(s)
			mustStatus(t, "read", r, StatusOK)
			if !bytes.Equal(bytes.Join(r.in, nil), pattern(8192, byte(i))) {
				t.Fatalf("read %d returned other bytes", i)
			}
		}
		h.drv.ResetBuffers()
		// Reset waits for what the device popped; what it did not pop
		// stays in the ring, never completed.
		before := h.dev.Stats().Reads
		batch(func(i int) virtio.MockRequest { return readReq(uint64(i*16), 8192) })
		h.dev.Reset()
		popped := h.dev.Stats().Reads - before
		completed := 0
		for {
			u, ok, err := h.drv.PopUsed()
			if err != nil || !ok {
				break
			}
			if u.Len != 8193 {
				t.Fatalf("read completed by Reset with used length %d", u.Len)
			}
			completed++
		}
		if uint64(completed) != popped {
			t.Fatalf("%d reads executed, %d published by the time Reset returned", popped, completed)
		}
		h.activate(harnessConfig{})
		mustStatus(t, "read after re-activation", h.do(readReq(0, 512)), StatusOK)
		st := h.dev.Stats()
		if st.Errors != 0 || (aio == AIOIOUring) != (st.RingRequests == n+popped+1) {
			t.Fatalf("errors %d ring_requests %d (aio=%s)", st.Errors, st.RingRequests, aio)
		}
	})
}

// TestInterruptCounters checks used_batches and interrupts against the
// notifications the driver received, on both engines, with and without
// EVENT_IDX: at QD1 every completion is its own batch and interrupt; a
// driver that turned interrupts off gets none, though its requests still
// complete; a burst is published in at most as many batches as requests.
func TestInterruptCounters(t *testing.T) {
	cases := []struct {
		name     string
		eventIdx bool
		disable  bool
	}{
		{"event-idx", true, false},
		{"event-idx-disabled", true, true},
		{"flags", false, false},
		{"flags-disabled", false, true},
	}
	forEngines(t, func(t *testing.T, aio AIOEngine) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) { testInterruptCounters(t, aio, c.eventIdx, c.disable) })
		}
	})
}

func testInterruptCounters(t *testing.T, aio AIOEngine, eventIdx, disable bool) {
	h := newHarness(t, harnessConfig{aio: aio, diskSize: 4 << 20})
	if !eventIdx {
		h.dev.Reset()
		h.activate(harnessConfig{features: h.dev.Features() &^ virtio.FeatureEventIdx})
	}
	if disable {
		if err := h.drv.DisableInterrupts(); err != nil {
			t.Fatal(err)
		}
	}
	const qd1, burst = 5, 32
	for i := range qd1 {
		mustStatus(t, "read", h.do(readReq(uint64(i*8), 4096)), StatusOK)
	}
	st := h.dev.Stats()
	wantIRQ := uint64(qd1)
	if disable {
		wantIRQ = 0
	}
	if st.UsedBatches != qd1 || st.Interrupts != wantIRQ || h.irq.Count() != wantIRQ {
		t.Fatalf("QD1: used_batches %d interrupts %d notifications %d, want %d %d %d",
			st.UsedBatches, st.Interrupts, h.irq.Count(), qd1, wantIRQ, wantIRQ)
	}
	for i := range burst {
		h.submit(readReq(uint64(i*8), 4096))
	}
	h.kick()
	h.waitUsed(burst)
	st = h.dev.Stats()
	batches := st.UsedBatches - qd1
	if batches < 1 || batches > burst || st.Interrupts > st.UsedBatches || st.Interrupts != h.irq.Count() ||
		(disable && st.Interrupts != 0) {
		t.Fatalf("burst of %d: used_batches %d interrupts %d notifications %d (disabled %v)",
			burst, batches, st.Interrupts, h.irq.Count(), disable)
	}
	t.Logf("burst of %d reads: %d used-ring batches, %d interrupts", burst, batches, st.Interrupts-wantIRQ)
}
