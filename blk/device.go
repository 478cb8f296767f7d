package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flushvm/flushvm/virtio"
)

// Defaults and bounds of Options.
const (
	// DefaultMaxQueueSize is the queue size offered when Options leaves it 0.
	DefaultMaxQueueSize = 256
	// MaxQueueSizeLimit is the largest queue size a device may offer.
	MaxQueueSizeLimit = 1024
	// MaxQueues bounds Options.Queues.
	MaxQueues = 64
	// DefaultWorkers is the I/O worker count when Options leaves it 0.
	// FLUSHes do not use workers (see flusher).
	DefaultWorkers = 8
	// DefaultPollInterval is the adaptive polling interval when Options
	// leaves it 0: QEMU's default poll-max-ns. Measured here between 5 and
	// 100 µs, the device's throughput and CPU cost did not depend on it
	// beyond the noise of a shared machine; without polling they were
	// clearly worse.
	DefaultPollInterval = 32 * time.Microsecond
	// maxSegments bounds seg_max: data buffers per request. With the header
	// and status a chain is at most maxSegments+2 descriptors.
	maxSegments = 254
	// maxRequestBytes bounds the data of one request, so the used length
	// (a uint32) cannot overflow.
	maxRequestBytes = 1 << 30
)

// ErrClosed reports use of a closed Device.
var ErrClosed = errors.New("blk: device closed")

// ErrActivation reports an Activation the device cannot accept.
var ErrActivation = errors.New("blk: bad activation")

// Options tune a Device beyond its Spec.
type Options struct {
	// Queues is the number of request virtqueues (1 when 0). More than one
	// offers VIRTIO_BLK_F_MQ.
	Queues int
	// MaxQueueSize is the largest queue size offered (256 when 0; a power
	// of two up to 1024).
	MaxQueueSize uint16
	// Workers is the number of goroutines executing requests, shared by all
	// queues (DefaultWorkers when 0).
	Workers int
	// PollInterval is how long a queue keeps polling its ring for new
	// requests after running dry before it sleeps until the next kick
	// (DefaultPollInterval when 0; negative disables polling).
	PollInterval time.Duration
	// Backend, when set, is used instead of opening Spec.Path (tests, and
	// layers such as the power-cut model wrapping a FileBackend). The
	// Device owns it from then on and closes it in Close, also when Open
	// fails. Spec.Path is then only reported in Stats.
	Backend Backend
	// Stopped, when set, is told of every request an error policy of
	// stop held (werror=/rerror=stop, werror=enospc), on the goroutine
	// that held it: the VMM pauses the VM. It must not call the device.
	Stopped func(ErrorStopEvent)
}

// counters are the device's statistics, updated atomically.
type counters struct {
	reads, writes, flushes, discards, writeZeroes, getIDs, unsupported atomic.Uint64
	bytesRead, bytesWritten                                            atomic.Uint64
	errors, invalid, wceChanges                                        atomic.Uint64
	hostSyncs, flushesElided, flushesMerged                            atomic.Uint64
	held, errorStops, errorsIgnored                                    atomic.Uint64
	ringRequests                                                       atomic.Uint64
	usedBatches, interrupts                                            atomic.Uint64
}

// aioState is the engine an activation runs on, and why it is not the
// one asked for.
type aioState struct {
	engine   AIOEngine
	fallback string
}

// Device is a virtio-blk device: it implements virtio.Device, so any
// transport (virtio-pci, vhost-user) can serve it. Open makes one; Close
// releases it.
type Device struct {
	spec      Spec
	pol       policy
	backend   Backend
	capacity  uint64 // sectors
	numQueues int
	maxQSize  uint16
	workers   int
	// pollInterval is Options.PollInterval, 0 when polling is off.
	pollInterval time.Duration
	features     uint64
	lim          limits
	serial       [MaxSerialLen]byte
	// serialer, when the backend has one, gives the serial instead.
	serialer serialer
	physExp  uint8 // topology: log2(physical block / 512)

	syncer *syncer
	c      counters
	// aio is the engine the spec asked for; ringIO is the backend as a
	// ringFile, nil when it cannot give requests to a ring.
	aio    AIOEngine
	ringIO ringFile
	// lastAIO is the engine of the latest activation (Stats).
	lastAIO atomic.Pointer[aioState]
	// stopped is Options.Stopped.
	stopped func(ErrorStopEvent)

	// wce is the write cache state the guest sees (config writeback).
	wce atomic.Bool
	// driverFeatures are the negotiated features (0 before negotiation).
	driverFeatures atomic.Uint64

	mu     sync.Mutex // Activate, Reset, Close
	run    *activeState
	closed bool
}

// Open opens the disk spec describes and returns its device.
func Open(spec Spec, opts Options) (*Device, error) {
	pol, err := policyFor(spec.Cache)
	if err != nil {
		if opts.Backend != nil {
			opts.Backend.Close()
		}
		return nil, err
	}
	if opts.Queues == 0 {
		opts.Queues = 1
	}
	if opts.MaxQueueSize == 0 {
		opts.MaxQueueSize = DefaultMaxQueueSize
	}
	if opts.Workers == 0 {
		opts.Workers = DefaultWorkers
	}
	switch {
	case opts.PollInterval == 0:
		opts.PollInterval = DefaultPollInterval
	case opts.PollInterval < 0:
		opts.PollInterval = 0
	}
	bad := ""
	switch {
	case opts.Queues < 1 || opts.Queues > MaxQueues:
		bad = fmt.Sprintf("queues %d (want 1..%d)", opts.Queues, MaxQueues)
	case opts.MaxQueueSize > MaxQueueSizeLimit || bits.OnesCount16(opts.MaxQueueSize) != 1 || opts.MaxQueueSize < 4:
		bad = fmt.Sprintf("queue size %d (want a power of two, 4..%d)", opts.MaxQueueSize, MaxQueueSizeLimit)
	case opts.Workers < 1:
		bad = fmt.Sprintf("workers %d", opts.Workers)
	case len(spec.Serial) > MaxSerialLen:
		bad = fmt.Sprintf("serial longer than %d bytes", MaxSerialLen)
	}
	if bad != "" {
		if opts.Backend != nil {
			opts.Backend.Close()
		}
		return nil, fmt.Errorf("blk: open %s: %w: %s", spec.Path, ErrBadSpec, bad)
	}
	b := opts.Backend
	physExp := uint8(3) // 4 KiB: page-cache and file-system granularity
	if b == nil {
		fb, err := OpenFile(spec.Path, FileOptions{ReadOnly: spec.ReadOnly, Direct: pol.DirectIO(), NoLock: spec.NoLock})
		if err != nil {
			return nil, err
		}
		b = fb
	}
	if da, ok := b.(directAligner); ok {
		if a := da.DirectAlignment(); a > SectorSize && a <= 1<<16 && a&(a-1) == 0 {
			physExp = uint8(bits.TrailingZeros64(uint64(a / SectorSize)))
		}
	}
	d := &Device{
		spec:         spec,
		pol:          pol,
		backend:      b,
		capacity:     uint64(b.Size()) / SectorSize,
		numQueues:    opts.Queues,
		maxQSize:     opts.MaxQueueSize,
		workers:      opts.Workers,
		pollInterval: opts.PollInterval,
		physExp:      physExp,
		stopped:      opts.Stopped,
	}
	d.lim = limits{capacity: d.capacity, readOnly: spec.ReadOnly}
	copy(d.serial[:], spec.Serial)
	d.serialer, _ = b.(serialer)
	d.aio = spec.AIO
	if d.aio == "" {
		d.aio = AIOThreads
	}
	d.ringIO, _ = b.(ringFile)
	d.syncer = newSyncer(b, &d.c.hostSyncs)
	d.features = FeatureSegMax | FeatureGeometry | FeatureBlkSize | FeatureFlush | FeatureTopology |
		FeatureConfigWCE | FeatureDiscard | FeatureWriteZeroes |
		virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc
	if spec.ReadOnly {
		d.features |= FeatureRO
	}
	if d.numQueues > 1 {
		d.features |= FeatureMQ
	}
	d.wce.Store(pol.InitialWCE())
	return d, nil
}

// directAligner is a Backend that knows the O_DIRECT alignment of the file
// under it (FileBackend, and FaultBackend straight over one): the device
// shows it to the guest as the physical block size.
type directAligner interface {
	DirectAlignment() int64
}

// serialer is a Backend that decides the device's serial (GET_ID) itself
// and may change it while the device runs (CrashStateBackend).
type serialer interface {
	Serial() string
}

// id returns the GET_ID answer: the backend's serial when it has one, else
// the spec's, zero-padded.
func (d *Device) id() [MaxSerialLen]byte {
	if d.serialer == nil {
		return d.serial
	}
	var id [MaxSerialLen]byte
	copy(id[:], d.serialer.Serial())
	return id
}

// segMax is the seg_max the device advertises. It holds on any ring the
// driver picks, not only on rings of MaxQueueSize entries: a request slot
// has room for segMax+2 buffers, and virtio.Queue.Pop serves a chain up to
// that room through an indirect table whatever the ring size.
func (d *Device) segMax() uint32 {
	return min(uint32(d.maxQSize)-2, maxSegments)
}

// chainCap is the longest chain a request slot holds.
func (d *Device) chainCap() int { return int(d.segMax()) + 2 }

// DeviceID implements virtio.Device: 2, a block device.
func (d *Device) DeviceID() uint16 { return DeviceID }

// Features implements virtio.Device.
func (d *Device) Features() uint64 { return d.features }

// NumQueues implements virtio.Device.
func (d *Device) NumQueues() int { return d.numQueues }

// MaxQueueSize implements virtio.Device.
func (d *Device) MaxQueueSize() uint16 { return d.maxQSize }

// ConfigSize implements virtio.Device.
func (d *Device) ConfigSize() uint32 { return configSize }

// Capacity returns the disk size in 512-byte sectors.
func (d *Device) Capacity() uint64 { return d.capacity }

// Spec returns the spec the device was opened with.
func (d *Device) Spec() Spec { return d.spec }

// Backend returns the backend the device does its I/O on.
func (d *Device) Backend() Backend { return d.backend }

// WriteCache reports the write cache state the guest currently sees.
func (d *Device) WriteCache() bool { return d.wce.Load() }

// NegotiateFeatures applies the negotiated feature set to the device
// configuration, following virtio 1.2 5.2.5.2: a driver that negotiated
// neither VIRTIO_BLK_F_FLUSH nor VIRTIO_BLK_F_CONFIG_WCE may assume a
// write-through cache, and writeback must read 0 when CONFIG_WCE was
// negotiated without FLUSH. In both cases the driver cannot send a FLUSH,
// so the device makes every write durable before completing it (except
// cache=unsafe, which never syncs). A driver that negotiated FLUSH but not
// CONFIG_WCE assumes a write-back cache and flushes, which is what the
// device gives it.
//
// Activate calls it. A transport should also call it when the driver sets
// FEATURES_OK, because drivers (Linux's among them) read writeback before
// DRIVER_OK.
func (d *Device) NegotiateFeatures(features uint64) {
	d.driverFeatures.Store(features)
	if features&FeatureFlush == 0 {
		d.wce.Store(false)
	}
}

// ReadConfig implements virtio.Device: the virtio_blk_config structure.
func (d *Device) ReadConfig(offset uint32, p []byte) {
	var cfg [configSize]byte
	le := binary.LittleEndian
	le.PutUint64(cfg[cfgCapacity:], d.capacity)
	le.PutUint32(cfg[cfgSizeMax:], 0) // VIRTIO_BLK_F_SIZE_MAX not offered
	le.PutUint32(cfg[cfgSegMax:], d.segMax())
	// A conventional CHS geometry; only HDIO_GETGEO users look at it.
	cyl := d.capacity / (16 * 63)
	if cyl > 0xffff {
		cyl = 0xffff
	}
	le.PutUint16(cfg[cfgCylinders:], uint16(cyl))
	cfg[cfgHeads] = 16
	cfg[cfgSectors] = 63
	le.PutUint32(cfg[cfgBlkSize:], SectorSize)
	cfg[cfgPhysicalBlockExp] = d.physExp
	cfg[cfgAlignmentOffset] = 0
	le.PutUint16(cfg[cfgMinIOSize:], 1<<d.physExp)
	le.PutUint32(cfg[cfgOptIOSize:], 0)
	if d.wce.Load() {
		cfg[cfgWriteback] = 1
	}
	le.PutUint16(cfg[cfgNumQueues:], uint16(d.numQueues))
	le.PutUint32(cfg[cfgMaxDiscardSectors:], MaxDiscardSectors)
	le.PutUint32(cfg[cfgMaxDiscardSeg:], MaxDiscardSegments)
	le.PutUint32(cfg[cfgDiscardAlignment:], DiscardAlignmentSectors)
	le.PutUint32(cfg[cfgMaxWriteZeroesSecs:], MaxDiscardSectors)
	le.PutUint32(cfg[cfgMaxWriteZeroesSeg:], MaxDiscardSegments)
	cfg[cfgWriteZeroesMayUnmap] = 1
	clear(p)
	if uint64(offset) < configSize {
		copy(p, cfg[offset:])
	}
}

// WriteConfig implements virtio.Device. Only writeback is writable: 0 turns
// the guest-visible write cache off (write-through semantics from the next
// write on), 1 turns it back on. Other values, and writes when the driver
// negotiated without VIRTIO_BLK_F_CONFIG_WCE, are ignored, as are attempts
// to turn the cache on when the driver cannot FLUSH.
func (d *Device) WriteConfig(offset uint32, p []byte) {
	if uint64(offset) > cfgWriteback || uint64(offset)+uint64(len(p)) <= cfgWriteback {
		return
	}
	switch p[cfgWriteback-offset] {
	case 0:
		d.SetWriteCache(false)
	case 1:
		d.SetWriteCache(true)
	}
}

// SetWriteCache turns the write cache on or off as a driver would through
// the configuration space's writeback field, and reports whether the device
// now has it so: a driver that negotiated features without CONFIG_WCE
// cannot change it, and without FLUSH cannot turn it on (a cache it could
// not flush). The guest is not notified.
func (d *Device) SetWriteCache(on bool) bool {
	f := d.driverFeatures.Load()
	if f != 0 && (f&FeatureConfigWCE == 0 || on && f&FeatureFlush == 0) {
		return d.WriteCache() == on
	}
	if d.wce.Swap(on) != on {
		d.c.wceChanges.Add(1)
	}
	return true
}

// writeThrough reports whether a write must be durable before it completes.
func (d *Device) writeThrough() bool { return d.pol.WriteThrough(d.wce.Load()) }

// Stats returns a snapshot of the device's counters.
func (d *Device) Stats() Stats {
	c := &d.c
	st := Stats{
		Path:            d.spec.Path,
		Cache:           d.pol.Mode(),
		WCE:             d.wce.Load(),
		Reads:           c.reads.Load(),
		Writes:          c.writes.Load(),
		Flushes:         c.flushes.Load(),
		Discards:        c.discards.Load(),
		WriteZeroes:     c.writeZeroes.Load(),
		GetIDs:          c.getIDs.Load(),
		Unsupported:     c.unsupported.Load(),
		BytesRead:       c.bytesRead.Load(),
		BytesWritten:    c.bytesWritten.Load(),
		Errors:          c.errors.Load(),
		InvalidRequests: c.invalid.Load(),
		WCEChanges:      c.wceChanges.Load(),
		HostSyncs:       c.hostSyncs.Load(),
		FlushesElided:   c.flushesElided.Load(),
		FlushesMerged:   c.flushesMerged.Load(),
		Held:            c.held.Load(),
		ErrorStops:      c.errorStops.Load(),
		ErrorsIgnored:   c.errorsIgnored.Load(),
		AIO:             d.aio,
		RingRequests:    c.ringRequests.Load(),
		UsedBatches:     c.usedBatches.Load(),
		Interrupts:      c.interrupts.Load(),
	}
	if a := d.lastAIO.Load(); a != nil {
		st.AIO, st.AIOFallback = a.engine, a.fallback
	}
	return st
}

// Activate implements virtio.Device: it starts one loop per queue and the
// worker pool.
func (d *Device) Activate(a virtio.Activation) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.run != nil {
		return fmt.Errorf("%w: already active (Reset first)", ErrActivation)
	}
	if a.Memory == nil {
		return fmt.Errorf("%w: no guest memory", ErrActivation)
	}
	if a.Features&^d.features != 0 {
		return fmt.Errorf("%w: features %#x not offered", ErrActivation, a.Features&^d.features)
	}
	if len(a.Queues) == 0 || len(a.Queues) > d.numQueues {
		return fmt.Errorf("%w: %d queues (device has %d)", ErrActivation, len(a.Queues), d.numQueues)
	}
	for i, qb := range a.Queues {
		if qb.Queue != nil && (qb.Interrupt == nil || qb.Kick < 0) {
			return fmt.Errorf("%w: queue %d has no kick fd or interrupt", ErrActivation, i)
		}
	}
	d.NegotiateFeatures(a.Features)
	st, err := d.start(a, true)
	if err != nil {
		return err
	}
	d.run = st
	return nil
}

// Reset implements virtio.Device: it stops the queue loops, waits for every
// request in flight to complete (and be published to its used ring), stops
// the workers, and returns the device to its state before Activate,
// including the write cache the guest sees. Counters are kept.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run != nil {
		d.run.stopAll()
		d.run = nil
	}
	d.driverFeatures.Store(0)
	d.wce.Store(d.pol.InitialWCE())
}

// Close resets the device and closes its backend. It does not sync: a
// guest that wants durability flushes; the VMM may call Sync on the
// backend itself.
func (d *Device) Close() error {
	d.Reset()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if err := d.backend.Close(); err != nil {
		return fmt.Errorf("blk: close %s: %w", d.spec.Path, err)
	}
	return nil
}

var _ virtio.Device = (*Device)(nil)
