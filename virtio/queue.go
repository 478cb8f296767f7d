package virtio

// CONTRACT SKELETON: the virtio helper replaces the bodies; the exported
// names and signatures below are what blk, virtio/pci and virtio/vhostuser
// build against. Change them only together with every caller.

import (
	"errors"

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
type Queue struct{}

// NewQueue checks cfg against mem (alignment, ring sizes inside guest memory)
// and returns a queue ready to Pop.
func NewQueue(mem *guestmem.Memory, cfg QueueConfig) (*Queue, error) {
	panic("virtio: NewQueue not implemented yet")
}

// Size returns the number of ring entries.
func (q *Queue) Size() uint16 { panic("unimplemented") }

// Pop takes the next available chain into c. It returns false when the ring
// is empty. On a malformed chain it returns an error wrapping one of the
// Err* values above with c.Head set, so the device can still hand the head
// back with AddUsed; ErrAvailIndex means the ring itself is broken.
// len(c.Descriptors) may not exceed cap(c.Descriptors) (ErrChainTooLong).
func (q *Queue) Pop(c *Chain) (bool, error) { panic("unimplemented") }

// AddUsed writes a used-ring element for head, with written bytes written to
// device-writable buffers. It becomes visible to the driver at PublishUsed.
func (q *Queue) AddUsed(head uint16, written uint32) error { panic("unimplemented") }

// PublishUsed makes every element added since the last call visible to the
// driver (a release store of used->idx) and reports whether the driver asked
// to be interrupted for them (EVENT_IDX's used_event, or the absence of
// VIRTQ_AVAIL_F_NO_INTERRUPT).
func (q *Queue) PublishUsed() (notify bool, err error) { panic("unimplemented") }

// DisableNotifications asks the driver not to kick (used->flags
// NO_NOTIFY, or without EVENT_IDX nothing to do beyond that).
func (q *Queue) DisableNotifications() error { panic("unimplemented") }

// EnableNotifications asks the driver to kick on the next buffer (with
// EVENT_IDX: avail_event = next avail index) and reports whether buffers
// arrived meanwhile, so the caller must Pop again before sleeping.
func (q *Queue) EnableNotifications() (more bool, err error) { panic("unimplemented") }

// NextAvail returns the index of the next avail entry Pop will read (what
// a vhost-user GET_VRING_BASE answers).
func (q *Queue) NextAvail() uint16 { panic("unimplemented") }
