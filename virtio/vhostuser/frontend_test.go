package vhostuser

import (
	"encoding/binary"
	"errors"
	"io"
	"log"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/virtio"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// Test guest layout: one memfd-backed region, seen by the guest at gpaBase
// and by the (pretend) frontend process at uvaBase.
const (
	gpaBase uint64 = 0x100000
	uvaBase uint64 = 0x7f1200000000
	memSize uint64 = 4 << 20
)

// testFrontend is the frontend end of a socketpair, speaking vhost-user to
// a Serve running in a goroutine.
type testFrontend struct {
	t     *testing.T
	fd    int
	memfd int
	mem   *guestmem.Memory // the frontend's own mapping of guest memory
	raw   []byte
	done  chan error
	logs  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}

func newMemfd(t *testing.T, size uint64) int {
	t.Helper()
	fd, err := unix.MemfdCreate("vhostuser-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatalf("ftruncate: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// startFrontend connects a fresh backend serving dev.
func startFrontend(t *testing.T, dev virtio.Device) *testFrontend {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	f := &testFrontend{t: t, fd: sp[0], done: make(chan error, 1), logs: &syncBuffer{}}
	f.memfd = newMemfd(t, memSize)
	f.raw, err = unix.Mmap(f.memfd, 0, int(memSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	f.mem, err = guestmem.New(guestmem.Region{GuestAddr: gpaBase, Host: f.raw})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		err := Serve(sp[1], dev, Options{Log: log.New(f.logs, "", 0)})
		unix.Close(sp[1])
		f.done <- err
	}()
	t.Cleanup(func() {
		unix.Close(f.fd)
		select {
		case <-f.done:
		case <-time.After(10 * time.Second):
			t.Errorf("backend did not end after the frontend closed")
		}
		unix.Munmap(f.raw)
	})
	return f
}

func (f *testFrontend) send(req, flags uint32, payload []byte, fds ...int) {
	f.t.Helper()
	b := make([]byte, headerSize+len(payload))
	header{Request: req, Flags: flagVersion | flags, Size: uint32(len(payload))}.encode(b)
	copy(b[headerSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(f.fd, b, oob, nil, unix.MSG_NOSIGNAL); err != nil {
		f.t.Fatalf("send %s: %v", reqName(req), err)
	}
}

// recv reads one reply.
func (f *testFrontend) recv(req uint32) []byte {
	f.t.Helper()
	var h [headerSize]byte
	if _, err := io.ReadFull(fdReader(f.fd), h[:]); err != nil {
		f.t.Fatalf("reply to %s: %v", reqName(req), err)
	}
	hd := decodeHeader(h[:])
	if hd.Request != req || hd.Flags != flagVersion|flagReply {
		f.t.Fatalf("reply to %s: header %+v", reqName(req), hd)
	}
	p := make([]byte, hd.Size)
	if _, err := io.ReadFull(fdReader(f.fd), p); err != nil {
		f.t.Fatalf("reply to %s payload: %v", reqName(req), err)
	}
	return p
}

type fdReader int

func (r fdReader) Read(p []byte) (int, error) {
	n, err := unix.Read(int(r), p)
	if n == 0 && err == nil {
		return 0, io.EOF
	}
	if n < 0 {
		n = 0
	}
	return n, err
}

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func state(i, n uint32) []byte {
	return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, i), n)
}

func (f *testFrontend) getU64(req uint32) uint64 {
	f.send(req, 0, nil)
	p := f.recv(req)
	if len(p) != 8 {
		f.t.Fatalf("%s reply is %d bytes", reqName(req), len(p))
	}
	return binary.LittleEndian.Uint64(p)
}

// ack sends a message asking for a reply-ack and returns the ack value.
func (f *testFrontend) ack(req uint32, payload []byte, fds ...int) uint64 {
	f.t.Helper()
	f.send(req, flagNeedReply, payload, fds...)
	p := f.recv(req)
	if len(p) != 8 {
		f.t.Fatalf("%s ack is %d bytes", reqName(req), len(p))
	}
	return binary.LittleEndian.Uint64(p)
}

func (f *testFrontend) mustAck(req uint32, payload []byte, fds ...int) {
	f.t.Helper()
	if v := f.ack(req, payload, fds...); v != 0 {
		f.t.Fatalf("%s: ack %d; backend log:\n%s", reqName(req), v, f.logs)
	}
}

// negotiate runs the handshake QEMU does, acking protocol features pf.
func (f *testFrontend) negotiate(pf uint64, features uint64) {
	f.t.Helper()
	f.getU64(reqGetFeatures)
	f.send(reqSetFeatures, 0, u64(features))
	f.getU64(reqGetProtocolFeatures)
	f.send(reqSetProtocolFeatures, 0, u64(pf))
	f.send(reqSetOwner, 0, nil)
}

func memTable(regions ...memRegion) []byte {
	p := binary.LittleEndian.AppendUint32(nil, uint32(len(regions)))
	p = binary.LittleEndian.AppendUint32(p, 0)
	for _, r := range regions {
		p = binary.LittleEndian.AppendUint64(p, r.GuestAddr)
		p = binary.LittleEndian.AppendUint64(p, r.Size)
		p = binary.LittleEndian.AppendUint64(p, r.UserAddr)
		p = binary.LittleEndian.AppendUint64(p, r.MmapOffset)
	}
	return p
}

var wholeRegion = memRegion{GuestAddr: gpaBase, Size: memSize, UserAddr: uvaBase}

func (f *testFrontend) setMemTable() {
	f.t.Helper()
	f.mustAck(reqSetMemTable, memTable(wholeRegion), f.memfd)
}

func vringAddrPayload(i uint32, flags uint32, desc, used, avail uint64) []byte {
	p := binary.LittleEndian.AppendUint32(nil, i)
	p = binary.LittleEndian.AppendUint32(p, flags)
	for _, v := range []uint64{desc, used, avail, 0} {
		p = binary.LittleEndian.AppendUint64(p, v)
	}
	return p
}

func uva(gpa uint64) uint64 { return gpa - gpaBase + uvaBase }

// ring is one driver-side queue with its call eventfd.
type ring struct {
	d    *virtio.MockDriver
	call int
}

// newRing lays a ring out in the frontend's memory, in arena slot i.
func (f *testFrontend) newRing(i int, size uint16) *ring {
	f.t.Helper()
	slot := memSize / 4
	d, err := virtio.NewMockDriver(virtio.MockConfig{
		Size: size, EventIdx: true, IndirectDesc: true, Memory: f.mem,
		ArenaStart: gpaBase + uint64(i)*slot, ArenaEnd: gpaBase + uint64(i+1)*slot,
	})
	if err != nil {
		f.t.Fatal(err)
	}
	call, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { d.Close(); unix.Close(call) })
	return &ring{d: d, call: call}
}

// setupRing programs ring i as QEMU's vhost_virtqueue_start does.
func (f *testFrontend) setupRing(i uint32, r *ring, base uint16) {
	f.t.Helper()
	c := r.d.QueueConfig()
	f.mustAck(reqSetVringNum, state(i, uint32(c.Size)))
	f.mustAck(reqSetVringBase, state(i, uint32(base)))
	f.mustAck(reqSetVringAddr, vringAddrPayload(i, 0, uva(c.DescTable), uva(c.UsedRing), uva(c.AvailRing)))
	f.mustAck(reqSetVringKick, u64(uint64(i)), r.d.KickFD())
	f.mustAck(reqSetVringCall, u64(uint64(i)), r.call)
}

// roundTrip submits n requests on r, kicks, and waits for all of them to
// come back with status 0.
func (f *testFrontend) roundTrip(r *ring, n int) {
	f.t.Helper()
	subs := map[uint16]virtio.MockSubmission{}
	for range n {
		s, err := r.d.Submit(virtio.MockRequest{Header: make([]byte, 16), In: []uint32{512}, Status: 1})
		if err != nil {
			f.t.Fatal(err)
		}
		subs[s.Head] = s
	}
	if _, err := r.d.Kick(); err != nil {
		f.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(subs) > 0 {
		u, ok, err := r.d.PopUsed()
		if err != nil {
			f.t.Fatal(err)
		}
		if !ok {
			if time.Now().After(deadline) {
				f.t.Fatalf("%d requests not completed; backend log:\n%s", len(subs), f.logs)
			}
			waitFD(r.call, 100*time.Millisecond)
			continue
		}
		s, found := subs[u.Head]
		if !found {
			f.t.Fatalf("used head %d was not submitted", u.Head)
		}
		st, err := r.d.Read(s.Status)
		if err != nil || st[0] != 0 {
			f.t.Fatalf("status %v, %v", st, err)
		}
		delete(subs, u.Head)
	}
	r.d.ResetBuffers()
}

// waitFD waits for fd to become readable and drains it.
func waitFD(fd int, d time.Duration) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, _ := unix.Poll(pfd, int(d/time.Millisecond))
	if n > 0 {
		var b [8]byte
		unix.Read(fd, b[:])
		return true
	}
	return false
}

// end closes the frontend side and returns Serve's result.
func (f *testFrontend) end() error {
	unix.Shutdown(f.fd, unix.SHUT_WR)
	return f.wait()
}

func (f *testFrontend) wait() error {
	select {
	case err := <-f.done:
		f.done <- err // for Cleanup
		return err
	case <-time.After(10 * time.Second):
		f.t.Fatalf("backend still serving")
		return nil
	}
}

// fakeDevice is a virtio.Device that completes every request with status 0,
// one goroutine per queue, and records what the transport did to it.
type fakeDevice struct {
	queues   int
	features uint64
	maxQ     uint16

	mu          sync.Mutex
	config      [64]byte
	activations []virtio.Activation
	resets      int
	served      uint64
	negotiated  []uint64
	activateErr error

	stop chan struct{}
	wg   sync.WaitGroup
}

func newFakeDevice(queues int) *fakeDevice {
	d := &fakeDevice{queues: queues, maxQ: 16,
		features: virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc | virtio.FeatureRingPacked | 1<<9}
	for i := range d.config {
		d.config[i] = byte(i)
	}
	return d
}

func (d *fakeDevice) DeviceID() uint16     { return 2 }
func (d *fakeDevice) Features() uint64     { return d.features }
func (d *fakeDevice) NumQueues() int       { return d.queues }
func (d *fakeDevice) MaxQueueSize() uint16 { return d.maxQ }
func (d *fakeDevice) ConfigSize() uint32   { return uint32(len(d.config)) }

func (d *fakeDevice) ReadConfig(off uint32, p []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(p)
	if off < uint32(len(d.config)) {
		copy(p, d.config[off:])
	}
}

func (d *fakeDevice) WriteConfig(off uint32, p []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < uint32(len(d.config)) {
		copy(d.config[off:], p)
	}
}

func (d *fakeDevice) Activate(a virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.activateErr != nil {
		return d.activateErr
	}
	if d.stop != nil {
		return errors.New("fake device: activated twice")
	}
	d.activations = append(d.activations, a)
	d.stop = make(chan struct{})
	for _, b := range a.Queues {
		d.wg.Add(1)
		go func(stop chan struct{}) {
			defer d.wg.Done()
			// As every device serving vhost-user must: a fault on the
			// frontend's memory ends this goroutine, not the process.
			a.Memory.Guard(func() error { d.serve(a.Memory, b, stop); return nil })
		}(d.stop)
	}
	return nil
}

func (d *fakeDevice) serve(mem *guestmem.Memory, b virtio.QueueBinding, stop chan struct{}) {
	c := virtio.Chain{Descriptors: make([]virtio.Descriptor, 0, 8)}
	for {
		select {
		case <-stop:
			return
		default:
		}
		waitFD(b.Kick, 20*time.Millisecond)
		for {
			ok, err := b.Queue.Pop(&c)
			if !ok {
				break
			}
			if err == nil && len(c.Descriptors) > 0 {
				last := c.Descriptors[len(c.Descriptors)-1]
				if s, err := mem.Slice(last.Addr, 1); err == nil {
					s[0] = 0
				}
			}
			b.Queue.AddUsed(c.Head, 1)
			d.mu.Lock()
			d.served++
			d.mu.Unlock()
		}
		if n, _ := b.Queue.PublishUsed(); n {
			b.Interrupt.Notify()
		}
	}
}

func (d *fakeDevice) NegotiateFeatures(f uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.negotiated = append(d.negotiated, f)
}

func (d *fakeDevice) Reset() {
	d.mu.Lock()
	stop := d.stop
	d.stop = nil
	d.resets++
	d.config[32] = 32 // like virtio-blk's writeback, reset to its initial value
	d.mu.Unlock()
	if stop != nil {
		close(stop)
		d.wg.Wait()
	}
}

func (d *fakeDevice) snapshot() (activations []virtio.Activation, resets int, active bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]virtio.Activation(nil), d.activations...), d.resets, d.stop != nil
}

// openFDs counts this process's open descriptors, to catch leaks.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
