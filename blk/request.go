package blk

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/flushvm/flushvm/virtio"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// Guest-caused request faults. parseRequest returns errors wrapping exactly
// one of them; test with errors.Is. Each completes the request with the
// status statusFor gives (IOERR or UNSUPP) when the status byte could be
// located, and is counted in invalid_requests.
var (
	// ErrNoStatus: the chain does not end with a device-writable byte, so
	// there is nowhere to put the status. The chain is returned unused.
	ErrNoStatus = errors.New("blk: request has no device-writable status byte at its end")
	// ErrShortHeader: fewer than 16 device-readable bytes for the header.
	ErrShortHeader = errors.New("blk: request header shorter than 16 bytes")
	// ErrDataDirection: data buffers of the wrong direction for the type
	// (a read with device-readable data, a write with device-writable
	// data, a device-readable buffer after a device-writable one).
	ErrDataDirection = errors.New("blk: request data buffers in the wrong direction")
	// ErrNoData: a request that needs a data buffer (GET_ID, DISCARD,
	// WRITE_ZEROES) has none.
	ErrNoData = errors.New("blk: request lacks its data buffer")
	// ErrPartialSector: the data length is not a multiple of 512.
	ErrPartialSector = errors.New("blk: request data length is not a whole number of sectors")
	// ErrSectorRange: the request reaches past the last sector.
	ErrSectorRange = errors.New("blk: request sectors beyond the disk's capacity")
	// ErrReadOnly: a write, discard or write-zeroes on a read-only disk.
	ErrReadOnly = errors.New("blk: write to a read-only disk")
	// ErrUnsupported: a request type the device does not implement
	// (completed with UNSUPP).
	ErrUnsupported = errors.New("blk: unsupported request type")
	// ErrSegments: a discard/write-zeroes payload that is not a whole
	// number of 16-byte segments, has too many segments, or a segment
	// larger than the advertised maximum.
	ErrSegments = errors.New("blk: malformed discard/write-zeroes segments")
	// ErrSegmentFlags: reserved flag bits set, or UNMAP on a discard
	// (completed with UNSUPP, as virtio 1.2 5.2.6.2 requires).
	ErrSegmentFlags = errors.New("blk: discard/write-zeroes segment flags not supported")
	// ErrTooManyBuffers: more data buffers than the device's request slot
	// holds (more than the chain length the queue allows).
	ErrTooManyBuffers = errors.New("blk: request has too many data buffers")
	// ErrTooLarge: a read or write of more than 1 GiB (the used length
	// is 32 bits wide).
	ErrTooLarge = errors.New("blk: request data larger than the device accepts")
	// ErrBadBuffer: a buffer that does not lie inside one region of guest
	// memory.
	ErrBadBuffer = errors.New("blk: request buffer outside guest memory")
)

// statusFor returns the status byte a parse error completes the request
// with.
func statusFor(err error) uint8 {
	if errors.Is(err, ErrUnsupported) || errors.Is(err, ErrSegmentFlags) {
		return StatusUnsupp
	}
	return StatusIOErr
}

// segment is one struct virtio_blk_discard_write_zeroes.
type segment struct {
	sector uint64
	num    uint32
	flags  uint32
}

// limits is what the parser checks a request against.
type limits struct {
	// capacity is the disk size in sectors.
	capacity uint64
	// readOnly refuses OUT, DISCARD and WRITE_ZEROES.
	readOnly bool
}

// request is one parsed virtio-blk request. It lives in a preallocated
// request slot and is refilled by parseRequest for every chain, so parsing
// allocates nothing (except on guest faults, for the error message).
type request struct {
	// typ is the request type from the header.
	typ uint32
	// sector is the header's sector field.
	sector uint64
	// data holds the data buffers, aliasing guest memory: the
	// device-writable ones for IN and GET_ID, the device-readable ones
	// after the header for OUT. Empty for other types.
	data *Vec
	// status is the 1-byte status buffer in guest memory, nil when the
	// chain has none.
	status []byte
	// segs are the DISCARD/WRITE_ZEROES segments.
	segs []segment

	hdr    [headerSize]byte
	segBuf [segmentSize]byte
}

// newRequest returns a request whose data Vec holds up to maxBufs buffers.
func newRequest(maxBufs int) *request {
	return &request{data: NewVec(maxBufs), segs: make([]segment, 0, MaxDiscardSegments)}
}

func (r *request) reset() {
	r.typ, r.sector = 0, 0
	r.data.Reset()
	r.status = nil
	r.segs = r.segs[:0]
}

// cursor is a position in a chain: descriptor index and offset inside it.
type cursor struct {
	di  int
	off uint64
}

// copyOut copies up to len(dst) bytes from descriptors [c.di, end) of the
// chain, starting at c, into dst, and returns the number copied.
func copyOut(mem *guestmem.Memory, ds []virtio.Descriptor, end int, c *cursor, dst []byte) (int, error) {
	n := 0
	for n < len(dst) && c.di < end {
		d := ds[c.di]
		avail := uint64(d.Len) - c.off
		take := uint64(len(dst) - n)
		if take > avail {
			take = avail
		}
		if take > 0 {
			b, err := mem.Slice(d.Addr+c.off, take)
			if err != nil {
				return n, fmt.Errorf("%w: %v", ErrBadBuffer, err)
			}
			copy(dst[n:], b)
			n += int(take)
			c.off += take
		}
		if c.off == uint64(d.Len) {
			c.di, c.off = c.di+1, 0
		}
	}
	return n, nil
}

// appendRange appends to v the bytes of descriptors [c.di, end) from c on,
// leaving out the last trim bytes of the range, and returns their count.
func appendRange(mem *guestmem.Memory, ds []virtio.Descriptor, end int, c cursor, trim uint64, v *Vec) (uint64, error) {
	var total uint64
	for i := c.di; i < end; i++ {
		start := uint64(0)
		if i == c.di {
			start = c.off
		}
		l := uint64(ds[i].Len) - start
		if i == end-1 {
			if l < trim {
				return 0, fmt.Errorf("%w: last buffer shorter than %d bytes", ErrNoStatus, trim)
			}
			l -= trim
		}
		if l == 0 {
			continue
		}
		b, err := mem.Slice(ds[i].Addr+start, l)
		if err != nil {
			return 0, fmt.Errorf("%w: %v", ErrBadBuffer, err)
		}
		if err := v.Append(b); err != nil {
			return 0, fmt.Errorf("%w: more than %d", ErrTooManyBuffers, v.Cap())
		}
		total += l
	}
	return total, nil
}

// checkRange checks that nbytes at sector are whole sectors inside a disk
// of capacity sectors, without overflowing.
func checkRange(sector, nbytes, capacity uint64) error {
	if nbytes > maxRequestBytes {
		return fmt.Errorf("%w: %d bytes", ErrTooLarge, nbytes)
	}
	if nbytes%SectorSize != 0 {
		return fmt.Errorf("%w: %d bytes", ErrPartialSector, nbytes)
	}
	n := nbytes / SectorSize
	if sector > capacity || n > capacity-sector {
		return fmt.Errorf("%w: sectors [%d, +%d) on a disk of %d", ErrSectorRange, sector, n, capacity)
	}
	return nil
}

// parseRequest decodes the chain c into r and validates it against lim. It
// knows nothing about files: it only resolves the chain's buffers in guest
// memory. On error r.status is set if the chain has a status byte, so the
// caller can still complete the request.
//
// Any framing is accepted (virtio 1.2 2.6.4): the header may share a
// descriptor with data or span several; the status is the last byte of the
// last descriptor, which must be device-writable.
func parseRequest(mem *guestmem.Memory, c *virtio.Chain, lim limits, r *request) error {
	r.reset()
	ds := c.Descriptors
	if err := parseStatus(mem, ds, r); err != nil {
		return err
	}
	// Device-readable descriptors first, then device-writable ones.
	nr := 0
	for nr < len(ds) && !ds[nr].Writable {
		nr++
	}
	for i := nr; i < len(ds); i++ {
		if !ds[i].Writable {
			return fmt.Errorf("%w: device-readable descriptor %d after a device-writable one", ErrDataDirection, i)
		}
	}

	var cur cursor
	n, err := copyOut(mem, ds, nr, &cur, r.hdr[:])
	if err != nil {
		return err
	}
	if n < headerSize {
		return fmt.Errorf("%w: %d bytes", ErrShortHeader, n)
	}
	r.typ = binary.LittleEndian.Uint32(r.hdr[0:4])
	r.sector = binary.LittleEndian.Uint64(r.hdr[8:16])
	return parseBody(mem, ds, nr, cur, lim, r)
}

// parseStatus finds the request's status byte: the last byte of the last
// descriptor, which must be device-writable.
func parseStatus(mem *guestmem.Memory, ds []virtio.Descriptor, r *request) error {
	if len(ds) == 0 {
		return fmt.Errorf("%w: empty chain", ErrNoStatus)
	}
	last := ds[len(ds)-1]
	if !last.Writable || last.Len == 0 {
		return fmt.Errorf("%w: last descriptor is not a device-writable buffer", ErrNoStatus)
	}
	end := last.Addr + uint64(last.Len)
	if end < last.Addr {
		return fmt.Errorf("%w: status buffer wraps the address space", ErrNoStatus)
	}
	st, err := mem.Slice(end-1, 1)
	if err != nil {
		return fmt.Errorf("%w: status byte outside guest memory", ErrNoStatus)
	}
	r.status = st
	return nil
}

// parseBody checks the data buffers of a request of type r.typ against
// its direction and the disk, and gathers them into r: the nr
// device-readable descriptors of ds (the header read up to cur) come
// first, then the device-writable ones, whose last byte is the status.
func parseBody(mem *guestmem.Memory, ds []virtio.Descriptor, nr int, cur cursor, lim limits, r *request) error {
	outLen := readableLeft(ds, nr, cur)
	in := cursor{di: nr}
	inLen := writableLen(ds, nr) - 1 // the status byte is not data
	switch r.typ {
	case TypeIn:
		if outLen != 0 {
			return fmt.Errorf("%w: read with %d device-readable data bytes", ErrDataDirection, outLen)
		}
		got, err := appendRange(mem, ds, len(ds), in, 1, r.data)
		if err != nil {
			return err
		}
		return checkRange(r.sector, got, lim.capacity)
	case TypeOut:
		if inLen != 0 {
			return fmt.Errorf("%w: write with %d device-writable data bytes", ErrDataDirection, inLen)
		}
		if lim.readOnly {
			return fmt.Errorf("%w: write at sector %d", ErrReadOnly, r.sector)
		}
		got, err := appendRange(mem, ds, nr, cur, 0, r.data)
		if err != nil {
			return err
		}
		return checkRange(r.sector, got, lim.capacity)
	case TypeFlush:
		// A FLUSH carries no data; extra buffers are ignored, as Linux
		// never sends any and the spec gives them no meaning.
		return nil
	case TypeGetID:
		if inLen == 0 {
			return fmt.Errorf("%w: GET_ID without a device-writable buffer", ErrNoData)
		}
		_, err := appendRange(mem, ds, len(ds), in, 1, r.data)
		return err
	case TypeDiscard, TypeWriteZeroes:
		if inLen != 0 {
			return fmt.Errorf("%w: %d device-writable data bytes", ErrDataDirection, inLen)
		}
		if lim.readOnly {
			return fmt.Errorf("%w: discard/write-zeroes at sector %d", ErrReadOnly, r.sector)
		}
		return parseSegments(mem, ds, nr, cur, outLen, r.typ, lim, r)
	default:
		return fmt.Errorf("%w: type %d", ErrUnsupported, r.typ)
	}
}

// parseSegments reads the discard/write-zeroes segments that follow the
// header.
func parseSegments(mem *guestmem.Memory, ds []virtio.Descriptor, nr int, cur cursor, outLen uint64, typ uint32, lim limits, r *request) error {
	if outLen == 0 {
		return fmt.Errorf("%w: no segments", ErrNoData)
	}
	if outLen%segmentSize != 0 || outLen/segmentSize > MaxDiscardSegments {
		return fmt.Errorf("%w: %d payload bytes (want 16 per segment, at most %d segments)", ErrSegments, outLen, MaxDiscardSegments)
	}
	for i := uint64(0); i < outLen/segmentSize; i++ {
		n, err := copyOut(mem, ds, nr, &cur, r.segBuf[:])
		if err != nil {
			return err
		}
		if n != segmentSize {
			return fmt.Errorf("%w: truncated segment", ErrSegments)
		}
		s := segment{
			sector: binary.LittleEndian.Uint64(r.segBuf[0:8]),
			num:    binary.LittleEndian.Uint32(r.segBuf[8:12]),
			flags:  binary.LittleEndian.Uint32(r.segBuf[12:16]),
		}
		if s.flags&^flagUnmap != 0 || (typ == TypeDiscard && s.flags&flagUnmap != 0) {
			return fmt.Errorf("%w: flags %#x", ErrSegmentFlags, s.flags)
		}
		if s.num > MaxDiscardSectors {
			return fmt.Errorf("%w: %d sectors in one segment (max %d)", ErrSegments, s.num, MaxDiscardSectors)
		}
		if err := checkRange(s.sector, uint64(s.num)*SectorSize, lim.capacity); err != nil {
			return err
		}
		r.segs = append(r.segs, s)
	}
	return nil
}

// readableLeft is the number of device-readable bytes from c to the end of
// the readable descriptors [0, nr).
func readableLeft(ds []virtio.Descriptor, nr int, c cursor) uint64 {
	var n uint64
	for i := c.di; i < nr; i++ {
		n += uint64(ds[i].Len)
	}
	return n - c.off
}

// writableLen is the number of device-writable bytes in ds[nr:].
func writableLen(ds []virtio.Descriptor, nr int) uint64 {
	var n uint64
	for _, d := range ds[nr:] {
		n += uint64(d.Len)
	}
	return n
}
