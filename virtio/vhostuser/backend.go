// Package vhostuser serves a virtio.Device to another VMM (QEMU, Cloud
// Hypervisor, crosvm) over the vhost-user protocol: the frontend shares guest
// memory and the rings' eventfds over a unix socket, and the device runs in
// this process, unchanged, as it does behind virtio-pci.
//
// The package is the backend side of the protocol, written on
// golang.org/x/sys/unix alone: feature and protocol-feature negotiation,
// memory tables passed as file descriptors and mapped here, vring
// configuration, config space access, multi-queue and reply-ack. It never
// trusts the frontend: a malformed message (wrong size, missing or extra
// descriptors, overlapping or unmappable regions, rings outside memory) ends
// the session with an error that says why, after the device has been reset,
// so every request it already accepted has reached the host file.
//
// Memory regions: SET_MEM_TABLE refuses a region its file does not cover
// (touching it would raise SIGBUS), and logs regions whose memfd is not
// sealed against shrinking (F_SEAL_SHRINK, which QEMU's memfd backend sets),
// but accepts them: Cloud Hypervisor and QEMU's memory-backend-file hand over
// unsealed memfds or plain tmpfs/hugetlbfs files, legitimately. A frontend
// that then truncates the file under the mapping ends its session with
// ErrMemoryFault instead of killing the backend: guestmem's accessors turn
// the SIGBUS into an error and report it through the Memory the session
// gives the device, which wakes the session; the session handles messages
// under guestmem.Guard. A device serving vhost-user must touch the bytes
// Memory.Slice returns only under Memory.Guard, in every goroutine.
//
// Ring descriptors (kick, call, err) must be eventfds, and are made
// non-blocking: a pipe or socket the frontend keeps full would block a
// device goroutine in Notify, and with it Reset and the backend's shutdown.
//
// Reconnection: the backend does not offer INFLIGHT_SHMFD. Without it a
// frontend that crashed cannot tell a new session which requests were in
// flight, so serving it again could leave the guest waiting for completions
// forever or replay writes out of order. Serve therefore ends with the
// connection; what was completed is in the host file (the device drains its
// requests on Reset), and the caller decides whether to serve a new one.
package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/virtio"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// Options tune a session.
type Options struct {
	// Log receives one line per noteworthy event (session start and end,
	// refused requests). Nil means log.Default().
	Log *log.Logger
	// Trace logs every message received (request, flags, payload, number
	// of descriptors): for debugging a frontend.
	Trace bool
}

// vring is the backend's view of one virtqueue.
type vring struct {
	num     uint32 // 0: SET_VRING_NUM not seen
	addr    vringAddr
	addrSet bool
	base    uint16 // next avail index while the ring is not being served
	kick    int    // -1: none
	errFD   int    // -1: none
	call    *callNotifier
	started bool // a kick fd arrived and GET_VRING_BASE has not stopped it
	enabled bool
	queue   *virtio.Queue // non-nil while the device serves this ring
}

// session is one frontend connection.
type session struct {
	dev   virtio.Device
	c     *conn
	log   *log.Logger
	trace bool
	msgs  uint64

	offered     uint64
	acked       uint64
	featuresSet bool
	protoAcked  uint64

	mem     *memoryTable
	rings   []*vring
	active  bool
	activeN int

	cfg   *configNotifier
	fault *memFault

	// cfgWritten holds the bytes SET_CONFIG wrote, where cfgWrittenMask is
	// set; deactivate replays them.
	cfgWritten     [maxConfigSize]byte
	cfgWrittenMask [maxConfigSize]bool
}

// Serve runs the vhost-user protocol on the connected unix stream socket fd
// for dev until the frontend disconnects (nil) or sends something the
// backend must refuse (an error wrapping ErrMalformed, ErrBadFD,
// ErrBadMemory, ErrBadRing or ErrBadFeatures), or its memory faults
// (ErrMemoryFault). Either way the device is Reset, so no request is in
// flight, and every mapping and descriptor the session received is released
// before Serve returns. fd stays open: the caller owns it (shutting it down
// from another goroutine makes Serve return nil; a fault in a device
// goroutine shuts its reading side down to wake Serve).
func Serve(fd int, dev virtio.Device, opts Options) error {
	s := &session{dev: dev, c: newConn(fd), log: opts.Log, trace: opts.Trace,
		cfg: &configNotifier{fd: -1}, fault: &memFault{fd: fd}}
	if s.log == nil {
		s.log = log.Default()
	}
	s.offered = (dev.Features() &^ (virtio.FeatureAccessPlatform | virtio.FeatureRingPacked)) | FeatureProtocolFeatures
	s.rings = make([]*vring, dev.NumQueues())
	for i := range s.rings {
		s.rings[i] = &vring{kick: -1, errFD: -1, call: &callNotifier{fd: -1}}
	}
	defer s.teardown()
	return s.serve()
}

// serve is Serve's message loop. Activating rings reads them, so a
// frontend that shrank its memory faults here too: guestmem's accessors
// return that as an error, and each message is handled under Guard for
// whatever else (the device's Activate or Reset) touches the memory
// directly on this goroutine.
func (s *session) serve() error {
	for {
		m, err := s.c.recv()
		if ferr := s.fault.err(); ferr != nil {
			if m != nil {
				closeFDs(m.FDs)
			}
			return ferr
		}
		if errors.Is(err, errDisconnected) {
			return nil
		}
		if err != nil {
			return err
		}
		s.msgs++
		if s.trace {
			s.log.Printf("trace: %s flags %#x payload %x fds %d", reqName(m.Request), m.Flags, m.Payload, len(m.FDs))
		}
		err = s.guard(func() error { return s.handle(m) })
		if errors.Is(err, guestmem.ErrFault) && !errors.Is(err, ErrMemoryFault) {
			// Guard stopped handle on a fault, before it closed them.
			closeFDs(m.FDs)
			err = fmt.Errorf("%w: %w", ErrMemoryFault, err)
		}
		if err != nil {
			return fmt.Errorf("vhost-user: %s (message %d): %w", reqName(m.Request), s.msgs, err)
		}
	}
}

// guard runs fn under the current memory's Guard, which locates a fault in
// guest memory, or under guestmem.Guard before SET_MEM_TABLE.
func (s *session) guard(fn func() error) error {
	if s.mem == nil {
		return guestmem.Guard(fn)
	}
	return s.mem.mem.Guard(fn)
}

// memFault records the first fault on the frontend's memory, which a
// device goroutine may take while the session waits for the frontend's
// next message, and wakes the session by shutting the socket's reading
// side down.
type memFault struct {
	mu    sync.Mutex
	fd    int
	first error
	ended bool // Serve is returning: fd may be closed and reused
}

// report is the fault handler of the Memory the device is given.
func (f *memFault) report(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.first != nil || f.ended {
		return
	}
	f.first = fmt.Errorf("%w: %w", ErrMemoryFault, err)
	unix.Shutdown(f.fd, unix.SHUT_RD)
}

func (f *memFault) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.first
}

func (f *memFault) end() {
	f.mu.Lock()
	f.ended = true
	f.mu.Unlock()
}

// hasReply lists requests whose answer is a payload rather than a
// reply-ack.
var hasReply = map[uint32]bool{
	reqGetFeatures: true, reqGetProtocolFeatures: true, reqGetVringBase: true,
	reqGetQueueNum: true, reqGetConfig: true,
}

// handle runs one message and its reply-ack. A returned error ends the
// session.
func (s *session) handle(m *message) error {
	err := s.dispatch(m)
	if err == nil && len(m.FDs) > 0 {
		err = fmt.Errorf("%w: %d unexpected descriptors", ErrBadFD, len(m.FDs))
	}
	closeFDs(m.FDs)
	m.FDs = nil
	var refused *refusal
	if errors.As(err, &refused) {
		s.log.Printf("vhost-user: refusing %s: %s", reqName(m.Request), refused.why)
	}
	if m.needReply() && s.protoAcked&ProtocolReplyAck != 0 && !hasReply[m.Request] {
		var ack [8]byte
		if err != nil {
			ack[0] = 1
		}
		if serr := s.c.reply(m, ack[:]); serr != nil && err == nil {
			err = serr
		}
	}
	if refused != nil {
		return nil
	}
	return err
}

// refusal is a request the backend declines without ending the session: a
// well-formed message for a feature it did not offer and that needs no
// answer beyond a reply-ack.
type refusal struct{ why string }

func (r *refusal) Error() string { return r.why }

// takeFD removes and returns the one descriptor m must carry.
func takeFD(m *message) (int, error) {
	if len(m.FDs) != 1 {
		return -1, fmt.Errorf("%w: %d descriptors, want 1", ErrBadFD, len(m.FDs))
	}
	fd := m.FDs[0]
	m.FDs = nil
	return fd, nil
}

func (s *session) dispatch(m *message) error {
	switch m.Request {
	case reqGetFeatures:
		return s.replyU64(m, s.offered)
	case reqSetFeatures:
		return s.setFeatures(m)
	case reqGetProtocolFeatures:
		return s.replyU64(m, SupportedProtocolFeatures)
	case reqSetProtocolFeatures:
		v, err := m.u64()
		if err != nil {
			return err
		}
		if v&^SupportedProtocolFeatures != 0 {
			return fmt.Errorf("%w: protocol features %#x, offered %#x", ErrBadFeatures, v, SupportedProtocolFeatures)
		}
		s.protoAcked = v
		return nil
	case reqSetOwner:
		return m.noPayload()
	case reqResetOwner, reqResetDevice:
		if err := m.noPayloadOrU64(); err != nil {
			return err
		}
		s.resetAll()
		return nil
	case reqGetQueueNum:
		return s.replyU64(m, uint64(len(s.rings)))
	case reqSetMemTable:
		return s.setMemTable(m)
	case reqSetVringNum:
		return s.setVringNum(m)
	case reqSetVringAddr:
		return s.setVringAddr(m)
	case reqSetVringBase:
		return s.setVringBase(m)
	case reqGetVringBase:
		return s.getVringBase(m)
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		return s.setVringFD(m)
	case reqSetVringEnable:
		return s.setVringEnable(m)
	case reqGetConfig, reqSetConfig:
		return s.config(m)
	case reqSetBackendReqFD:
		return s.setBackendReqFD(m)
	case reqGetInflightFD, reqGetMaxMemSlots:
		// These expect an answer only a backend offering the matching
		// protocol feature can give.
		return fmt.Errorf("%w: %s, whose protocol feature was not offered", ErrMalformed, reqName(m.Request))
	default:
		return &refusal{why: "not supported by this backend"}
	}
}

// setFeatures is SET_FEATURES, vhost-user's FEATURES_OK: a change of
// features on a running device stops it first.
func (s *session) setFeatures(m *message) error {
	v, err := m.u64()
	if err != nil {
		return err
	}
	if v&^s.offered != 0 {
		return fmt.Errorf("%w: acked %#x, offered %#x", ErrBadFeatures, v, s.offered)
	}
	if s.active && v != s.acked {
		s.deactivate(true)
	}
	s.acked, s.featuresSet = v, true
	if n, ok := s.dev.(virtio.FeatureNegotiator); ok {
		n.NegotiateFeatures(v &^ FeatureProtocolFeatures)
	}
	return s.reevaluate()
}

// setBackendReqFD is SET_BACKEND_REQ_FD: the channel for the backend's
// own requests (configuration change notices), allowed only with the
// BACKEND_REQ protocol feature.
func (s *session) setBackendReqFD(m *message) error {
	if s.protoAcked&ProtocolBackendReq == 0 {
		return fmt.Errorf("%w: SET_BACKEND_REQ_FD without the BACKEND_REQ protocol feature", ErrMalformed)
	}
	if err := m.noPayload(); err != nil {
		return err
	}
	fd, err := takeFD(m)
	if err != nil {
		return err
	}
	s.cfg.set(fd)
	return nil
}

func (m *message) noPayload() error {
	if len(m.Payload) != 0 {
		return fmt.Errorf("%w: %d-byte payload, want none", ErrMalformed, len(m.Payload))
	}
	return nil
}

// noPayloadOrU64 accepts the two shapes frontends send RESET_OWNER in.
func (m *message) noPayloadOrU64() error {
	if len(m.Payload) != 0 && len(m.Payload) != 8 {
		return fmt.Errorf("%w: %d-byte payload", ErrMalformed, len(m.Payload))
	}
	return nil
}

func (s *session) replyU64(m *message, v uint64) error {
	if err := m.noPayloadOrU64(); err != nil {
		return err
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return s.c.reply(m, b[:])
}

func (s *session) ring(index uint32) (*vring, error) {
	if index >= uint32(len(s.rings)) {
		return nil, fmt.Errorf("%w: ring %d, the device has %d", ErrBadRing, index, len(s.rings))
	}
	return s.rings[index], nil
}

// ringState decodes a vhost_vring_state message and looks its ring up.
func (s *session) ringState(m *message) (r *vring, index, num uint32, err error) {
	if index, num, err = m.vringState(); err != nil {
		return nil, 0, 0, err
	}
	if r, err = s.ring(index); err != nil {
		return nil, 0, 0, err
	}
	return r, index, num, nil
}

// stopIfServed resets the device when ring index is among the ones it
// serves, so the ring's configuration can change under no one's feet.
func (s *session) stopIfServed(index uint32) {
	if s.active && int(index) < s.activeN {
		s.deactivate(true)
	}
}

func (s *session) setMemTable(m *message) error {
	regions, err := m.memTable()
	if err != nil {
		return err
	}
	fds := m.FDs
	m.FDs = nil
	t, err := mapMemory(regions, fds)
	if err != nil {
		return err
	}
	t.mem = t.mem.WithFaultHandler(s.fault.report)
	if n := t.unsealed(); n > 0 {
		s.log.Printf("vhost-user: %d of %d memory regions are not sealed against shrinking (F_SEAL_SHRINK); a frontend truncating one ends the session", n, len(regions))
	}
	s.deactivate(true)
	if s.mem != nil {
		s.mem.unmap()
	}
	s.mem = t
	return s.reevaluate()
}

func (s *session) setVringNum(m *message) error {
	r, idx, num, err := s.ringState(m)
	if err != nil {
		return err
	}
	// A split ring's size is a power of two (virtio 1.2, 2.7: "Queue Size
	// value is always a power of 2"), and the device's maximum bounds it,
	// as queue_size does on virtio-pci. Any smaller ring is as good as
	// the largest: what the device advertises (virtio-blk's seg_max)
	// holds on it, because virtio.Queue serves a chain longer than the
	// ring through an indirect table as long as the device has room for
	// it, which is what Linux builds on a ring it had to shrink.
	if num == 0 || num&(num-1) != 0 || num > uint32(s.dev.MaxQueueSize()) {
		return fmt.Errorf("%w: ring %d size %d (power of two up to %d)", ErrBadRing, idx, num, s.dev.MaxQueueSize())
	}
	s.stopIfServed(idx)
	r.num = num
	return s.reevaluate()
}

func (s *session) setVringAddr(m *message) error {
	a, err := m.vringAddr()
	if err != nil {
		return err
	}
	r, err := s.ring(a.Index)
	if err != nil {
		return err
	}
	if a.Flags&vringAddrFLog != 0 {
		return fmt.Errorf("%w: ring %d asks for dirty logging, which was not offered", ErrBadRing, a.Index)
	}
	s.stopIfServed(a.Index)
	r.addr, r.addrSet = a, true
	return s.reevaluate()
}

func (s *session) setVringBase(m *message) error {
	r, idx, num, err := s.ringState(m)
	if err != nil {
		return err
	}
	if num > 0xffff {
		return fmt.Errorf("%w: ring %d base %d does not fit 16 bits (packed rings were not offered)", ErrBadRing, idx, num)
	}
	s.stopIfServed(idx)
	r.base = uint16(num)
	return s.reevaluate()
}

func (s *session) getVringBase(m *message) error {
	r, idx, _, err := s.ringState(m)
	if err != nil {
		return err
	}
	// Stopping any ring stops the device: it serves its queues as one.
	s.deactivate(true)
	r.started = false
	if r.kick >= 0 {
		unix.Close(r.kick)
		r.kick = -1
	}
	var b [8]byte
	binary.LittleEndian.PutUint32(b[0:], idx)
	binary.LittleEndian.PutUint32(b[4:], uint32(r.base))
	if err := s.c.reply(m, b[:]); err != nil {
		return err
	}
	return s.reevaluate()
}

func (s *session) setVringFD(m *message) error {
	v, err := m.u64()
	if err != nil {
		return err
	}
	if v&^(vringIndexMask|vringFDNoFD) != 0 {
		return fmt.Errorf("%w: reserved bits set in %#x", ErrMalformed, v)
	}
	idx := uint32(v & vringIndexMask)
	r, err := s.ring(idx)
	if err != nil {
		return err
	}
	fd := -1
	if v&vringFDNoFD == 0 {
		if fd, err = takeFD(m); err != nil {
			return err
		}
		if err := checkEventFD(fd); err != nil {
			unix.Close(fd)
			return fmt.Errorf("ring %d: %w", idx, err)
		}
	} else if len(m.FDs) != 0 {
		return fmt.Errorf("%w: NOFD set but %d descriptors sent", ErrBadFD, len(m.FDs))
	}
	switch m.Request {
	case reqSetVringKick:
		if fd < 0 {
			return fmt.Errorf("%w: ring %d: polling mode (no kick fd) is not supported", ErrBadFD, idx)
		}
		s.stopIfServed(idx)
		if r.kick >= 0 {
			unix.Close(r.kick)
		}
		r.kick, r.started = fd, true
		return s.reevaluate()
	case reqSetVringCall:
		r.call.set(fd)
	case reqSetVringErr:
		if r.errFD >= 0 {
			unix.Close(r.errFD)
		}
		r.errFD = fd
	}
	return nil
}

// eventFDLink is what /proc/self/fd/N points to for an eventfd.
const eventFDLink = "anon_inode:[eventfd]"

// checkEventFD makes sure fd is an eventfd and makes it non-blocking.
//
// Only an eventfd is both something to wait on and something to signal
// that a frontend cannot wedge: a write to it blocks only when its counter
// would overflow, and with O_NONBLOCK fails with EAGAIN instead, when the
// frontend has a wake-up pending anyway. A pipe or socket kept full would
// block a device goroutine in Notify forever, and with it the device's
// Reset and the backend's shutdown. O_NONBLOCK belongs to the open file,
// shared with the frontend; frontends create their eventfds non-blocking
// (QEMU's event notifiers) or hand them to KVM, which ignores the flag.
func checkEventFD(fd int) error {
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return fmt.Errorf("%w: cannot tell what the ring descriptor is: %v", ErrBadFD, err)
	}
	if link != eventFDLink {
		return fmt.Errorf("%w: ring descriptor is %q, not an eventfd", ErrBadFD, link)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("%w: making the eventfd non-blocking: %v", ErrBadFD, err)
	}
	return nil
}

func (s *session) setVringEnable(m *message) error {
	if s.acked&FeatureProtocolFeatures == 0 && s.featuresSet {
		return fmt.Errorf("%w: SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES", ErrMalformed)
	}
	r, idx, num, err := s.ringState(m)
	if err != nil {
		return err
	}
	if num > 1 {
		return fmt.Errorf("%w: SET_VRING_ENABLE %d", ErrMalformed, num)
	}
	if num == 0 {
		s.stopIfServed(idx)
	}
	r.enabled = num == 1
	return s.reevaluate()
}

func (s *session) config(m *message) error {
	if s.protoAcked&ProtocolConfig == 0 {
		return fmt.Errorf("%w: %s without the CONFIG protocol feature", ErrMalformed, reqName(m.Request))
	}
	c, err := m.config()
	if err != nil {
		return err
	}
	if m.Request == reqSetConfig {
		s.dev.WriteConfig(c.Offset, c.Data)
		copy(s.cfgWritten[c.Offset:], c.Data)
		for i := range c.Data {
			s.cfgWrittenMask[int(c.Offset)+i] = true
		}
		return nil
	}
	s.dev.ReadConfig(c.Offset, c.Data)
	return s.c.reply(m, m.Payload)
}

// ringReady reports whether r has everything the device needs to serve it.
func (s *session) ringReady(r *vring) bool {
	enabled := r.enabled || s.acked&FeatureProtocolFeatures == 0
	return r.started && enabled && r.num != 0 && r.addrSet
}

// reevaluate starts the device on the rings that are ready, following the
// specification: a ring starts once its kick fd has arrived and, with
// VHOST_USER_F_PROTOCOL_FEATURES, once it is enabled. The device is
// activated on the longest run of ready rings from ring 0, and only when no
// other ring is half way (started but not yet enabled), so a frontend
// bringing up N rings gets one activation with N queues. A change to that
// set resets the device and activates it again, resuming every ring where
// it stopped.
func (s *session) reevaluate() error {
	if s.mem == nil {
		return nil
	}
	k := 0
	for k < len(s.rings) && s.ringReady(s.rings[k]) {
		k++
	}
	for _, r := range s.rings[k:] {
		if r.started && !s.ringReady(r) {
			return nil // wait for the frontend to finish
		}
	}
	if s.active && s.activeN == k {
		return nil
	}
	s.deactivate(true)
	if k == 0 {
		return nil
	}
	return s.activate(k)
}

// Ring part sizes for a queue of num entries (virtio 1.2, 2.7), with the
// event-index fields included.
func descSize(num uint32) uint64  { return 16 * uint64(num) }
func availSize(num uint32) uint64 { return 6 + 2*uint64(num) }
func usedSize(num uint32) uint64  { return 6 + 8*uint64(num) }

func (s *session) activate(k int) error {
	bindings := make([]virtio.QueueBinding, k)
	for i := 0; i < k; i++ {
		r := s.rings[i]
		desc, err := s.mem.translate(r.addr.Desc, descSize(r.num))
		if err != nil {
			return fmt.Errorf("ring %d descriptor table: %w", i, err)
		}
		avail, err := s.mem.translate(r.addr.Avail, availSize(r.num))
		if err != nil {
			return fmt.Errorf("ring %d avail ring: %w", i, err)
		}
		used, err := s.mem.translate(r.addr.Used, usedSize(r.num))
		if err != nil {
			return fmt.Errorf("ring %d used ring: %w", i, err)
		}
		q, err := virtio.NewQueue(s.mem.mem, virtio.QueueConfig{
			Size:         uint16(r.num),
			DescTable:    desc,
			AvailRing:    avail,
			UsedRing:     used,
			EventIdx:     s.acked&virtio.FeatureEventIdx != 0,
			IndirectDesc: s.acked&virtio.FeatureIndirectDesc != 0,
			NextAvail:    r.base,
		})
		if errors.Is(err, guestmem.ErrFault) {
			return fmt.Errorf("%w: ring %d: %w", ErrMemoryFault, i, err)
		}
		if err != nil {
			return fmt.Errorf("%w: ring %d: %v", ErrBadRing, i, err)
		}
		bindings[i] = virtio.QueueBinding{Queue: q, Kick: r.kick, Interrupt: r.call}
	}
	err := s.dev.Activate(virtio.Activation{
		Memory:          s.mem.mem,
		Features:        s.acked &^ FeatureProtocolFeatures,
		Queues:          bindings,
		ConfigInterrupt: s.cfg,
	})
	if err != nil {
		return fmt.Errorf("activating the device on %d rings: %w", k, err)
	}
	for i := 0; i < k; i++ {
		s.rings[i].queue = bindings[i].Queue
	}
	s.active, s.activeN = true, k
	return nil
}

// deactivate resets the device and records where each ring stopped.
//
// What the guest wrote to the device configuration (virtio-blk's writeback
// toggle) survives: vhost-user frontends cache the configuration, and QEMU
// keeps showing the guest what it last wrote across ring stops and
// restarts, even across a guest-initiated device reset. A reset made by
// this transport must therefore not quietly revert a write under the
// guest: were writeback reverted from 0 to 1, the guest would stop flushing
// a cache that loses data. So every SET_CONFIG is remembered and replayed
// after the reset, when keepConfig is set, for each byte the reset changed.
// (Only what the frontend wrote is replayed: state the device derives from
// one driver's features, such as the write-through cache it imposes on a
// driver without FLUSH, stays with that driver.)
func (s *session) deactivate(keepConfig bool) {
	if !s.active {
		return
	}
	s.dev.Reset()
	if keepConfig {
		s.replayConfig()
	}
	for _, r := range s.rings {
		if r.queue != nil {
			r.base = r.queue.NextAvail()
			r.queue = nil
		}
	}
	s.active, s.activeN = false, 0
}

// replayConfig writes back, byte by byte, what the frontend wrote to the
// configuration wherever the device no longer holds it.
func (s *session) replayConfig() {
	var cur [1]byte
	for i, w := range s.cfgWrittenMask {
		if !w {
			continue
		}
		s.dev.ReadConfig(uint32(i), cur[:])
		if cur[0] != s.cfgWritten[i] {
			s.dev.WriteConfig(uint32(i), s.cfgWritten[i:i+1])
		}
	}
}

// resetAll returns the session to its state before the first message but
// keeps the negotiated protocol features (RESET_OWNER, RESET_DEVICE).
func (s *session) resetAll() {
	s.deactivate(false)
	for _, r := range s.rings {
		r.release()
		*r = vring{kick: -1, errFD: -1, call: r.call}
	}
	if s.mem != nil {
		s.mem.unmap()
		s.mem = nil
	}
	s.acked, s.featuresSet = 0, false
	s.cfgWrittenMask = [maxConfigSize]bool{}
}

// release closes the ring's descriptors.
func (r *vring) release() {
	if r.kick >= 0 {
		unix.Close(r.kick)
	}
	if r.errFD >= 0 {
		unix.Close(r.errFD)
	}
	r.kick, r.errFD = -1, -1
	r.call.set(-1)
}

// teardown ends the session: device reset first, then descriptors and
// mappings, which the device no longer touches.
func (s *session) teardown() {
	s.deactivate(false)
	for _, r := range s.rings {
		r.release()
	}
	if s.mem != nil {
		s.mem.unmap()
		s.mem = nil
	}
	s.cfg.set(-1)
	s.fault.end()
}
