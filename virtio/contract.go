// Package virtio holds what every virtio device and transport shares: feature
// bits, the split virtqueue, descriptor chains, and the Device contract that
// transports (virtio-pci, vhost-user) drive. It knows nothing about KVM or any
// particular device type, and it never trusts the guest: every index is taken
// modulo the queue size, every chain is bounded, every address is checked.
package virtio

import "github.com/flushvm/flushvm/virtio/guestmem"

// Transport-independent feature bits (virtio 1.2, section 6).
const (
	FeatureIndirectDesc   uint64 = 1 << 28
	FeatureEventIdx       uint64 = 1 << 29
	FeatureVersion1       uint64 = 1 << 32
	FeatureAccessPlatform uint64 = 1 << 33
	FeatureRingPacked     uint64 = 1 << 34
)

// Device status bits (virtio 1.2, section 2.1).
const (
	StatusAcknowledge      uint8 = 1
	StatusDriver           uint8 = 2
	StatusDriverOK         uint8 = 4
	StatusFeaturesOK       uint8 = 8
	StatusDeviceNeedsReset uint8 = 64
	StatusFailed           uint8 = 128
)

// Notifier tells the driver that a queue (or the configuration) has news.
// Transports implement it: an irqfd/MSI-X vector or INTx line for PCI, the
// call eventfd for vhost-user.
type Notifier interface {
	Notify() error
}

// QueueBinding is one virtqueue handed to an activated device.
type QueueBinding struct {
	// Queue is the ring, configured and validated by the transport.
	Queue *Queue
	// Kick is an eventfd the driver's notifications for this queue arrive
	// on. The device reads it; the transport owns and closes it, after Reset.
	// It is non-blocking (EFD_NONBLOCK): wait for it with poll/epoll, not a
	// blocking read.
	Kick int
	// Interrupt signals used buffers on this queue to the driver.
	Interrupt Notifier
}

// Activation is everything a device needs to start serving its queues.
type Activation struct {
	// Memory is guest memory; every buffer address is resolved through it.
	Memory *guestmem.Memory
	// Features are the features the driver accepted (a subset of
	// Device.Features).
	Features uint64
	// Queues are the enabled queues, indexed by queue number. A queue the
	// driver left disabled has a zero QueueBinding (Queue nil, Kick -1).
	Queues []QueueBinding
	// ConfigInterrupt signals a configuration change to the driver.
	ConfigInterrupt Notifier
}

// Device is a virtio device as a transport sees it. Transports call its
// methods from one goroutine at a time, except ReadConfig/WriteConfig, which
// may arrive while the device is active.
type Device interface {
	// DeviceID is the virtio device type (2 for a block device).
	DeviceID() uint16
	// Features are the feature bits the device offers, transport-independent
	// ones (VERSION_1, EVENT_IDX, INDIRECT_DESC) included.
	Features() uint64
	// NumQueues is the number of virtqueues the device has.
	NumQueues() int
	// MaxQueueSize is the largest size any queue may be given.
	MaxQueueSize() uint16
	// ConfigSize is the size in bytes of the device configuration space.
	ConfigSize() uint32
	// ReadConfig fills p from the configuration space at offset. Bytes past
	// ConfigSize read as zero.
	ReadConfig(offset uint32, p []byte)
	// WriteConfig stores p into the configuration space at offset; the
	// device ignores writes to read-only fields.
	WriteConfig(offset uint32, p []byte)
	// Activate starts serving the queues with the negotiated features. It is
	// called once per driver initialisation, after DRIVER_OK.
	Activate(a Activation) error
	// Reset stops all queue processing, waits until no request is in flight
	// and no goroutine of the device touches guest memory or a kick fd, and
	// returns the device to its state before Activate.
	Reset()
}

// FeatureNegotiator is implemented by devices whose configuration depends on
// the negotiated features before DRIVER_OK (virtio-blk's writeback field,
// virtio 1.2 5.2.5.2). Transports call it when the driver's feature set is
// accepted (FEATURES_OK for PCI, SET_FEATURES for vhost-user).
type FeatureNegotiator interface {
	NegotiateFeatures(features uint64)
}
