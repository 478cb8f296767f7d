package blk

import (
	"bytes"
	"testing"
	"time"

	"github.com/flushvm/flushvm/virtio"
)

// addHugeRead makes a virtio_blk read of n descriptors available through one
// indirect table: header, n-2 writable data segments sharing one buffer,
// status. Linux never builds one longer than seg_max+2; a hostile guest can.
func (h *harness) addHugeRead(n int) {
	h.t.Helper()
	hdrAddr, err := h.drv.Alloc(16, 8)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.drv.Write(hdrAddr, hdr(TypeIn, 0)); err != nil {
		h.t.Fatal(err)
	}
	data, err := h.drv.Alloc(512, 8)
	if err != nil {
		h.t.Fatal(err)
	}
	status, err := h.drv.Alloc(1, 1)
	if err != nil {
		h.t.Fatal(err)
	}
	bufs := make([]virtio.MockBuffer, n)
	bufs[0] = virtio.MockBuffer{Addr: hdrAddr, Len: 16}
	for i := 1; i < n-1; i++ {
		bufs[i] = virtio.MockBuffer{Addr: data, Len: 512, Writable: true}
	}
	bufs[n-1] = virtio.MockBuffer{Addr: status, Len: 1, Writable: true}
	if _, err := h.drv.AddChain(bufs, true); err != nil {
		h.t.Fatal(err)
	}
}

// queue0 is the virtqueue the harness's device serves.
func (h *harness) queue0() *virtio.Queue { return h.dev.run.queues[0].queue }

// TestHostileChainsThenRead: four 32,768-descriptor requests ahead of a
// valid read cost the device bounded work, counted in descriptors read, and
// the read completes (issue 8: it waited 5.8 s behind them).
func TestHostileChainsThenRead(t *testing.T) {
	h := newHarness(t, harnessConfig{qsize: 256})
	q := h.queue0()
	for range 4 {
		h.addHugeRead(32768)
	}
	sub := h.submit(readReq(0, 4096))
	h.kick()
	var got bool
	for _, u := range h.waitUsed(5) {
		got = got || u.Head == sub.Head
	}
	if !got {
		t.Fatal("the valid read was not completed")
	}
	mustStatus(t, "read behind hostile chains", h.result(sub), StatusOK)
	if n, limit := q.DescriptorsRead(), 5*virtio.MaxPopReads(256, h.dev.chainCap()); n > limit {
		t.Errorf("5 requests read %d descriptors, want at most %d", n, limit)
	}
}

// TestResetWithHostileChainsQueued: Reset, which waits for the queue loop
// under the transport's lock, is bounded by the work of one pass over the
// ring however long the queued chains are (issue 8: 5.7 s).
func TestResetWithHostileChainsQueued(t *testing.T) {
	h := newHarness(t, harnessConfig{qsize: 256})
	q := h.queue0()
	for range 4 {
		h.addHugeRead(32768)
	}
	h.submit(readReq(0, 4096))
	h.kick()
	waitFor(t, "the queue loop to start popping", func() bool { return q.DescriptorsRead() > 0 })
	start := time.Now()
	h.dev.Reset()
	t.Logf("Reset took %v", time.Since(start))
	if n, limit := q.DescriptorsRead(), 5*virtio.MaxPopReads(256, h.dev.chainCap()); n > limit {
		t.Errorf("Reset waited for %d descriptor reads, want at most %d", n, limit)
	}
}

// TestSegMaxOnSmallRings: a driver that picks a ring smaller than the
// device's maximum (Linux halves it when memory is short) and believes
// seg_max gets its requests served: an indirect table carries seg_max data
// segments whatever the ring size.
func TestSegMaxOnSmallRings(t *testing.T) {
	for _, qsize := range []uint16{4, 64, 128} {
		h := newHarness(t, harnessConfig{qsize: qsize})
		n := int(h.dev.segMax())
		if n != maxSegments {
			t.Fatalf("seg_max %d, want %d", n, maxSegments)
		}
		data := make([][]byte, n)
		sizes := make([]uint32, n)
		for i := range data {
			data[i] = pattern(512, byte(i))
			sizes[i] = 512
		}
		w := writeReq(0, data...)
		w.Indirect = true
		mustStatus(t, "write of seg_max segments", h.do(w), StatusOK)
		r := readReq(0, sizes...)
		r.Indirect = true
		res := h.do(r)
		mustStatus(t, "read of seg_max segments", res, StatusOK)
		for i := range data {
			if !bytes.Equal(res.in[i], data[i]) {
				t.Fatalf("ring %d: segment %d read back differs", qsize, i)
			}
		}
	}
}
