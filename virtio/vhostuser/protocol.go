package vhostuser

import (
	"encoding/binary"
	"fmt"
)

// Request codes of frontend-to-backend messages (vhost-user specification,
// "Front-end message types"). Only the ones flushvm handles, or must refuse
// by name, are listed.
const (
	reqGetFeatures         uint32 = 1
	reqSetFeatures         uint32 = 2
	reqSetOwner            uint32 = 3
	reqResetOwner          uint32 = 4
	reqSetMemTable         uint32 = 5
	reqSetLogBase          uint32 = 6
	reqSetLogFD            uint32 = 7
	reqSetVringNum         uint32 = 8
	reqSetVringAddr        uint32 = 9
	reqSetVringBase        uint32 = 10
	reqGetVringBase        uint32 = 11
	reqSetVringKick        uint32 = 12
	reqSetVringCall        uint32 = 13
	reqSetVringErr         uint32 = 14
	reqGetProtocolFeatures uint32 = 15
	reqSetProtocolFeatures uint32 = 16
	reqGetQueueNum         uint32 = 17
	reqSetVringEnable      uint32 = 18
	reqSetBackendReqFD     uint32 = 21
	reqGetConfig           uint32 = 24
	reqSetConfig           uint32 = 25
	reqGetInflightFD       uint32 = 31
	reqSetInflightFD       uint32 = 32
	reqResetDevice         uint32 = 34
	reqGetMaxMemSlots      uint32 = 36
	reqAddMemReg           uint32 = 37
	reqRemMemReg           uint32 = 38
)

// Backend-to-frontend requests, sent on the channel SET_BACKEND_REQ_FD
// hands over.
const backendReqConfigChangeMsg uint32 = 2

var reqNames = map[uint32]string{
	reqGetFeatures: "GET_FEATURES", reqSetFeatures: "SET_FEATURES",
	reqSetOwner: "SET_OWNER", reqResetOwner: "RESET_OWNER",
	reqSetMemTable: "SET_MEM_TABLE", reqSetLogBase: "SET_LOG_BASE",
	reqSetLogFD: "SET_LOG_FD", reqSetVringNum: "SET_VRING_NUM",
	reqSetVringAddr: "SET_VRING_ADDR", reqSetVringBase: "SET_VRING_BASE",
	reqGetVringBase: "GET_VRING_BASE", reqSetVringKick: "SET_VRING_KICK",
	reqSetVringCall: "SET_VRING_CALL", reqSetVringErr: "SET_VRING_ERR",
	reqGetProtocolFeatures: "GET_PROTOCOL_FEATURES",
	reqSetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	reqGetQueueNum:         "GET_QUEUE_NUM", reqSetVringEnable: "SET_VRING_ENABLE",
	reqSetBackendReqFD: "SET_BACKEND_REQ_FD", reqGetConfig: "GET_CONFIG",
	reqSetConfig: "SET_CONFIG", reqGetInflightFD: "GET_INFLIGHT_FD",
	reqSetInflightFD: "SET_INFLIGHT_FD", reqResetDevice: "RESET_DEVICE",
	reqGetMaxMemSlots: "GET_MAX_MEM_SLOTS", reqAddMemReg: "ADD_MEM_REG",
	reqRemMemReg: "REM_MEM_REG",
}

func reqName(r uint32) string {
	if n, ok := reqNames[r]; ok {
		return n
	}
	return fmt.Sprintf("request %d", r)
}

// FeatureProtocolFeatures is VHOST_USER_F_PROTOCOL_FEATURES, the virtio
// feature bit a vhost-user backend sets to say it speaks protocol feature
// negotiation. It is never passed on to the device.
const FeatureProtocolFeatures uint64 = 1 << 30

// Protocol feature bits (VHOST_USER_PROTOCOL_F_*).
const (
	ProtocolMQ         uint64 = 1 << 0
	ProtocolReplyAck   uint64 = 1 << 3
	ProtocolBackendReq uint64 = 1 << 5
	ProtocolConfig     uint64 = 1 << 9
)

// SupportedProtocolFeatures are the protocol features this backend offers.
// Not offered, on purpose: LOG_SHMFD (no dirty logging, so no live
// migration), INFLIGHT_SHMFD (see the package comment on reconnection),
// CONFIGURE_MEM_SLOTS (SET_MEM_TABLE with up to 8 regions covers QEMU's
// memory-backend layouts), HOST_NOTIFIER, PAGEFAULT, STATUS.
const SupportedProtocolFeatures = ProtocolMQ | ProtocolReplyAck | ProtocolBackendReq | ProtocolConfig

// Header flag bits.
const (
	flagVersionMask uint32 = 0x3
	flagVersion     uint32 = 0x1
	flagReply       uint32 = 1 << 2
	flagNeedReply   uint32 = 1 << 3
)

const (
	headerSize = 12
	// maxPayload bounds what a frontend can make us buffer. The largest
	// message we accept is GET/SET_CONFIG (12 + 256 bytes).
	maxPayload = 4096
	// maxRegions is VHOST_MEMORY_BASELINE_NREGIONS, the most regions one
	// SET_MEM_TABLE carries.
	maxRegions = 8
	// maxFDs is the most descriptors one message may carry.
	maxFDs = maxRegions
	// regionSize is sizeof(VhostUserMemoryRegion).
	regionSize = 32
	// configHeaderSize is the offset, size and flags words of a config
	// message; the config bytes follow.
	configHeaderSize = 12
	// maxConfigSize is VHOST_USER_MAX_CONFIG_SIZE.
	maxConfigSize = 256
	// vringFDNoFD is VHOST_USER_VRING_NOFD_MASK: the message carries no fd.
	vringFDNoFD = 1 << 8
	// vringIndexMask selects the ring index of a kick/call/err payload.
	vringIndexMask = 0xff
	// vringAddrFLog is VHOST_VRING_F_LOG in SET_VRING_ADDR's flags.
	vringAddrFLog = 1 << 0
)

// header is the fixed part of every message.
type header struct {
	Request uint32
	Flags   uint32
	Size    uint32
}

func (h header) encode(b []byte) {
	binary.LittleEndian.PutUint32(b[0:], h.Request)
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint32(b[8:], h.Size)
}

func decodeHeader(b []byte) header {
	return header{
		Request: binary.LittleEndian.Uint32(b[0:]),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
}

// message is one received frontend message. FDs are owned by whoever takes
// them out (takeFD); the rest are closed after the message is handled.
type message struct {
	header
	Payload []byte
	FDs     []int
}

func (m *message) needReply() bool { return m.Flags&flagNeedReply != 0 }

// u64 decodes an 8-byte payload.
func (m *message) u64() (uint64, error) {
	if len(m.Payload) != 8 {
		return 0, fmt.Errorf("%w: %s payload is %d bytes, want 8", ErrMalformed, reqName(m.Request), len(m.Payload))
	}
	return binary.LittleEndian.Uint64(m.Payload), nil
}

// vringState decodes struct vhost_vring_state {unsigned index, num}.
func (m *message) vringState() (index, num uint32, err error) {
	if len(m.Payload) != 8 {
		return 0, 0, fmt.Errorf("%w: %s payload is %d bytes, want 8", ErrMalformed, reqName(m.Request), len(m.Payload))
	}
	return binary.LittleEndian.Uint32(m.Payload), binary.LittleEndian.Uint32(m.Payload[4:]), nil
}

// vringAddr is struct vhost_vring_addr; addresses are frontend virtual
// addresses.
type vringAddr struct {
	Index, Flags           uint32
	Desc, Used, Avail, Log uint64
}

func (m *message) vringAddr() (vringAddr, error) {
	if len(m.Payload) != 40 {
		return vringAddr{}, fmt.Errorf("%w: SET_VRING_ADDR payload is %d bytes, want 40", ErrMalformed, len(m.Payload))
	}
	p := m.Payload
	return vringAddr{
		Index: binary.LittleEndian.Uint32(p[0:]),
		Flags: binary.LittleEndian.Uint32(p[4:]),
		Desc:  binary.LittleEndian.Uint64(p[8:]),
		Used:  binary.LittleEndian.Uint64(p[16:]),
		Avail: binary.LittleEndian.Uint64(p[24:]),
		Log:   binary.LittleEndian.Uint64(p[32:]),
	}, nil
}

// memRegion is VhostUserMemoryRegion.
type memRegion struct {
	GuestAddr, Size, UserAddr, MmapOffset uint64
}

func decodeRegion(p []byte) memRegion {
	return memRegion{
		GuestAddr:  binary.LittleEndian.Uint64(p[0:]),
		Size:       binary.LittleEndian.Uint64(p[8:]),
		UserAddr:   binary.LittleEndian.Uint64(p[16:]),
		MmapOffset: binary.LittleEndian.Uint64(p[24:]),
	}
}

// memTable decodes SET_MEM_TABLE: {u32 nregions, u32 padding,
// regions[nregions]}. Frontends send either exactly nregions entries or the
// whole 8-entry array; anything else is malformed.
func (m *message) memTable() ([]memRegion, error) {
	if len(m.Payload) < 8 {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE payload is %d bytes", ErrMalformed, len(m.Payload))
	}
	n := binary.LittleEndian.Uint32(m.Payload)
	if n == 0 || n > maxRegions {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE with %d regions (1..%d)", ErrMalformed, n, maxRegions)
	}
	if l := len(m.Payload); l != 8+int(n)*regionSize && l != 8+maxRegions*regionSize {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE payload is %d bytes for %d regions", ErrMalformed, l, n)
	}
	rs := make([]memRegion, n)
	for i := range rs {
		rs[i] = decodeRegion(m.Payload[8+i*regionSize:])
	}
	return rs, nil
}

// configMsg is VhostUserConfig: {u32 offset, u32 size, u32 flags, u8
// region[size]}.
type configMsg struct {
	Offset, Size, Flags uint32
	Data                []byte
}

func (m *message) config() (configMsg, error) {
	p := m.Payload
	if len(p) < configHeaderSize {
		return configMsg{}, fmt.Errorf("%w: %s payload is %d bytes", ErrMalformed, reqName(m.Request), len(p))
	}
	c := configMsg{
		Offset: binary.LittleEndian.Uint32(p[0:]),
		Size:   binary.LittleEndian.Uint32(p[4:]),
		Flags:  binary.LittleEndian.Uint32(p[8:]),
	}
	if c.Size > maxConfigSize || int(c.Size) != len(p)-configHeaderSize {
		return configMsg{}, fmt.Errorf("%w: %s size field %d with %d config bytes", ErrMalformed, reqName(m.Request), c.Size, len(p)-configHeaderSize)
	}
	if uint64(c.Offset)+uint64(c.Size) > maxConfigSize {
		return configMsg{}, fmt.Errorf("%w: %s range [%d, +%d) past the %d-byte config space", ErrMalformed, reqName(m.Request), c.Offset, c.Size, maxConfigSize)
	}
	c.Data = p[configHeaderSize:]
	return c, nil
}
