package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/virtio/guestmem"
)

// MockDriver is the driver side of one split virtqueue, laid out in test
// guest memory, so devices can be unit-tested without a VM. It builds chains
// the way Linux's virtio_ring and virtio_blk do (a readable header, data
// segments, a writable status byte, optionally through an indirect table),
// publishes them with release stores, kicks through an eventfd subject to
// EVENT_IDX / NO_NOTIFY suppression exactly as virtqueue_kick_prepare does,
// and reads the used ring back. Its raw methods (WriteDesc, PushAvail,
// SetAvailIdx, AddLoop) produce hostile rings for fault tests.
//
// A MockDriver is not safe for concurrent use; it may run concurrently with
// the device that serves its queue. AddChain, Kick and PopUsed allocate
// nothing once the driver is warm, so benchmarks and AllocsPerRun tests can
// include them.
//
// Usage, a virtio_blk-style read of 4 KiB:
//
//	d, _ := virtio.NewMockDriver(virtio.MockConfig{Size: 128, EventIdx: true})
//	defer d.Close()
//	q, _ := d.NewQueue() // or hand d.QueueConfig() to the transport
//	hdr := make([]byte, 16)  // struct virtio_blk_outhdr: type IN, sector 8
//	binary.LittleEndian.PutUint64(hdr[8:], 8)
//	sub, _ := d.Submit(virtio.MockRequest{Header: hdr, In: []uint32{4096}, Status: 1})
//	d.Kick()
//	// ... the device pops the chain from q, fills sub.In[0], writes sub.Status ...
//	u, ok, err := d.PopUsed() // u.Head == sub.Head, u.Len == bytes written
//	status, _ := d.Read(sub.Status)
type MockDriver struct {
	// Mem is the guest memory the rings and buffers live in.
	Mem *guestmem.Memory

	cfg                  MockConfig
	size, mask           uint16
	desc, avail, used    uint64
	bump, limit, bufBase uint64

	// Descriptor allocator: a free list threaded through next, like
	// Linux's desc_extra/free_head.
	next     []uint16
	freeHead uint16
	numFree  int
	// Per head: descriptors in the chain, whether it is in flight, and the
	// indirect table kept for reuse.
	count    []uint16
	inflight []bool
	indAddr  []uint64
	indCap   []uint32

	availIdx    uint16 // shadow of avail->idx
	numAdded    uint16 // chains added since the last Kick
	lastUsed    uint16 // next used entry to read
	irqDisabled bool
	// held is set between HoldAvail and ReleaseAvail: chains go into the
	// avail ring, but avail->idx does not move.
	held bool

	kick    int
	kickBuf [8]byte
	scratch []MockBuffer
}

// MockConfig configures a MockDriver.
type MockConfig struct {
	// Size is the queue size (a power of two; 256 when 0).
	Size uint16
	// EventIdx makes the driver use VIRTIO_RING_F_EVENT_IDX.
	EventIdx bool
	// IndirectDesc is reported in QueueConfig; Submit uses indirect tables
	// only when asked per request.
	IndirectDesc bool
	// Memory is the guest memory to lay the ring out in. When nil, the
	// driver makes MemorySize bytes (MockMemorySize when 0) at
	// MockMemoryBase, so guest address 0 is outside guest memory.
	Memory *guestmem.Memory
	// MemorySize is the size of the memory made when Memory is nil.
	MemorySize uint64
	// ArenaStart and ArenaEnd bound the guest range the driver may use for
	// its rings and buffers when Memory is given (several drivers can
	// share one memory). With Memory nil they are ignored.
	ArenaStart, ArenaEnd uint64
	// StartIndex is where the avail and used indices start (0 on a fresh
	// queue), to test 16-bit wraparound without 65536 requests; it becomes
	// QueueConfig.NextAvail.
	StartIndex uint16
	// NoKickFD leaves the driver without an eventfd; Kick then only
	// reports whether it would have notified.
	NoKickFD bool
}

// MockBuffer is one guest buffer of a chain the mock builds.
type MockBuffer struct {
	// Addr is its guest physical address.
	Addr uint64
	// Len is its length.
	Len uint32
	// Writable marks it device-writable.
	Writable bool
}

// MockDesc is a raw descriptor, written as is (see WriteDesc).
type MockDesc struct {
	// Addr is the buffer's (or indirect table's) guest address.
	Addr uint64
	// Len is its length in bytes.
	Len uint32
	// Flags are DescFlag* bits, any combination.
	Flags uint16
	// Next is the next descriptor's index when Flags has DescFlagNext.
	Next uint16
}

// Raw descriptor flags for MockDesc (virtio 1.2, 2.7.5).
const (
	DescFlagNext     = descFNext
	DescFlagWrite    = descFWrite
	DescFlagIndirect = descFIndirect
)

// MockUsed is one element read back from the used ring.
type MockUsed struct {
	// Head is the chain's head descriptor.
	Head uint16
	// Len is the number of bytes the device says it wrote.
	Len uint32
}

// MockRequest is one request built the way virtio_blk queues it: a readable
// header, readable data segments (a write's payload), writable data segments
// (a read's buffers), and a writable status.
type MockRequest struct {
	// Header is copied into a fresh device-readable buffer (omitted when
	// empty).
	Header []byte
	// Out are device-readable data segments, each copied into its own
	// buffer.
	Out [][]byte
	// In are the sizes of device-writable data segments, zero-filled.
	In []uint32
	// Status is the size of the trailing writable status buffer (1 for
	// virtio_blk; 0 for none). It is filled with 0xff so a device that
	// forgets to write it is caught.
	Status uint32
	// Indirect places the chain in an indirect table, as Linux does for
	// every multi-segment request when VIRTIO_F_INDIRECT_DESC is on.
	Indirect bool
}

// MockSubmission is where Submit put a request's buffers.
type MockSubmission struct {
	// Head identifies the chain in the used ring.
	Head uint16
	// Header is the header buffer (zero Len when none).
	Header MockBuffer
	// Out and In are the data buffers, in request order.
	Out, In []MockBuffer
	// Status is the status buffer (zero Len when none).
	Status MockBuffer
}

// Default memory of a MockDriver.
const (
	MockMemoryBase uint64 = 0x10000
	MockMemorySize uint64 = 4 << 20
)

// ErrMockFull reports that the mock ring or its buffer arena is full.
var ErrMockFull = errors.New("virtio mock: out of descriptors or buffer space")

// ErrMockUsed reports a used ring the device got wrong (an index moving too
// far, an element naming a chain that is not in flight).
var ErrMockUsed = errors.New("virtio mock: bad used ring")

// NewMockMemory returns size bytes of zeroed guest memory at guest address
// base, for tests.
func NewMockMemory(base, size uint64) (*guestmem.Memory, error) {
	return guestmem.New(guestmem.Region{GuestAddr: base, Host: make([]byte, size)})
}

// NewMockDriver lays out an empty ring as a driver does before setting
// DRIVER_OK.
func NewMockDriver(cfg MockConfig) (*MockDriver, error) {
	if cfg.Size == 0 {
		cfg.Size = 256
	}
	n := uint64(cfg.Size)
	if n > MaxQueueSize || n&(n-1) != 0 {
		return nil, fmt.Errorf("virtio mock: size %d is not a power of two up to %d", cfg.Size, MaxQueueSize)
	}
	d := &MockDriver{cfg: cfg, size: cfg.Size, mask: cfg.Size - 1, kick: -1}
	if cfg.Memory == nil {
		sz := cfg.MemorySize
		if sz == 0 {
			sz = MockMemorySize
		}
		m, err := NewMockMemory(MockMemoryBase, sz)
		if err != nil {
			return nil, err
		}
		d.Mem, d.bump, d.limit = m, MockMemoryBase, MockMemoryBase+sz
	} else {
		d.Mem, d.bump, d.limit = cfg.Memory, cfg.ArenaStart, cfg.ArenaEnd
	}
	var err error
	// Linux's vring layout: the descriptor table, the avail ring right
	// behind it, the used ring on the next page.
	if d.desc, err = d.Alloc(descSize*n, 4096); err != nil {
		return nil, err
	}
	if d.avail, err = d.Alloc(ringHeader+2*n+2, 4); err != nil {
		return nil, err
	}
	if d.used, err = d.Alloc(ringHeader+usedElemSize*n+2, 4096); err != nil {
		return nil, err
	}
	// Zero the rings (memory given by the caller may be dirty).
	for _, r := range [][2]uint64{{d.desc, descSize * n}, {d.avail, ringHeader + 2*n + 4}, {d.used, ringHeader + usedElemSize*n + 4}} {
		b, err := d.Mem.Slice(r[0], r[1])
		if err != nil {
			return nil, fmt.Errorf("virtio mock: ring outside memory: %w", err)
		}
		clear(b)
	}
	d.bufBase = d.bump
	d.availIdx, d.lastUsed = cfg.StartIndex, cfg.StartIndex
	for _, a := range []uint64{d.avail + 2, d.used + 2, d.avail + ringHeader + 2*n, d.used + ringHeader + usedElemSize*n} {
		if err := d.Mem.StoreUint16Release(a, cfg.StartIndex); err != nil {
			return nil, err
		}
	}
	d.next = make([]uint16, n)
	for i := range d.next {
		d.next[i] = uint16(i + 1)
	}
	d.numFree = int(n)
	d.count = make([]uint16, n)
	d.inflight = make([]bool, n)
	d.indAddr = make([]uint64, n)
	d.indCap = make([]uint32, n)
	if !cfg.NoKickFD {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			return nil, fmt.Errorf("virtio mock: eventfd: %w", err)
		}
		d.kick = fd
	}
	return d, nil
}

// Close releases the kick eventfd.
func (d *MockDriver) Close() error {
	if d.kick < 0 {
		return nil
	}
	err := unix.Close(d.kick)
	d.kick = -1
	return err
}

// KickFD is the eventfd Kick writes (-1 with NoKickFD). It is non-blocking;
// hand it to the device as QueueBinding.Kick.
func (d *MockDriver) KickFD() int { return d.kick }

// QueueConfig is the configuration a transport would program for this ring.
func (d *MockDriver) QueueConfig() QueueConfig {
	return QueueConfig{
		Size: d.size, DescTable: d.desc, AvailRing: d.avail, UsedRing: d.used,
		EventIdx: d.cfg.EventIdx, IndirectDesc: d.cfg.IndirectDesc,
		NextAvail: d.cfg.StartIndex,
	}
}

// NewQueue returns the device side of this ring.
func (d *MockDriver) NewQueue() (*Queue, error) { return NewQueue(d.Mem, d.QueueConfig()) }

// Size is the queue size.
func (d *MockDriver) Size() uint16 { return d.size }

// NumFree is the number of free descriptors.
func (d *MockDriver) NumFree() int { return d.numFree }

// Alloc reserves n bytes of guest memory aligned to align (a power of two;
// 0 means 8) from the driver's arena. Memory is never given back, except by
// ResetBuffers.
func (d *MockDriver) Alloc(n, align uint64) (uint64, error) {
	if align == 0 {
		align = 8
	}
	a := (d.bump + align - 1) &^ (align - 1)
	if a < d.bump || a+n < a || a+n > d.limit {
		return 0, fmt.Errorf("%w: %d bytes", ErrMockFull, n)
	}
	d.bump = a + n
	return a, nil
}

// ResetBuffers frees every buffer Alloc and Submit handed out. Indirect
// tables kept for reuse are dropped too, so call it only with nothing in
// flight.
func (d *MockDriver) ResetBuffers() {
	d.bump = d.bufBase
	clear(d.indAddr)
	clear(d.indCap)
}

// Write copies p into guest memory at addr.
func (d *MockDriver) Write(addr uint64, p []byte) error { return d.Mem.WriteAt(p, addr) }

// Read returns a copy of the bytes of b.
func (d *MockDriver) Read(b MockBuffer) ([]byte, error) {
	p := make([]byte, b.Len)
	return p, d.Mem.ReadAt(p, b.Addr)
}

// AddChain makes bufs available as one chain, directly or through an
// indirect table, and publishes it (avail->idx is updated at once, as Linux
// does; the device is told by Kick). It does not validate bufs, so tests
// can build chains with bad ordering or addresses outside guest memory.
func (d *MockDriver) AddChain(bufs []MockBuffer, indirect bool) (head uint16, err error) {
	n := len(bufs)
	if n == 0 {
		return 0, fmt.Errorf("virtio mock: empty chain")
	}
	if indirect {
		if d.numFree < 1 {
			return 0, ErrMockFull
		}
		head = d.freeHead
		if d.indCap[head] < uint32(n) {
			a, err := d.Alloc(uint64(n)*descSize, descSize)
			if err != nil {
				return 0, err
			}
			d.indAddr[head], d.indCap[head] = a, uint32(n)
		}
		table, err := d.Mem.Slice(d.indAddr[head], uint64(n)*descSize)
		if err != nil {
			return 0, err
		}
		for i, b := range bufs {
			putDesc(table[i*descSize:], b.Addr, b.Len, bufFlags(b, i < n-1), uint16(i+1))
		}
		if err := d.writeDesc(head, MockDesc{Addr: d.indAddr[head], Len: uint32(n) * descSize, Flags: descFIndirect}); err != nil {
			return 0, err
		}
		d.take(1)
	} else {
		if d.numFree < n {
			return 0, ErrMockFull
		}
		head = d.freeHead
		i := head
		for k, b := range bufs {
			if err := d.writeDesc(i, MockDesc{Addr: b.Addr, Len: b.Len, Flags: bufFlags(b, k < n-1), Next: d.next[i]}); err != nil {
				return 0, err
			}
			i = d.next[i]
		}
		d.take(n)
	}
	d.count[head] = uint16(n)
	if indirect {
		d.count[head] = 1
	}
	d.inflight[head] = true
	return head, d.publish(head)
}

// take removes n descriptors from the front of the free list (they are the
// chain just written, linked through next).
func (d *MockDriver) take(n int) {
	for range n {
		d.freeHead = d.next[d.freeHead]
	}
	d.numFree -= n
}

func bufFlags(b MockBuffer, more bool) uint16 {
	var f uint16
	if b.Writable {
		f |= descFWrite
	}
	if more {
		f |= descFNext
	}
	return f
}

func putDesc(b []byte, addr uint64, length uint32, flags, next uint16) {
	binary.LittleEndian.PutUint64(b[0:8], addr)
	binary.LittleEndian.PutUint32(b[8:12], length)
	binary.LittleEndian.PutUint16(b[12:14], flags)
	binary.LittleEndian.PutUint16(b[14:16], next)
}

func (d *MockDriver) writeDesc(i uint16, m MockDesc) error {
	b, err := d.Mem.Slice(d.desc+uint64(i)*descSize, descSize)
	if err != nil {
		return err
	}
	putDesc(b, m.Addr, m.Len, m.Flags, m.Next)
	return nil
}

// publish puts head in the next avail entry and release-stores avail->idx.
func (d *MockDriver) publish(head uint16) error {
	if err := d.Mem.PutUint16(d.avail+ringHeader+2*uint64(d.availIdx&d.mask), head); err != nil {
		return err
	}
	d.availIdx++
	d.numAdded++
	if d.held {
		return nil
	}
	return d.Mem.StoreUint16Release(d.avail+2, d.availIdx)
}

// HoldAvail keeps the chains added from now on from the device: they are
// written, descriptors and avail entries, but avail->idx stays where it
// is until ReleaseAvail, so the device cannot have seen them. A test can
// then change guest memory under a chain before the device may read it.
func (d *MockDriver) HoldAvail() { d.held = true }

// ReleaseAvail publishes the chains added since HoldAvail (avail->idx is
// release-stored at once; the device is told by a kick).
func (d *MockDriver) ReleaseAvail() error {
	d.held = false
	return d.Mem.StoreUint16Release(d.avail+2, d.availIdx)
}

// Submit allocates buffers for r, fills the readable ones, and adds the
// chain: header, Out segments, In segments, status, in that order. It
// allocates (guest buffers from the arena, host slices for the result):
// long-running benchmarks should Alloc buffers once and reuse them with
// AddChain, or call ResetBuffers between rounds.
func (d *MockDriver) Submit(r MockRequest) (MockSubmission, error) {
	var s MockSubmission
	d.scratch = d.scratch[:0]
	alloc := func(n int, writable bool) (MockBuffer, error) {
		a, err := d.Alloc(uint64(n), 8)
		if err != nil {
			return MockBuffer{}, err
		}
		b := MockBuffer{Addr: a, Len: uint32(n), Writable: writable}
		d.scratch = append(d.scratch, b)
		return b, nil
	}
	var err error
	if len(r.Header) > 0 {
		if s.Header, err = alloc(len(r.Header), false); err != nil {
			return s, err
		}
		if err := d.Write(s.Header.Addr, r.Header); err != nil {
			return s, err
		}
	}
	for _, p := range r.Out {
		b, err := alloc(len(p), false)
		if err != nil {
			return s, err
		}
		if err := d.Write(b.Addr, p); err != nil {
			return s, err
		}
		s.Out = append(s.Out, b)
	}
	for _, n := range r.In {
		b, err := alloc(int(n), true)
		if err != nil {
			return s, err
		}
		s.In = append(s.In, b)
	}
	if r.Status > 0 {
		if s.Status, err = alloc(int(r.Status), true); err != nil {
			return s, err
		}
		st, err := d.Mem.Slice(s.Status.Addr, uint64(r.Status))
		if err != nil {
			return s, err
		}
		for i := range st {
			st[i] = 0xff
		}
	}
	s.Head, err = d.AddChain(d.scratch, r.Indirect)
	return s, err
}

// Kick notifies the device if it asked to be notified of the chains added
// since the last Kick (avail_event with EVENT_IDX, used->flags NO_NOTIFY
// without), as Linux's virtqueue_kick_prepare decides. It reports whether it
// notified.
func (d *MockDriver) Kick() (bool, error) {
	// Store-load fence: avail->idx is published before we read the
	// device's suppression state (pairs with EnableNotifications).
	guestmem.Fence()
	old, cur := d.availIdx-d.numAdded, d.availIdx
	d.numAdded = 0
	var need bool
	if d.cfg.EventIdx {
		ev, err := d.Mem.LoadUint16Acquire(d.used + ringHeader + usedElemSize*uint64(d.size))
		if err != nil {
			return false, err
		}
		need = NeedEvent(ev, cur, old)
	} else {
		f, err := d.Mem.LoadUint16Acquire(d.used)
		if err != nil {
			return false, err
		}
		need = f&usedFNoNotify == 0 && cur != old
	}
	if !need || d.kick < 0 {
		return need, nil
	}
	binary.LittleEndian.PutUint64(d.kickBuf[:], 1)
	if _, err := unix.Write(d.kick, d.kickBuf[:]); err != nil {
		return true, fmt.Errorf("virtio mock: kick: %w", err)
	}
	return true, nil
}

// PopUsed reads the next used element, returning its chain's descriptors to
// the free list. ok is false when the device has not published more.
func (d *MockDriver) PopUsed() (u MockUsed, ok bool, err error) {
	idx, err := d.Mem.LoadUint16Acquire(d.used + 2)
	if err != nil {
		return u, false, err
	}
	if idx == d.lastUsed {
		return u, false, nil
	}
	if uint16(idx-d.lastUsed) > d.size {
		return u, false, fmt.Errorf("%w: used->idx %d, last seen %d", ErrMockUsed, idx, d.lastUsed)
	}
	b, err := d.Mem.Slice(d.used+ringHeader+usedElemSize*uint64(d.lastUsed&d.mask), usedElemSize)
	if err != nil {
		return u, false, err
	}
	id := binary.LittleEndian.Uint32(b[0:4])
	u = MockUsed{Head: uint16(id), Len: binary.LittleEndian.Uint32(b[4:8])}
	d.lastUsed++
	if id >= uint32(d.size) || !d.inflight[id] {
		return u, true, fmt.Errorf("%w: element %d names head %d, not in flight", ErrMockUsed, d.lastUsed-1, id)
	}
	d.inflight[id] = false
	if n := d.count[id]; n > 0 {
		last := u.Head
		for range n - 1 {
			last = d.next[last]
		}
		d.next[last] = d.freeHead
		d.freeHead = u.Head
		d.numFree += int(n)
	}
	// Linux re-arms used_event after each buffer it takes while callbacks
	// are enabled.
	if d.cfg.EventIdx && !d.irqDisabled {
		if err := d.Mem.StoreUint16Release(d.avail+ringHeader+2*uint64(d.size), d.lastUsed); err != nil {
			return u, true, err
		}
	}
	return u, true, nil
}

// DisableInterrupts asks the device not to interrupt (avail->flags
// NO_INTERRUPT; with EVENT_IDX, used_event is moved half the index space
// away as well).
func (d *MockDriver) DisableInterrupts() error {
	d.irqDisabled = true
	if d.cfg.EventIdx {
		if err := d.Mem.StoreUint16Release(d.avail+ringHeader+2*uint64(d.size), d.lastUsed+0x8000); err != nil {
			return err
		}
	}
	return d.Mem.StoreUint16Release(d.avail, availFNoInterrupt)
}

// EnableInterrupts asks the device to interrupt for the next used buffer and
// reports whether used buffers are already waiting (so the caller must poll
// again, as virtqueue_enable_cb's return value says).
func (d *MockDriver) EnableInterrupts() (pending bool, err error) {
	d.irqDisabled = false
	if d.cfg.EventIdx {
		err = d.Mem.StoreUint16Release(d.avail+ringHeader+2*uint64(d.size), d.lastUsed)
	} else {
		err = d.Mem.StoreUint16Release(d.avail, 0)
	}
	if err != nil {
		return false, err
	}
	guestmem.Fence()
	idx, err := d.Mem.LoadUint16Acquire(d.used + 2)
	return idx != d.lastUsed, err
}

// AvailEvent returns the device's avail_event (EVENT_IDX).
func (d *MockDriver) AvailEvent() (uint16, error) {
	return d.Mem.LoadUint16Acquire(d.used + ringHeader + usedElemSize*uint64(d.size))
}

// UsedFlags returns the device's used->flags.
func (d *MockDriver) UsedFlags() (uint16, error) { return d.Mem.LoadUint16Acquire(d.used) }

// UsedIdx returns the device's used->idx.
func (d *MockDriver) UsedIdx() (uint16, error) { return d.Mem.LoadUint16Acquire(d.used + 2) }

// Hostile rings. These bypass the descriptor allocator: use them on
// descriptors AddChain does not own (a fresh driver, or indices above the
// ones AddChain used).

// WriteDesc writes descriptor i of the main table as is.
func (d *MockDriver) WriteDesc(i uint16, m MockDesc) error {
	if i >= d.size {
		return fmt.Errorf("virtio mock: descriptor %d of %d", i, d.size)
	}
	return d.writeDesc(i, m)
}

// WriteIndirectTable writes descs as an indirect table at addr.
func (d *MockDriver) WriteIndirectTable(addr uint64, descs []MockDesc) error {
	b, err := d.Mem.Slice(addr, uint64(len(descs))*descSize)
	if err != nil {
		return err
	}
	for i, m := range descs {
		putDesc(b[i*descSize:], m.Addr, m.Len, m.Flags, m.Next)
	}
	return nil
}

// PushAvail makes head (any value, in range or not) available and publishes
// it. PopUsed accepts head back without freeing descriptors.
func (d *MockDriver) PushAvail(head uint16) error {
	if head < d.size {
		d.inflight[head] = true
		d.count[head] = 0
	}
	return d.publish(head)
}

// SetAvailIdx release-stores an arbitrary avail->idx (to fake a driver
// that moves it too far).
func (d *MockDriver) SetAvailIdx(idx uint16) error {
	d.availIdx = idx
	return d.Mem.StoreUint16Release(d.avail+2, idx)
}

// AddLoop writes a chain of n descriptors starting at descriptor first whose
// last descriptor points back to the first, and makes it available. Each
// descriptor is a valid 512-byte readable buffer, so only the loop is wrong.
func (d *MockDriver) AddLoop(first uint16, n int) (head uint16, err error) {
	if n < 1 || int(first)+n > int(d.size) {
		return 0, fmt.Errorf("virtio mock: loop of %d from %d does not fit %d descriptors", n, first, d.size)
	}
	buf, err := d.Alloc(512, 8)
	if err != nil {
		return 0, err
	}
	for k := range n {
		next := first + uint16(k) + 1
		if k == n-1 {
			next = first
		}
		if err := d.WriteDesc(first+uint16(k), MockDesc{Addr: buf, Len: 512, Flags: descFNext, Next: next}); err != nil {
			return 0, err
		}
	}
	return first, d.PushAvail(first)
}

// MockNotifier is a Notifier for tests: it counts notifications and
// signals C (capacity 1, so a burst coalesces into one wake-up).
type MockNotifier struct {
	// C receives a value after a notification, unless one is already
	// waiting.
	C     chan struct{}
	count atomic.Uint64
}

// NewMockNotifier returns a ready MockNotifier.
func NewMockNotifier() *MockNotifier { return &MockNotifier{C: make(chan struct{}, 1)} }

// Notify records the notification.
func (n *MockNotifier) Notify() error {
	n.count.Add(1)
	select {
	case n.C <- struct{}{}:
	default:
	}
	return nil
}

// Count is the number of notifications so far.
func (n *MockNotifier) Count() uint64 { return n.count.Load() }
