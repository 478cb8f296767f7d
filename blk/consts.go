package blk

// virtio-blk wire constants (virtio 1.2, section 5.2; Linux
// include/uapi/linux/virtio_blk.h).

// DeviceID is the virtio device type of a block device.
const DeviceID uint16 = 2

// Feature bits of a virtio-blk device (virtio 1.2, 5.2.3).
const (
	FeatureSizeMax     uint64 = 1 << 1
	FeatureSegMax      uint64 = 1 << 2
	FeatureGeometry    uint64 = 1 << 4
	FeatureRO          uint64 = 1 << 5
	FeatureBlkSize     uint64 = 1 << 6
	FeatureFlush       uint64 = 1 << 9
	FeatureTopology    uint64 = 1 << 10
	FeatureConfigWCE   uint64 = 1 << 11
	FeatureMQ          uint64 = 1 << 12
	FeatureDiscard     uint64 = 1 << 13
	FeatureWriteZeroes uint64 = 1 << 14
)

// Request types (virtio 1.2, 5.2.6).
const (
	TypeIn          uint32 = 0
	TypeOut         uint32 = 1
	TypeFlush       uint32 = 4
	TypeGetID       uint32 = 8
	TypeGetLifetime uint32 = 10
	TypeDiscard     uint32 = 11
	TypeWriteZeroes uint32 = 13
	TypeSecureErase uint32 = 14
)

// Request status values, the last byte of every request.
const (
	StatusOK     uint8 = 0
	StatusIOErr  uint8 = 1
	StatusUnsupp uint8 = 2
)

// SectorSize is the virtio-blk sector: capacity, request sectors and
// discard ranges all count in it, whatever blk_size says.
const SectorSize = 512

// headerSize is the size of struct virtio_blk_outhdr: le32 type, le32
// reserved (ioprio), le64 sector.
const headerSize = 16

// segmentSize is the size of struct virtio_blk_discard_write_zeroes: le64
// sector, le32 num_sectors, le32 flags.
const segmentSize = 16

// flagUnmap is VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, the only defined flag.
const flagUnmap uint32 = 1

// Limits the device advertises in its configuration space.
const (
	// MaxDiscardSectors bounds one discard segment (and one write-zeroes
	// segment): 1 GiB.
	MaxDiscardSectors = 1 << 21
	// MaxDiscardSegments bounds the segments of one discard or
	// write-zeroes request.
	MaxDiscardSegments = 32
	// DiscardAlignmentSectors is the discard granularity offered: 4 KiB,
	// the block size of the host file systems hole punching works in.
	DiscardAlignmentSectors = 8
)

// Byte offsets of struct virtio_blk_config fields (virtio 1.2, 5.2.4).
const (
	cfgCapacity            = 0  // le64
	cfgSizeMax             = 8  // le32
	cfgSegMax              = 12 // le32
	cfgCylinders           = 16 // le16
	cfgHeads               = 18 // u8
	cfgSectors             = 19 // u8
	cfgBlkSize             = 20 // le32
	cfgPhysicalBlockExp    = 24 // u8
	cfgAlignmentOffset     = 25 // u8
	cfgMinIOSize           = 26 // le16
	cfgOptIOSize           = 28 // le32
	cfgWriteback           = 32 // u8
	cfgNumQueues           = 34 // le16
	cfgMaxDiscardSectors   = 36 // le32
	cfgMaxDiscardSeg       = 40 // le32
	cfgDiscardAlignment    = 44 // le32
	cfgMaxWriteZeroesSecs  = 48 // le32
	cfgMaxWriteZeroesSeg   = 52 // le32
	cfgWriteZeroesMayUnmap = 56 // u8
	// configSize ends after unused1[3]; the secure-erase and zoned fields
	// that follow belong to features this device does not offer.
	configSize = 60
)
