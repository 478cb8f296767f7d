package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/flushvm/flushvm/virtio"
)

// TestRequestTypes runs every request type through a device on a file.
func TestRequestTypes(t *testing.T) { forEngines(t, testRequestTypes) }

func testRequestTypes(t *testing.T, aio AIOEngine) {
	h := newHarness(t, harnessConfig{serial: "flushvm-serial-01", aio: aio})
	data := pattern(8192, 3)

	// OUT, split over two segments, then IN, split differently.
	r := h.do(writeReq(8, data[:512], data[512:]))
	mustStatus(t, "write", r, StatusOK)
	if r.used != 1 {
		t.Fatalf("write used length %d, want 1", r.used)
	}
	if !bytes.Equal(h.fileBytes(8*512, 8192), data) {
		t.Fatal("write did not reach the file")
	}
	r = h.do(readReq(8, 4096, 1024, 3072))
	mustStatus(t, "read", r, StatusOK)
	if got := bytes.Join(r.in, nil); !bytes.Equal(got, data) {
		t.Fatal("read returned other bytes than written")
	}
	if r.used != 8192+1 {
		t.Fatalf("read used length %d, want 8193", r.used)
	}
	// Indirect chain.
	rq := readReq(8, 8192)
	rq.Indirect = true
	r = h.do(rq)
	mustStatus(t, "indirect read", r, StatusOK)
	if !bytes.Equal(r.in[0], data) {
		t.Fatal("indirect read returned other bytes")
	}

	mustStatus(t, "flush", h.do(flushReq()), StatusOK)

	r = h.do(virtio.MockRequest{Header: hdr(TypeGetID, 0), In: []uint32{20}, Status: 1})
	mustStatus(t, "get id", r, StatusOK)
	if want := append([]byte("flushvm-serial-01"), 0, 0, 0); !bytes.Equal(r.in[0], want) || r.used != 21 {
		t.Fatalf("get id = %q (used %d)", r.in[0], r.used)
	}

	// WRITE_ZEROES without and with UNMAP, DISCARD.
	r = h.do(virtio.MockRequest{Header: hdr(TypeWriteZeroes, 0), Out: [][]byte{seg(8, 2, 0)}, Status: 1})
	mustStatus(t, "write zeroes", r, StatusOK)
	r = h.do(virtio.MockRequest{Header: hdr(TypeWriteZeroes, 0), Out: [][]byte{seg(16, 8, flagUnmap)}, Status: 1})
	mustStatus(t, "write zeroes unmap", r, StatusOK)
	got := h.fileBytes(8*512, 8192)
	if !bytes.Equal(got[:1024], make([]byte, 1024)) || !bytes.Equal(got[1024:4096], data[1024:4096]) ||
		!bytes.Equal(got[4096:], make([]byte, 4096)) {
		t.Fatal("write zeroes zeroed the wrong range")
	}
	r = h.do(virtio.MockRequest{Header: hdr(TypeDiscard, 0), Out: [][]byte{seg(0, 64, 0)}, Status: 1})
	mustStatus(t, "discard", r, StatusOK)

	mustStatus(t, "unsupported", h.do(virtio.MockRequest{Header: hdr(TypeGetLifetime, 0), In: []uint32{12}, Status: 1}), StatusUnsupp)
	mustStatus(t, "past the end", h.do(readReq(h.dev.Capacity(), 512)), StatusIOErr)
	mustStatus(t, "partial sector", h.do(readReq(0, 100)), StatusIOErr)

	st := h.dev.Stats()
	want := Stats{Path: h.path, Cache: CacheWriteback, WCE: true, Reads: 2, Writes: 1, Flushes: 1,
		Discards: 1, WriteZeroes: 2, GetIDs: 1, Unsupported: 1, BytesRead: 16384, BytesWritten: 8192,
		Errors: 2, InvalidRequests: 2, HostSyncs: 1, AIO: aio,
		UsedBatches: 11, Interrupts: 11} // 11 requests, one at a time
	if aio == AIOIOUring {
		want.RingRequests = 2 // the reads; a buffered write and the rest are not for the ring
	}
	if st != want {
		t.Fatalf("stats\n got %+v\nwant %+v", st, want)
	}
}

// TestCacheModes checks, per cache mode, what the guest sees and what
// writes and flushes cost on the host.
// cacheModeCase is what a cache mode must do to a write, flush, flush,
// write, write, flush sequence.
type cacheModeCase struct {
	mode      CacheMode
	wce       byte
	syncs     uint64 // host syncs after the sequence
	elided    uint64
	directOpt bool
}

func TestCacheModes(t *testing.T) {
	tests := []cacheModeCase{
		// Each FLUSH after new writes syncs once; the second flush is free.
		{mode: CacheWriteback, wce: 1, syncs: 2, elided: 1},
		// Every write syncs; every FLUSH finds nothing to do.
		{mode: CacheWritethrough, wce: 0, syncs: 3, elided: 3},
		{mode: CacheNone, wce: 1, syncs: 2, elided: 1, directOpt: true},
		{mode: CacheDirectSync, wce: 0, syncs: 3, elided: 3, directOpt: true},
		// Never a host sync.
		{mode: CacheUnsafe, wce: 1, syncs: 0, elided: 0},
	}
	forEngines(t, func(t *testing.T, aio AIOEngine) {
		for _, tc := range tests {
			t.Run(string(tc.mode), func(t *testing.T) { testCacheMode(t, aio, tc) })
		}
	})
}

func testCacheMode(t *testing.T, aio AIOEngine, tc cacheModeCase) {
	h := newHarness(t, harnessConfig{cache: tc.mode, aio: aio})
	if got := cfgByte(h, cfgWriteback); got != tc.wce {
		t.Fatalf("config writeback %d, want %d", got, tc.wce)
	}
	if fb, ok := h.dev.Backend().(*FileBackend); !ok || fb.direct != tc.directOpt {
		t.Fatalf("O_DIRECT %v, want %v", ok && fb.direct, tc.directOpt)
	}
	data := pattern(4096, 9)
	// A misaligned guest buffer (O_DIRECT bounce path) and an aligned one.
	mustStatus(t, "write", h.do(writeReq(0, data[:1000], data[1000:])), StatusOK)
	mustStatus(t, "flush", h.do(flushReq()), StatusOK)
	mustStatus(t, "flush", h.do(flushReq()), StatusOK)
	mustStatus(t, "write", h.do(writeReq(8, data)), StatusOK)
	mustStatus(t, "write", h.do(writeReq(1, data[:512])), StatusOK)
	mustStatus(t, "flush", h.do(flushReq()), StatusOK)
	st := h.dev.Stats()
	if st.HostSyncs != tc.syncs || st.FlushesElided != tc.elided || st.Flushes != 3 || st.Writes != 3 {
		t.Fatalf("host_syncs %d flushes_elided %d flushes %d writes %d, want %d %d 3 3",
			st.HostSyncs, st.FlushesElided, st.Flushes, st.Writes, tc.syncs, tc.elided)
	}
	r := h.do(readReq(0, 4096))
	if !bytes.Equal(r.in[0][:512], data[:512]) || !bytes.Equal(r.in[0][512:1024], data[:512]) ||
		!bytes.Equal(r.in[0][1024:], data[1024:]) {
		t.Fatal("read back differs")
	}
	// None of these writes is for the ring: write-through writes sync on
	// the workers before they complete, buffered writes are the workers'
	// (see FileBackend.ringFD), and the harness's guest buffers are not
	// aligned for O_DIRECT. TestNoAllocsPerRequest covers aligned O_DIRECT
	// writes, which take the ring.
	if st.RingRequests != 0 {
		t.Fatalf("ring_requests %d, want 0", st.RingRequests)
	}
}

// TestWCEToggle: the guest turning its write cache off makes every write
// durable at once; turning it on makes FLUSH the durability point again.
func TestWCEToggle(t *testing.T) {
	h := newHarness(t, harnessConfig{cache: CacheWriteback})
	data := pattern(512, 1)
	h.do(writeReq(0, data))
	if s := h.dev.Stats(); s.HostSyncs != 0 {
		t.Fatalf("write-back write synced: %d", s.HostSyncs)
	}
	steps := []struct {
		val        byte
		wantWCE    bool
		wantChange uint64
		wantSyncs  uint64 // after one more write
	}{
		{0, false, 1, 1},
		{0, false, 1, 2},
		{1, true, 2, 2},
		{7, true, 2, 2}, // not 0 or 1: ignored
		{0, false, 3, 3},
	}
	for i, s := range steps {
		h.dev.WriteConfig(cfgWriteback, []byte{s.val})
		h.do(writeReq(uint64(i), data))
		st := h.dev.Stats()
		if st.WCE != s.wantWCE || st.WCEChanges != s.wantChange || st.HostSyncs != s.wantSyncs ||
			(cfgByte(h, cfgWriteback) == 1) != s.wantWCE {
			t.Fatalf("step %d (write %d): wce %v changes %d syncs %d, want %v %d %d", i, s.val,
				st.WCE, st.WCEChanges, st.HostSyncs, s.wantWCE, s.wantChange, s.wantSyncs)
		}
	}
	// A write covering several config bytes, writeback among them.
	p := make([]byte, 4)
	p[0] = 1
	h.dev.WriteConfig(cfgWriteback, p)
	if !h.dev.WriteCache() {
		t.Fatal("multi-byte config write did not set writeback")
	}
	// Other fields are read-only.
	before := h.config()
	h.dev.WriteConfig(0, make([]byte, cfgWriteback))
	if !bytes.Equal(before, h.config()) {
		t.Fatal("config write changed a read-only field")
	}
	// Reset brings back the mode's write cache.
	h.dev.WriteConfig(cfgWriteback, []byte{0})
	h.dev.Reset()
	if !h.dev.WriteCache() {
		t.Fatal("reset kept the guest's write cache setting")
	}
}

// TestFeatureRules: virtio 1.2 5.2.5.2, a driver that negotiated without
// FLUSH cannot flush, so it gets write-through.
func TestFeatureRules(t *testing.T) {
	base := virtio.FeatureVersion1 | FeatureBlkSize
	tests := []struct {
		name      string
		features  uint64
		wce       byte
		syncs     uint64 // after one write
		toggleOut bool   // WCE after the guest writes 1
	}{
		{"flush and config_wce", base | FeatureFlush | FeatureConfigWCE, 1, 0, true},
		{"flush only", base | FeatureFlush, 1, 0, true},
		{"config_wce only", base | FeatureConfigWCE, 0, 1, false},
		{"neither", base, 0, 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessConfig{features: tc.features})
			if got := cfgByte(h, cfgWriteback); got != tc.wce {
				t.Fatalf("writeback %d, want %d", got, tc.wce)
			}
			h.do(writeReq(0, pattern(512, 0)))
			if s := h.dev.Stats(); s.HostSyncs != tc.syncs {
				t.Fatalf("host syncs %d, want %d", s.HostSyncs, tc.syncs)
			}
			h.dev.WriteConfig(cfgWriteback, []byte{1})
			if h.dev.WriteCache() != tc.toggleOut {
				t.Fatalf("after writing 1: wce %v, want %v", h.dev.WriteCache(), tc.toggleOut)
			}
		})
	}
}

// TestFeaturesAndConfig checks the offered features and the config space.
func TestFeaturesAndConfig(t *testing.T) {
	always := FeatureFlush | FeatureConfigWCE | FeatureSegMax | FeatureBlkSize | FeatureTopology |
		FeatureDiscard | FeatureWriteZeroes | virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc
	tests := []struct {
		name     string
		hc       harnessConfig
		want     uint64
		dontWant uint64
		queues   uint16
	}{
		{"default", harnessConfig{}, always, FeatureRO | FeatureMQ, 1},
		{"read-only", harnessConfig{readOnly: true}, always | FeatureRO, FeatureMQ, 1},
		{"4 queues", harnessConfig{opts: Options{Queues: 4}}, always | FeatureMQ, FeatureRO, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.hc.diskSize = 3<<20 + 300 // a partial last sector is not exposed
			h := newHarness(t, tc.hc)
			f := h.dev.Features()
			if f&tc.want != tc.want || f&tc.dontWant != 0 {
				t.Fatalf("features %#x: want %#x set, %#x clear", f, tc.want, tc.dontWant)
			}
			c := h.config()
			le := binary.LittleEndian
			checks := []struct {
				name string
				got  uint64
				want uint64
			}{
				{"capacity", le.Uint64(c[cfgCapacity:]), 3 << 11},
				{"seg_max", uint64(le.Uint32(c[cfgSegMax:])), 254},
				{"blk_size", uint64(le.Uint32(c[cfgBlkSize:])), 512},
				{"num_queues", uint64(le.Uint16(c[cfgNumQueues:])), uint64(tc.queues)},
				{"max_discard_sectors", uint64(le.Uint32(c[cfgMaxDiscardSectors:])), MaxDiscardSectors},
				{"max_discard_seg", uint64(le.Uint32(c[cfgMaxDiscardSeg:])), MaxDiscardSegments},
				{"discard_sector_alignment", uint64(le.Uint32(c[cfgDiscardAlignment:])), DiscardAlignmentSectors},
				{"max_write_zeroes_sectors", uint64(le.Uint32(c[cfgMaxWriteZeroesSecs:])), MaxDiscardSectors},
				{"max_write_zeroes_seg", uint64(le.Uint32(c[cfgMaxWriteZeroesSeg:])), MaxDiscardSegments},
				{"write_zeroes_may_unmap", uint64(c[cfgWriteZeroesMayUnmap]), 1},
				{"heads", uint64(c[cfgHeads]), 16},
				{"sectors", uint64(c[cfgSectors]), 63},
				{"cylinders", uint64(le.Uint16(c[cfgCylinders:])), (3 << 11) / (16 * 63)},
				{"physical_block_exp", uint64(c[cfgPhysicalBlockExp]), 3},
				{"min_io_size", uint64(le.Uint16(c[cfgMinIOSize:])), 8},
				{"unused0", uint64(c[33]), 0},
			}
			for _, ck := range checks {
				if ck.got != ck.want {
					t.Errorf("%s = %d, want %d", ck.name, ck.got, ck.want)
				}
			}
			// Partial and out-of-range reads.
			p := []byte{0xff, 0xff, 0xff, 0xff}
			h.dev.ReadConfig(configSize-2, p)
			if p[2] != 0 || p[3] != 0 {
				t.Fatalf("bytes past the config space read %v", p)
			}
			h.dev.ReadConfig(1000, p)
			if !bytes.Equal(p, make([]byte, 4)) {
				t.Fatal("read far past the config space not zero")
			}
			if h.dev.DeviceID() != 2 || h.dev.NumQueues() != int(tc.queues) || h.dev.MaxQueueSize() != 256 {
				t.Fatal("device identity wrong")
			}
		})
	}
}

// TestReadOnly: a read-only disk is opened O_RDONLY (so a root-owned 0444
// file works) and refuses writes, discards and write-zeroes with IOERR.
func TestReadOnly(t *testing.T) {
	h := newHarness(t, harnessConfig{readOnly: true})
	if err := os.WriteFile(h.path+".probe", nil, 0o444); err != nil {
		t.Fatal(err)
	}
	mustStatus(t, "read", h.do(readReq(0, 512)), StatusOK)
	mustStatus(t, "write", h.do(writeReq(0, pattern(512, 1))), StatusIOErr)
	mustStatus(t, "discard", h.do(virtio.MockRequest{Header: hdr(TypeDiscard, 0), Out: [][]byte{seg(0, 8, 0)}, Status: 1}), StatusIOErr)
	mustStatus(t, "write zeroes", h.do(virtio.MockRequest{Header: hdr(TypeWriteZeroes, 0), Out: [][]byte{seg(0, 8, 0)}, Status: 1}), StatusIOErr)
	mustStatus(t, "flush", h.do(flushReq()), StatusOK)
	if !bytes.Equal(h.fileBytes(0, 512), make([]byte, 512)) {
		t.Fatal("read-only disk was written")
	}
	if s := h.dev.Stats(); s.Errors != 3 || s.Writes != 0 || s.HostSyncs != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestBadChains: hostile chains complete with IOERR when a status byte can
// be found, are handed back unused otherwise, and the device goes on.
func TestBadChains(t *testing.T) {
	tests := []struct {
		name       string
		build      func(h *harness) uint16 // returns the head submitted
		wantStatus int                     // -1: no status expected
		wantUsed   uint32
	}{
		{"no status byte", func(h *harness) uint16 {
			return h.submit(virtio.MockRequest{Header: hdr(TypeIn, 0), Out: [][]byte{make([]byte, 512)}, Status: 0}).Head
		}, -1, 0},
		{"header only", func(h *harness) uint16 {
			return h.submit(virtio.MockRequest{Header: hdr(TypeIn, 0)[:8], Status: 1}).Head
		}, int(StatusIOErr), 1},
		{"loop", func(h *harness) uint16 {
			head, err := h.drv.AddLoop(100, 3)
			if err != nil {
				h.t.Fatal(err)
			}
			return head
		}, -1, 0},
		{"descriptor outside memory", func(h *harness) uint16 {
			head, err := h.drv.AddChain([]virtio.MockBuffer{
				{Addr: 0x10, Len: 16},
				{Addr: virtio.MockMemoryBase + 4096, Len: 1, Writable: true},
			}, false)
			if err != nil {
				h.t.Fatal(err)
			}
			return head
		}, -1, 0},
		{"more buffers than seg_max", func(h *harness) uint16 {
			// Linux never does this; a driver that does must read IOERR in
			// its status byte, not a stale OK for a dropped write.
			data := make([][]byte, h.dev.segMax()+1)
			for i := range data {
				data[i] = make([]byte, 512)
			}
			return h.submit(virtio.MockRequest{Header: hdr(TypeOut, 0), Out: data, Status: 1, Indirect: true}).Head
		}, int(StatusIOErr), 1},
		{"sector out of range", func(h *harness) uint16 {
			return h.submit(readReq(1<<40, 512)).Head
		}, int(StatusIOErr), 1},
		{"huge sector overflow", func(h *harness) uint16 {
			return h.submit(writeReq(^uint64(0), make([]byte, 512))).Head
		}, int(StatusIOErr), 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessConfig{})
			head := tc.build(h)
			h.kick()
			u := h.waitUsed(1)[0]
			if u.Head != head || u.Len != tc.wantUsed {
				t.Fatalf("used {head %d len %d}, want {%d %d}", u.Head, u.Len, head, tc.wantUsed)
			}
			if s := h.dev.Stats(); s.InvalidRequests != 1 {
				t.Fatalf("invalid_requests %d, want 1", s.InvalidRequests)
			}
			// The device still serves good requests.
			mustStatus(t, "read after bad chain", h.do(readReq(0, 512)), StatusOK)
		})
	}
}

// TestBrokenRing: an avail index that moves more than the queue size stops
// the queue (no chain is trusted any more) without harming the process;
// a reset and re-activation serve again.
func TestBrokenRing(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.drv.SetAvailIdx(1000)
	h.forceKick()
	waitFor(t, "queue to stop", func() bool { return h.dev.Stats().InvalidRequests == 1 })
	h.dev.Reset()
	h.activate(harnessConfig{})
	mustStatus(t, "read after reset", h.do(readReq(0, 512)), StatusOK)
}

// TestHostErrors: host I/O errors complete requests with IOERR and are
// counted; the device keeps serving.
func TestHostErrors(t *testing.T) {
	m := newMemBackend(1 << 20)
	h := newHarness(t, harnessConfig{backend: m})
	eio := syscall.EIO
	m.writeErr = eio
	mustStatus(t, "write on EIO", h.do(writeReq(0, pattern(512, 1))), StatusIOErr)
	m.writeErr = syscall.ENOSPC
	mustStatus(t, "write on ENOSPC", h.do(writeReq(0, pattern(512, 1))), StatusIOErr)
	mustStatus(t, "write zeroes on ENOSPC", h.do(virtio.MockRequest{Header: hdr(TypeWriteZeroes, 0), Out: [][]byte{seg(0, 8, 0)}, Status: 1}), StatusIOErr)
	m.writeErr = nil
	m.readErr = eio
	mustStatus(t, "read on EIO", h.do(readReq(0, 512)), StatusIOErr)
	m.readErr = nil
	mustStatus(t, "write after errors", h.do(writeReq(0, pattern(512, 1))), StatusOK)
	mustStatus(t, "read after errors", h.do(readReq(0, 512)), StatusOK)
	m.syncErr = eio
	mustStatus(t, "flush on EIO", h.do(flushReq()), StatusIOErr)
	m.syncErr = nil
	mustStatus(t, "flush after a failed sync", h.do(flushReq()), StatusIOErr)
	mustStatus(t, "read after sync failure", h.do(readReq(0, 512)), StatusOK)
	if s := h.dev.Stats(); s.Errors != 6 || s.InvalidRequests != 0 || s.Writes != 1 || s.Reads != 2 {
		t.Fatalf("stats %+v", s)
	}
}

// TestFlushCoversWriteThroughDevice: through the device, a write completed
// before a FLUSH is durable when the FLUSH completes, and concurrent
// FLUSHes while a sync is in flight cost at most two host syncs.
func TestFlushThroughDevice(t *testing.T) {
	const n = 40 // flushes in flight at once (more than the workers)
	m := gatedBackend()
	h := newHarness(t, harnessConfig{backend: m})
	data := pattern(512, 5)
	mustStatus(t, "write", h.do(writeReq(3, data)), StatusOK)
	first := h.submit(flushReq())
	h.kick()
	m.waitEntered(t) // sync 1 in flight
	mustStatus(t, "write during sync", h.do(writeReq(9, data)), StatusOK)
	var subs []virtio.MockSubmission
	for range n {
		subs = append(subs, h.submit(flushReq()))
	}
	h.kick()
	waitFor(t, "flushes to queue up", func() bool { return len(h.dev.run.flushes) == n })
	m.gate <- struct{}{}
	m.waitEntered(t) // sync 2
	m.gate <- struct{}{}
	h.waitUsed(n + 1)
	for _, s := range append(subs, first) {
		mustStatus(t, "flush", h.result(s), StatusOK)
	}
	if got := m.syncs.Load(); got != 2 {
		t.Fatalf("%d flushes cost %d host syncs, want 2", n+1, got)
	}
	if !bytes.Equal(m.durable[9*512:10*512], data) {
		t.Fatal("write completed before the flushes is not durable")
	}
	if s := h.dev.Stats(); s.FlushesMerged != n-1 || s.HostSyncs != 2 || s.Flushes != n+1 {
		t.Fatalf("stats %+v", s)
	}
}

// TestResetInFlight: Reset waits for requests in flight, and the device can
// be activated again afterwards.
func TestResetInFlight(t *testing.T) {
	m := gatedBackend()
	h := newHarness(t, harnessConfig{backend: m})
	h.do(writeReq(0, pattern(512, 1)))
	h.submit(flushReq())
	h.kick()
	m.waitEntered(t)
	reset := make(chan struct{})
	go func() { h.dev.Reset(); close(reset) }()
	select {
	case <-reset:
		t.Fatal("Reset returned with a request in flight")
	default:
	}
	m.gate <- struct{}{}
	<-reset
	u, ok, err := h.drv.PopUsed()
	if err != nil || !ok || u.Len != 1 {
		t.Fatalf("in-flight flush not completed before Reset returned: %v %v %v", u, ok, err)
	}
	m.gate = nil
	for i := range 3 {
		h.activate(harnessConfig{})
		mustStatus(t, "read after re-activation", h.do(readReq(uint64(i), 512)), StatusOK)
		h.dev.Reset()
	}
	if err := h.dev.Activate(virtio.Activation{}); !errors.Is(err, ErrActivation) {
		t.Fatalf("activation without memory: %v", err)
	}
}

// TestMultiQueue serves two queues of one device at once.
func TestMultiQueue(t *testing.T) { forEngines(t, testMultiQueue) }

func testMultiQueue(t *testing.T, aio AIOEngine) {
	path := tempDisk(t, 1<<20)
	dev, err := Open(Spec{Path: path, Cache: CacheWriteback, AIO: aio}, Options{Queues: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	mem, err := virtio.NewMockMemory(virtio.MockMemoryBase, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	var drvs []*virtio.MockDriver
	var qbs []virtio.QueueBinding
	var irqs []*virtio.MockNotifier
	for i := range 2 {
		base := virtio.MockMemoryBase + uint64(i)*(2<<20)
		d, err := virtio.NewMockDriver(virtio.MockConfig{Size: 64, EventIdx: true, Memory: mem, ArenaStart: base, ArenaEnd: base + 2<<20})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		q, err := d.NewQueue()
		if err != nil {
			t.Fatal(err)
		}
		irq := virtio.NewMockNotifier()
		drvs, irqs = append(drvs, d), append(irqs, irq)
		qbs = append(qbs, virtio.QueueBinding{Queue: q, Kick: d.KickFD(), Interrupt: irq})
	}
	if err := dev.Activate(virtio.Activation{Memory: mem, Features: dev.Features(), Queues: qbs}); err != nil {
		t.Fatal(err)
	}
	for i, d := range drvs {
		h := &harness{t: t, dev: dev, drv: d, irq: irqs[i], path: path}
		data := pattern(4096, byte(i+1))
		mustStatus(t, "write", h.do(writeReq(uint64(i*8), data)), StatusOK)
	}
	for i, d := range drvs {
		h := &harness{t: t, dev: dev, drv: d, irq: irqs[1-i], path: path}
		h.irq = irqs[i]
		r := h.do(readReq(uint64((1-i)*8), 4096))
		if !bytes.Equal(r.in[0], pattern(4096, byte(2-i))) {
			t.Fatalf("queue %d read the other queue's write wrong", i)
		}
	}
	dev.Reset()
	if s := dev.Stats(); s.Reads != 2 || s.Writes != 2 || (aio == AIOIOUring) != (s.RingRequests == 2) {
		t.Fatalf("stats %+v", s)
	}
}

// TestOpenErrors: user errors opening a disk are wrapped with the path and
// the cause.
func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		spec    Spec
		opts    Options
		wantErr error
		wantMsg string
	}{
		{"missing file", Spec{Path: filepath.Join(dir, "nope"), Cache: CacheWriteback}, Options{}, fs.ErrNotExist, "nope"},
		{"directory", Spec{Path: dir, Cache: CacheWriteback}, Options{}, nil, "directory"},
		{"bad queue size", Spec{Path: tempDisk(t, 4096)}, Options{MaxQueueSize: 100}, ErrBadSpec, "queue size"},
		{"too many queues", Spec{Path: tempDisk(t, 4096)}, Options{Queues: 1000}, ErrBadSpec, "queues"},
		{"bad cache", Spec{Path: tempDisk(t, 4096), Cache: "fast"}, Options{}, ErrBadSpec, "fast"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Open(tc.spec, tc.opts)
			if err == nil {
				d.Close()
				t.Fatal("Open succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err %q does not mention %q", err, tc.wantMsg)
			}
		})
	}
}

// TestReadsPassBlockedFlushes: FLUSHes waiting for a slow host sync do not
// hold up reads and writes, however many there are.
func TestReadsPassBlockedFlushes(t *testing.T) {
	m := gatedBackend()
	h := newHarness(t, harnessConfig{backend: m, opts: Options{Workers: 2}})
	mustStatus(t, "write", h.do(writeReq(0, pattern(512, 1))), StatusOK)
	for range 10 {
		h.submit(flushReq())
	}
	h.kick()
	m.waitEntered(t) // a sync is in flight and will stay so
	data := pattern(1024, 7)
	mustStatus(t, "write during sync", h.do(writeReq(4, data)), StatusOK)
	r := h.do(readReq(4, 1024))
	mustStatus(t, "read during sync", r, StatusOK)
	if !bytes.Equal(r.in[0], data) {
		t.Fatal("read during sync returned other bytes")
	}
	// All ten were popped before the second write, so that one sync
	// covers them all.
	m.gate <- struct{}{}
	h.waitUsed(10)
	if s := h.dev.Stats(); s.HostSyncs != 1 || s.Flushes != 10 {
		t.Fatalf("stats %+v", s)
	}
}

// TestOneInterruptPerBatch: requests completed in one pass over the ring
// are published with one used->idx update and one interrupt. The queue is
// drained by hand (no loop goroutine) so the pass is exactly the 16
// requests made available before it.
func TestOneInterruptPerBatch(t *testing.T) {
	drv, err := virtio.NewMockDriver(virtio.MockConfig{Size: 64, NoKickFD: true})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := Open(Spec{Path: "mem", Serial: "batch"}, Options{Backend: newMemBackend(1 << 20), PollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	q, err := drv.NewQueue()
	if err != nil {
		t.Fatal(err)
	}
	irq := virtio.NewMockNotifier()
	st, err := dev.start(virtio.Activation{Memory: drv.Mem, Features: dev.Features() &^ virtio.FeatureEventIdx,
		Queues: []virtio.QueueBinding{{Queue: q, Kick: -1, Interrupt: irq}}}, false)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, dev: dev, drv: drv, irq: irq}
	var subs []virtio.MockSubmission
	for range 12 {
		subs = append(subs, h.submit(virtio.MockRequest{Header: hdr(TypeGetID, 0), In: []uint32{20}, Status: 1}))
	}
	for range 4 { // malformed: no status byte
		subs = append(subs, h.submit(virtio.MockRequest{Header: hdr(TypeIn, 0), Status: 0}))
	}
	st.queues[0].drain()
	st.stopAll()
	if got := irq.Count(); got != 1 {
		t.Fatalf("%d interrupts for one batch, want 1", got)
	}
	if idx, _ := drv.UsedIdx(); idx != 16 {
		t.Fatalf("used->idx %d, want 16", idx)
	}
	for _, s := range subs[:12] {
		if r := h.result(s); r.status != StatusOK || !bytes.HasPrefix(r.in[0], []byte("batch")) {
			t.Fatalf("GET_ID result %+v", r)
		}
	}
}

// TestSetWriteCache checks the method the control API uses: it changes
// the cache as a driver's config write would, and reports refusals (a
// driver without CONFIG_WCE cannot change it, one without FLUSH cannot turn
// it on).
func TestSetWriteCache(t *testing.T) {
	tests := []struct {
		name     string
		features uint64 // 0: not negotiated yet
		on       bool
		ok, wce  bool
	}{
		{"before negotiation off", 0, false, true, false},
		{"before negotiation on", 0, true, true, true},
		{"CONFIG_WCE and FLUSH off", FeatureConfigWCE | FeatureFlush, false, true, false},
		{"CONFIG_WCE and FLUSH on", FeatureConfigWCE | FeatureFlush, true, true, true},
		{"no CONFIG_WCE off", FeatureFlush, false, false, true},
		{"no FLUSH on", FeatureConfigWCE, true, false, false},
		{"no FLUSH off", FeatureConfigWCE, false, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessConfig{})
			if tc.features != 0 {
				h.dev.NegotiateFeatures(tc.features)
			}
			if ok := h.dev.SetWriteCache(tc.on); ok != tc.ok || h.dev.WriteCache() != tc.wce {
				t.Errorf("SetWriteCache(%v) = %v with the cache now %v; want %v, %v", tc.on, ok, h.dev.WriteCache(), tc.ok, tc.wce)
			}
		})
	}
}

// TestDiscardIgnore checks discard=ignore: a DISCARD completes OK without
// reaching the image; the default passes it on.
func TestDiscardIgnore(t *testing.T) {
	for _, ignore := range []bool{false, true} {
		m := newMemBackend(1 << 20)
		h := newHarness(t, harnessConfig{backend: m, ignoreDiscard: ignore})
		mustStatus(t, "discard", h.do(virtio.MockRequest{Header: hdr(TypeDiscard, 0), Out: [][]byte{seg(0, 64, 0)}, Status: 1}), StatusOK)
		want := int64(1)
		if ignore {
			want = 0
		}
		if got := m.discards.Load(); got != want {
			t.Errorf("discard=ignore %v: %d discards reached the image, want %d", ignore, got, want)
		}
	}
}
