package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync/atomic"

	"github.com/flushvm/flushvm/virtio/guestmem"
)

// Guest-caused queue faults. Pop wraps them; test with errors.Is.
var (
	ErrChainTooLong          = errors.New("virtio: descriptor chain longer than allowed")
	ErrChainLoop             = errors.New("virtio: descriptor chain loops")
	ErrDescriptorIndex       = errors.New("virtio: descriptor index out of range")
	ErrDescriptorRange       = errors.New("virtio: descriptor buffer outside guest memory")
	ErrReadableAfterWritable = errors.New("virtio: device-readable descriptor after a device-writable one")
	ErrIndirect              = errors.New("virtio: bad indirect descriptor table")
	ErrAvailIndex            = errors.New("virtio: avail index moved more than the queue size")
	ErrQueueConfig           = errors.New("virtio: bad queue configuration")
)

// MaxQueueSize is the largest split virtqueue the specification allows.
const MaxQueueSize = 32768

// Split virtqueue layout (virtio 1.2, section 2.7).
const (
	// Descriptor flags.
	descFNext     uint16 = 1
	descFWrite    uint16 = 2
	descFIndirect uint16 = 4

	// availFNoInterrupt in avail->flags asks the device not to interrupt
	// (meaningful only without EVENT_IDX).
	availFNoInterrupt uint16 = 1
	// usedFNoNotify in used->flags asks the driver not to kick (meaningful
	// only without EVENT_IDX).
	usedFNoNotify uint16 = 1

	descSize     = 16 // struct virtq_desc
	usedElemSize = 8  // struct virtq_used_elem
	ringHeader   = 4  // flags + idx in front of both rings

	descAlign  = 16
	availAlign = 2
	usedAlign  = 4
)

// Descriptor is one guest buffer of a chain, already checked to lie inside
// guest memory.
type Descriptor struct {
	// Addr is the guest physical address of the buffer.
	Addr uint64
	// Len is its length in bytes.
	Len uint32
	// Writable is true for device-writable buffers (VIRTQ_DESC_F_WRITE).
	Writable bool
}

// Chain is one validated descriptor chain, indirect tables flattened.
// Descriptors is filled in place: the caller gives it capacity once and
// reuses the Chain, so popping allocates nothing.
type Chain struct {
	// Head is the index of the first descriptor; it identifies the chain in
	// the used ring.
	Head uint16
	// Descriptors are the chain's buffers in order, readable ones first.
	Descriptors []Descriptor
}

// QueueConfig is what a driver programs into a queue.
type QueueConfig struct {
	// Size is the number of ring entries, a power of two up to 32768.
	Size uint16
	// DescTable, AvailRing and UsedRing are the guest physical addresses of
	// the three parts of the split ring.
	DescTable, AvailRing, UsedRing uint64
	// EventIdx enables VIRTIO_RING_F_EVENT_IDX notification suppression.
	EventIdx bool
	// IndirectDesc allows VIRTQ_DESC_F_INDIRECT descriptors.
	IndirectDesc bool
	// NextAvail is the avail index to resume from (0 on a fresh queue; a
	// vhost-user frontend sets it with SET_VRING_BASE).
	NextAvail uint16
}

// Queue is the device side of one split virtqueue. It is not safe for
// concurrent use: the device serialises Pop, and serialises AddUsed and
// PublishUsed, but Pop may run concurrently with AddUsed/PublishUsed.
//
// Memory ordering. The ring indices are 16-bit fields shared with a driver
// running on other CPUs, and Go has no 16-bit atomics; guestmem provides
// LoadUint16Acquire / StoreUint16Release, which operate atomically on the
// aligned 32-bit word holding the field (see guestmem/atomic_unsafe.go).
// The queue relies on three orderings:
//
//   - Pop acquire-loads avail->idx before it reads any avail entry or
//     descriptor, so it sees every entry the driver wrote before publishing
//     that index (the driver's write barrier pairs with our acquire).
//   - PublishUsed writes used elements with ordinary stores and only then
//     release-stores used->idx, so the driver never sees an index covering an
//     element that is not yet written.
//   - Before reading used_event (PublishUsed) or avail->idx after re-arming
//     notifications (EnableNotifications), the device's own store must be
//     globally visible first: otherwise device and driver can each miss the
//     other's update and both go to sleep. That store-load ordering needs a
//     full fence; StoreUint16Release is one on amd64, and guestmem.Fence is
//     issued explicitly as well so the code does not depend on that detail.
//
// Concurrency. Pop, NextAvail, DisableNotifications and EnableNotifications
// touch only the "avail side" fields; AddUsed and PublishUsed touch only the
// "used side" fields. The two halves share only read-only configuration, and
// the guest-memory words both may write (used->flags next to used->idx) are
// updated with a compare-and-swap that changes only 16 bits.
type Queue struct {
	mem      *guestmem.Memory
	size     uint16
	mask     uint16
	eventIdx bool
	indirect bool

	descAddr, availAddr, usedAddr uint64
	// Host views of the fixed-size ring parts, resolved once by NewQueue.
	desc       []byte // the descriptor table, size*16 bytes
	availRing  []byte // avail->ring[], size*2 bytes
	usedRing   []byte // used->ring[], size*8 bytes
	usedEvent  uint64 // address of used_event (end of the avail ring)
	availEvent uint64 // address of avail_event (end of the used ring)

	// Avail side (Pop, notifications).
	_          [64]byte
	nextAvail  uint16 // next avail entry Pop reads
	availCache uint16 // last avail->idx read from the guest
	// descReads counts descriptors read by Pop (DescriptorsRead).
	descReads atomic.Uint64

	// Used side (AddUsed, PublishUsed).
	_         [64]byte
	nextUsed  uint16 // next used entry AddUsed writes
	published uint16 // used->idx last published
}

// NewQueue checks cfg against mem (alignment, ring sizes inside guest memory)
// and returns a queue ready to Pop.
func NewQueue(mem *guestmem.Memory, cfg QueueConfig) (*Queue, error) {
	if mem == nil {
		return nil, fmt.Errorf("%w: no guest memory", ErrQueueConfig)
	}
	n := uint64(cfg.Size)
	if n == 0 || n > MaxQueueSize || n&(n-1) != 0 {
		return nil, fmt.Errorf("%w: size %d is not a power of two in [1, %d]", ErrQueueConfig, cfg.Size, MaxQueueSize)
	}
	if cfg.DescTable%descAlign != 0 || cfg.AvailRing%availAlign != 0 || cfg.UsedRing%usedAlign != 0 {
		return nil, fmt.Errorf("%w: misaligned ring (desc %#x, avail %#x, used %#x)",
			ErrQueueConfig, cfg.DescTable, cfg.AvailRing, cfg.UsedRing)
	}
	q := &Queue{
		mem:       mem,
		size:      cfg.Size,
		mask:      cfg.Size - 1,
		eventIdx:  cfg.EventIdx,
		indirect:  cfg.IndirectDesc,
		descAddr:  cfg.DescTable,
		availAddr: cfg.AvailRing,
		usedAddr:  cfg.UsedRing,
		nextAvail: cfg.NextAvail,
		// The used index must continue from where the avail index resumes:
		// every chain before NextAvail has been completed.
		availCache: cfg.NextAvail,
		nextUsed:   cfg.NextAvail,
		published:  cfg.NextAvail,
		usedEvent:  cfg.AvailRing + ringHeader + 2*n,
		availEvent: cfg.UsedRing + ringHeader + usedElemSize*n,
	}
	var err error
	if q.desc, err = mem.Slice(cfg.DescTable, descSize*n); err != nil {
		return nil, fmt.Errorf("%w: descriptor table: %w", ErrQueueConfig, err)
	}
	if q.availRing, err = mem.Slice(cfg.AvailRing+ringHeader, 2*n); err != nil {
		return nil, fmt.Errorf("%w: avail ring: %w", ErrQueueConfig, err)
	}
	if q.usedRing, err = mem.Slice(cfg.UsedRing+ringHeader, usedElemSize*n); err != nil {
		return nil, fmt.Errorf("%w: used ring: %w", ErrQueueConfig, err)
	}
	// The 16-bit header fields are accessed through their aligned 32-bit
	// word; probe each one now so that later accesses cannot fail for a
	// layout reason.
	probe := []uint64{cfg.AvailRing, cfg.AvailRing + 2, cfg.UsedRing, cfg.UsedRing + 2}
	if cfg.EventIdx {
		probe = append(probe, q.usedEvent, q.availEvent)
	}
	for _, a := range probe {
		if _, err := mem.LoadUint16Acquire(a); err != nil {
			return nil, fmt.Errorf("%w: ring field at %#x: %w", ErrQueueConfig, a, err)
		}
	}
	return q, nil
}

// Size returns the number of ring entries.
func (q *Queue) Size() uint16 { return q.size }

// NextAvail returns the index of the next avail entry Pop will read (what
// a vhost-user GET_VRING_BASE answers).
func (q *Queue) NextAvail() uint16 { return q.nextAvail }

// Pop takes the next available chain into c. It returns false when the ring
// is empty. On a malformed chain it returns an error wrapping one of the
// Err* values above with c.Head set, so the device can still hand the head
// back with AddUsed; ErrAvailIndex means the ring itself is broken.
//
// cap(c.Descriptors) is the caller's room: the most buffers it serves in
// one chain (virtio-blk's seg_max+2). A chain may be longer than the queue
// as long as it fits the room, because Linux sizes indirect tables by what
// the device advertised, not by the ring it picked (see walkLimit). A chain
// with more buffers than the room fails with ErrChainTooLong; when its end
// was reached, c.Descriptors holds its first buffers and, in the last place,
// the chain's real last buffer, else c.Descriptors is empty.
//
// Pop's work is linear in the chain: it reads each descriptor at most once,
// no more than Size descriptors of the main table and walkLimit entries of
// an indirect table.
func (q *Queue) Pop(c *Chain) (bool, error) {
	c.Descriptors = c.Descriptors[:0]
	if q.nextAvail == q.availCache {
		// Acquire: avail entries and descriptors are read only after the
		// index that publishes them.
		idx, err := q.mem.LoadUint16Acquire(q.availAddr + 2)
		if err != nil {
			return false, fmt.Errorf("virtio: reading avail->idx: %w", err)
		}
		if uint16(idx-q.nextAvail) > q.size {
			return false, fmt.Errorf("%w: avail->idx %d, next expected %d, queue size %d",
				ErrAvailIndex, idx, q.nextAvail, q.size)
		}
		q.availCache = idx
		if idx == q.nextAvail {
			return false, nil
		}
	}
	i := int(q.nextAvail&q.mask) * 2
	head := binary.LittleEndian.Uint16(q.availRing[i : i+2])
	q.nextAvail++
	c.Head = head
	if head >= q.size {
		return true, fmt.Errorf("%w: head %d, queue size %d", ErrDescriptorIndex, head, q.size)
	}
	var st walkState
	err := q.walk(c, head, &st)
	q.descReads.Add(st.reads)
	return true, err
}

// DescriptorsRead returns how many descriptors Pop has read from guest
// memory since the queue was made: the host work guests caused, which tests
// bound. It is safe to call concurrently with Pop.
func (q *Queue) DescriptorsRead() uint64 { return q.descReads.Load() }

// walk flattens the chain starting at descriptor head of the main table into
// c.Descriptors.
func (q *Queue) walk(c *Chain, head uint16, st *walkState) error {
	idx := head
	// Counting hops is the loop check: a chain in the main table has at
	// most size descriptors, so one more hop came back to one it visited.
	for hops := 0; ; hops++ {
		if hops >= int(q.size) {
			return fmt.Errorf("%w: head %d, more than %d descriptors", ErrChainLoop, c.Head, q.size)
		}
		o := int(idx) * descSize
		addr, length, flags, next := readDesc(q.desc[o : o+descSize])
		st.reads++
		if flags&descFIndirect != 0 {
			if !q.indirect {
				return fmt.Errorf("%w: head %d: indirect descriptor %d without VIRTIO_F_INDIRECT_DESC", ErrIndirect, c.Head, idx)
			}
			if flags&descFNext != 0 {
				return fmt.Errorf("%w: head %d: descriptor %d has both INDIRECT and NEXT", ErrIndirect, c.Head, idx)
			}
			return q.walkIndirect(c, addr, length, st)
		}
		if err := q.add(c, addr, length, flags, st); err != nil {
			return err
		}
		if flags&descFNext == 0 {
			return st.end(c)
		}
		if next >= q.size {
			return fmt.Errorf("%w: head %d: next %d, queue size %d", ErrDescriptorIndex, c.Head, next, q.size)
		}
		idx = next
	}
}

// walkIndirect flattens the indirect table of length bytes at addr.
func (q *Queue) walkIndirect(c *Chain, addr uint64, length uint32, st *walkState) error {
	if length == 0 || length%descSize != 0 {
		return fmt.Errorf("%w: head %d: table length %d is not a positive multiple of %d", ErrIndirect, c.Head, length, descSize)
	}
	n := length / descSize
	table, err := q.mem.Slice(addr, uint64(length))
	if err != nil {
		return fmt.Errorf("%w: head %d: indirect table: %w", ErrDescriptorRange, c.Head, err)
	}
	limit := min(n, q.walkLimit(cap(c.Descriptors)))
	var idx uint32
	for hops := uint32(0); ; hops++ {
		if hops == limit && limit == n {
			return fmt.Errorf("%w: head %d: indirect table of %d descriptors loops", ErrChainLoop, c.Head, n)
		}
		if hops == limit {
			// The chain's end is out of reach, so is its status byte:
			// hand back nothing a device could mistake for it.
			c.Descriptors = c.Descriptors[:0]
			return fmt.Errorf("%w: head %d: more than %d descriptors in an indirect table of %d", ErrChainTooLong, c.Head, limit, n)
		}
		o := idx * descSize
		daddr, dlen, flags, next := readDesc(table[o : o+descSize])
		st.reads++
		if flags&descFIndirect != 0 {
			return fmt.Errorf("%w: head %d: indirect descriptor inside an indirect table", ErrIndirect, c.Head)
		}
		if err := q.add(c, daddr, dlen, flags, st); err != nil {
			return err
		}
		if flags&descFNext == 0 {
			return st.end(c)
		}
		if uint32(next) >= n {
			return fmt.Errorf("%w: head %d: indirect next %d, table of %d", ErrDescriptorIndex, c.Head, next, n)
		}
		idx = uint32(next)
	}
}

// walkFloor is the fewest entries of an indirect table Pop follows: 1024,
// the most descriptors QEMU accepts in one chain (VIRTQUEUE_MAX_SIZE) and
// so the longest chain a driver that works on QEMU sends.
const walkFloor = 1024

// walkLimit is how many entries of one indirect table Pop follows for a
// caller with room for room buffers: the largest of the queue size, the
// room and walkFloor.
//
// Virtio 1.2 (2.7.5.3.1) forbids chains longer than the queue, but Linux
// sizes a request by the device's seg_max and puts it in one indirect table
// whatever ring size it picked (it halves the ring when memory is short),
// so the room must be reachable on any ring. A chain longer than the room
// is still walked to its end, so the device can fail it in its own status
// byte: a driver that believed a larger seg_max (a frontend's, up to
// walkFloor-2) must not read a stale OK for a dropped write. Past the
// limit no driver has a reason to go; following a chain further would let
// a guest make the host read up to 2^28 descriptors per request (the table
// length is 32 bits), so Pop stops there and the chain has no status byte
// Pop can find.
func (q *Queue) walkLimit(room int) uint32 {
	return uint32(min(max(int(q.size), room, walkFloor), math.MaxUint32))
}

// MaxPopReads is the most descriptors one Pop reads from guest memory for a
// queue of size entries and a chain with room for room buffers: each
// descriptor of the main table at most once, then at most walkLimit entries
// of one indirect table. A ring pass, and so a device Reset waiting for
// one, costs at most size times that.
func MaxPopReads(size uint16, room int) uint64 {
	return uint64(size) + uint64(max(int(size), room, walkFloor))
}

// walkState is what a chain walk carries from one descriptor to the next.
type walkState struct {
	// writable is set once a device-writable buffer was seen.
	writable bool
	// seen counts the chain's buffers, kept or not.
	seen int
	// reads counts the descriptors read from guest memory.
	reads uint64
}

// end finishes a walk that reached the chain's last descriptor.
func (st *walkState) end(c *Chain) error {
	if st.seen > len(c.Descriptors) {
		return fmt.Errorf("%w: head %d: %d buffers, room for %d", ErrChainTooLong, c.Head, st.seen, cap(c.Descriptors))
	}
	return nil
}

// add validates one buffer and appends it to the chain. A chain longer than
// cap(c.Descriptors) is walked to its end anyway, its last buffer taking the
// last place, so that a caller failing it still knows where the chain ends:
// that is where a block request keeps its status byte, and a driver reading
// a stale status there would take a dropped write for a completed one.
func (q *Queue) add(c *Chain, addr uint64, length uint32, flags uint16, st *walkState) error {
	w := flags&descFWrite != 0
	if st.writable && !w {
		return fmt.Errorf("%w: head %d, buffer %d", ErrReadableAfterWritable, c.Head, st.seen)
	}
	st.writable = w
	if _, err := q.mem.Slice(addr, uint64(length)); err != nil {
		return fmt.Errorf("%w: head %d, buffer %d: %w", ErrDescriptorRange, c.Head, st.seen, err)
	}
	st.seen++
	d := Descriptor{Addr: addr, Len: length, Writable: w}
	switch {
	case len(c.Descriptors) < cap(c.Descriptors):
		c.Descriptors = append(c.Descriptors, d)
	case len(c.Descriptors) > 0:
		c.Descriptors[len(c.Descriptors)-1] = d
	default:
		return fmt.Errorf("%w: head %d: no room for buffers", ErrChainTooLong, c.Head)
	}
	return nil
}

// readDesc decodes one struct virtq_desc. Each field is read exactly once:
// the guest may rewrite the table while we look, so validation must apply to
// the values we use, not to a second read.
func readDesc(b []byte) (addr uint64, length uint32, flags, next uint16) {
	_ = b[descSize-1]
	return binary.LittleEndian.Uint64(b[0:8]), binary.LittleEndian.Uint32(b[8:12]),
		binary.LittleEndian.Uint16(b[12:14]), binary.LittleEndian.Uint16(b[14:16])
}

// AddUsed writes a used-ring element for head, with written bytes written to
// device-writable buffers. It becomes visible to the driver at PublishUsed.
func (q *Queue) AddUsed(head uint16, written uint32) error {
	if uint16(q.nextUsed-q.published) >= q.size {
		return fmt.Errorf("%w: more than %d used elements before PublishUsed", ErrQueueConfig, q.size)
	}
	o := int(q.nextUsed&q.mask) * usedElemSize
	e := q.usedRing[o : o+usedElemSize]
	binary.LittleEndian.PutUint32(e[0:4], uint32(head))
	binary.LittleEndian.PutUint32(e[4:8], written)
	q.nextUsed++
	return nil
}

// PublishUsed makes every element added since the last call visible to the
// driver (a release store of used->idx) and reports whether the driver asked
// to be interrupted for them (EVENT_IDX's used_event, or the absence of
// VIRTQ_AVAIL_F_NO_INTERRUPT).
func (q *Queue) PublishUsed() (notify bool, err error) {
	old, cur := q.published, q.nextUsed
	if old == cur {
		return false, nil
	}
	// Release: the elements written by AddUsed are visible before the index.
	if err := q.mem.StoreUint16Release(q.usedAddr+2, cur); err != nil {
		return false, fmt.Errorf("virtio: writing used->idx: %w", err)
	}
	q.published = cur
	// Store-load fence: the driver writes used_event (or avail->flags) and
	// then re-reads used->idx; we wrote used->idx and now read its flag. With
	// the fence, at least one side sees the other's write.
	guestmem.Fence()
	if q.eventIdx {
		ev, err := q.mem.LoadUint16Acquire(q.usedEvent)
		if err != nil {
			return true, fmt.Errorf("virtio: reading used_event: %w", err)
		}
		return NeedEvent(ev, cur, old), nil
	}
	flags, err := q.mem.LoadUint16Acquire(q.availAddr)
	if err != nil {
		return true, fmt.Errorf("virtio: reading avail->flags: %w", err)
	}
	return flags&availFNoInterrupt == 0, nil
}

// NeedEvent is vring_need_event: whether moving an index from old to new
// crossed the other side's event index ev, all in 16-bit wraparound
// arithmetic (virtio 1.2, 2.7.10).
func NeedEvent(ev, new, old uint16) bool {
	return new-ev-1 < new-old
}

// DisableNotifications asks the driver not to kick (used->flags
// NO_NOTIFY, or without EVENT_IDX nothing to do beyond that).
//
// With EVENT_IDX the driver ignores used->flags; leaving avail_event where it
// is suppresses kicks because the driver only kicks when its index crosses
// avail_event.
func (q *Queue) DisableNotifications() error {
	if q.eventIdx {
		return nil
	}
	if err := q.mem.StoreUint16Release(q.usedAddr, usedFNoNotify); err != nil {
		return fmt.Errorf("virtio: writing used->flags: %w", err)
	}
	return nil
}

// EnableNotifications asks the driver to kick on the next buffer (with
// EVENT_IDX: avail_event = next avail index) and reports whether buffers
// arrived meanwhile, so the caller must Pop again before sleeping.
func (q *Queue) EnableNotifications() (more bool, err error) {
	if q.eventIdx {
		err = q.mem.StoreUint16Release(q.availEvent, q.nextAvail)
	} else {
		err = q.mem.StoreUint16Release(q.usedAddr, 0)
	}
	if err != nil {
		return false, fmt.Errorf("virtio: enabling notifications: %w", err)
	}
	// Store-load fence: our re-arm must be visible before we look at
	// avail->idx, or a buffer added just now could go without a kick.
	guestmem.Fence()
	idx, err := q.mem.LoadUint16Acquire(q.availAddr + 2)
	if err != nil {
		return false, fmt.Errorf("virtio: reading avail->idx: %w", err)
	}
	return idx != q.nextAvail, nil
}
