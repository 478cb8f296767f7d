package blk

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/flushvm/flushvm/virtio"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

const (
	testMemBase = 0x10000
	testMemSize = 1 << 20
)

// chainBuilder lays buffers out in test guest memory and builds a chain of
// them, as a driver would, but with any framing a test wants.
type chainBuilder struct {
	mem  *guestmem.Memory
	next uint64
	c    virtio.Chain
}

func newChainBuilder(t testing.TB) *chainBuilder {
	t.Helper()
	m, err := guestmem.New(guestmem.Region{GuestAddr: testMemBase, Host: make([]byte, testMemSize)})
	if err != nil {
		t.Fatal(err)
	}
	return &chainBuilder{mem: m, next: testMemBase}
}

// buf appends a descriptor of n bytes holding p (zero-padded).
func (b *chainBuilder) buf(p []byte, n int, writable bool) uint64 {
	a := b.next
	b.next += uint64(n+7) &^ 7
	b.mem.WriteAt(p, a)
	b.c.Descriptors = append(b.c.Descriptors, virtio.Descriptor{Addr: a, Len: uint32(n), Writable: writable})
	return a
}

// raw appends a descriptor as is (addresses need not be valid).
func (b *chainBuilder) raw(addr uint64, n uint32, writable bool) {
	b.c.Descriptors = append(b.c.Descriptors, virtio.Descriptor{Addr: addr, Len: n, Writable: writable})
}

func hdr(typ uint32, sector uint64) []byte {
	h := make([]byte, headerSize)
	binary.LittleEndian.PutUint32(h[0:], typ)
	binary.LittleEndian.PutUint64(h[8:], sector)
	return h
}

func seg(sector uint64, num, flags uint32) []byte {
	s := make([]byte, segmentSize)
	binary.LittleEndian.PutUint64(s[0:], sector)
	binary.LittleEndian.PutUint32(s[8:], num)
	binary.LittleEndian.PutUint32(s[12:], flags)
	return s
}

func segs(n int, sector uint64, num, flags uint32) []byte {
	var p []byte
	for range n {
		p = append(p, seg(sector, num, flags)...)
	}
	return p
}

func TestParseRequest(t *testing.T) {
	const capacity = 1000
	rw := limits{capacity: capacity}
	ro := limits{capacity: capacity, readOnly: true}
	tests := []struct {
		name     string
		lim      limits
		maxBufs  int
		build    func(b *chainBuilder)
		wantErr  error
		wantType uint32
		wantData int64
		wantSegs int
		noStatus bool
	}{
		{name: "read 4K", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeIn, 8), 16, false)
			b.buf(nil, 4096, true)
			b.buf(nil, 1, true)
		}, wantType: TypeIn, wantData: 4096},
		{name: "read, header split over two descriptors", lim: rw, build: func(b *chainBuilder) {
			h := hdr(TypeIn, 8)
			b.buf(h[:5], 5, false)
			b.buf(h[5:], 11, false)
			b.buf(nil, 512, true)
			b.buf(nil, 512, true)
			b.buf(nil, 1, true)
		}, wantType: TypeIn, wantData: 1024},
		{name: "read, status shares the data buffer", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeIn, 0), 16, false)
			b.buf(nil, 4097, true)
		}, wantType: TypeIn, wantData: 4096},
		{name: "write, header and data in one buffer", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeOut, 1), 16+512, false)
			b.buf(nil, 1, true)
		}, wantType: TypeOut, wantData: 512},
		{name: "write of the last sector", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeOut, capacity-1), 16, false)
			b.buf(nil, 512, false)
			b.buf(nil, 1, true)
		}, wantType: TypeOut, wantData: 512},
		{name: "empty chain", lim: rw, build: func(b *chainBuilder) {}, wantErr: ErrNoStatus, noStatus: true},
		{name: "no status: last descriptor readable", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeOut, 0), 16, false)
			b.buf(nil, 512, false)
		}, wantErr: ErrNoStatus, noStatus: true},
		{name: "no status: zero-length writable", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeFlush, 0), 16, false)
			b.buf(nil, 0, true)
		}, wantErr: ErrNoStatus, noStatus: true},
		{name: "status outside guest memory", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeFlush, 0), 16, false)
			b.raw(testMemBase+testMemSize, 1, true)
		}, wantErr: ErrNoStatus, noStatus: true},
		{name: "status buffer wraps", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeFlush, 0), 16, false)
			b.raw(^uint64(0)-2, 8, true)
		}, wantErr: ErrNoStatus, noStatus: true},
		{name: "short header", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeIn, 0)[:10], 10, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrShortHeader},
		{name: "header outside guest memory", lim: rw, build: func(b *chainBuilder) {
			b.raw(testMemBase-16, 16, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrBadBuffer},
		{name: "read with readable data", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeIn, 0), 16, false)
			b.buf(nil, 512, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrDataDirection},
		{name: "write with writable data", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeOut, 0), 16, false)
			b.buf(nil, 512, true)
			b.buf(nil, 1, true)
		}, wantErr: ErrDataDirection},
		{name: "readable after writable", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeIn, 0), 16, false)
			b.buf(nil, 512, true)
			b.buf(nil, 512, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrDataDirection},
		{name: "partial sector", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeIn, 0), 16, false)
			b.buf(nil, 513, true)
			b.buf(nil, 1, true)
		}, wantErr: ErrPartialSector},
		{name: "past the end", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeIn, capacity-1), 16, false)
			b.buf(nil, 1024, true)
			b.buf(nil, 1, true)
		}, wantErr: ErrSectorRange},
		{name: "sector at capacity", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeOut, capacity), 16, false)
			b.buf(nil, 512, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrSectorRange},
		{name: "sector overflow", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeIn, ^uint64(0)), 16, false)
			b.buf(nil, 512, true)
			b.buf(nil, 1, true)
		}, wantErr: ErrSectorRange},
		{name: "data outside guest memory", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeIn, 0), 16, false)
			b.raw(testMemBase+testMemSize-256, 512, true)
			b.buf(nil, 1, true)
		}, wantErr: ErrBadBuffer},
		{name: "too many buffers", lim: rw, maxBufs: 2, build: func(b *chainBuilder) {
			b.buf(hdr(TypeIn, 0), 16, false)
			b.buf(nil, 512, true)
			b.buf(nil, 512, true)
			b.buf(nil, 512, true)
			b.buf(nil, 1, true)
		}, wantErr: ErrTooManyBuffers},
		{name: "read-only: read allowed", lim: ro, build: func(b *chainBuilder) {
			b.buf(hdr(TypeIn, 0), 16, false)
			b.buf(nil, 512, true)
			b.buf(nil, 1, true)
		}, wantType: TypeIn, wantData: 512},
		{name: "read-only: write refused", lim: ro, build: func(b *chainBuilder) {
			b.buf(hdr(TypeOut, 0), 16, false)
			b.buf(nil, 512, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrReadOnly},
		{name: "read-only: discard refused", lim: ro, build: func(b *chainBuilder) {
			b.buf(hdr(TypeDiscard, 0), 16, false)
			b.buf(seg(0, 8, 0), 16, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrReadOnly},
		{name: "read-only: write zeroes refused", lim: ro, build: func(b *chainBuilder) {
			b.buf(hdr(TypeWriteZeroes, 0), 16, false)
			b.buf(seg(0, 8, 0), 16, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrReadOnly},
		{name: "read-only: flush allowed", lim: ro, build: func(b *chainBuilder) {
			b.buf(hdr(TypeFlush, 0), 16, false)
			b.buf(nil, 1, true)
		}, wantType: TypeFlush},
		{name: "flush", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeFlush, 0), 16, false)
			b.buf(nil, 1, true)
		}, wantType: TypeFlush},
		{name: "get id", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeGetID, 0), 16, false)
			b.buf(nil, 20, true)
			b.buf(nil, 1, true)
		}, wantType: TypeGetID, wantData: 20},
		{name: "get id without buffer", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeGetID, 0), 16, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrNoData},
		{name: "unknown type", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(99, 0), 16, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrUnsupported},
		{name: "get lifetime is unsupported", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeGetLifetime, 0), 16, false)
			b.buf(nil, 12, true)
			b.buf(nil, 1, true)
		}, wantErr: ErrUnsupported},
		{name: "discard", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeDiscard, 0), 16, false)
			b.buf(append(seg(0, 8, 0), seg(16, 8, 0)...), 32, false)
			b.buf(nil, 1, true)
		}, wantType: TypeDiscard, wantSegs: 2},
		{name: "discard, segment split over descriptors", lim: rw, build: func(b *chainBuilder) {
			s := seg(0, 8, 0)
			b.buf(append(hdr(TypeDiscard, 0), s[:3]...), 19, false)
			b.buf(s[3:], 13, false)
			b.buf(nil, 1, true)
		}, wantType: TypeDiscard, wantSegs: 1},
		{name: "discard with unmap", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeDiscard, 0), 16, false)
			b.buf(seg(0, 8, flagUnmap), 16, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrSegmentFlags},
		{name: "write zeroes with unmap", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeWriteZeroes, 0), 16, false)
			b.buf(seg(0, 8, flagUnmap), 16, false)
			b.buf(nil, 1, true)
		}, wantType: TypeWriteZeroes, wantSegs: 1},
		{name: "write zeroes with reserved flag", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeWriteZeroes, 0), 16, false)
			b.buf(seg(0, 8, 2), 16, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrSegmentFlags},
		{name: "discard, partial segment", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeDiscard, 0), 16, false)
			b.buf(seg(0, 8, 0), 15, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrSegments},
		{name: "discard, too many segments", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeDiscard, 0), 16, false)
			b.buf(segs(MaxDiscardSegments+1, 0, 1, 0), (MaxDiscardSegments+1)*16, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrSegments},
		{name: "discard, segment too large", lim: limits{capacity: 1 << 40}, build: func(b *chainBuilder) {
			b.buf(hdr(TypeDiscard, 0), 16, false)
			b.buf(seg(0, MaxDiscardSectors+1, 0), 16, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrSegments},
		{name: "discard, segment past the end", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeDiscard, 0), 16, false)
			b.buf(seg(capacity-4, 8, 0), 16, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrSectorRange},
		{name: "discard without segments", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeDiscard, 0), 16, false)
			b.buf(nil, 1, true)
		}, wantErr: ErrNoData},
		{name: "discard with writable data", lim: rw, build: func(b *chainBuilder) {
			b.buf(hdr(TypeDiscard, 0), 16, false)
			b.buf(seg(0, 8, 0), 16, false)
			b.buf(nil, 16, true)
			b.buf(nil, 1, true)
		}, wantErr: ErrDataDirection},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newChainBuilder(t)
			tc.build(b)
			maxBufs := tc.maxBufs
			if maxBufs == 0 {
				maxBufs = 16
			}
			r := newRequest(maxBufs)
			err := parseRequest(b.mem, &b.c, tc.lim, r)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if (r.status == nil) != tc.noStatus {
					t.Fatalf("status located = %v, want %v", r.status != nil, !tc.noStatus)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			if r.typ != tc.wantType || r.data.Len() != tc.wantData || len(r.segs) != tc.wantSegs {
				t.Fatalf("type %d data %d segs %d, want %d %d %d", r.typ, r.data.Len(), len(r.segs), tc.wantType, tc.wantData, tc.wantSegs)
			}
			if r.status == nil || len(r.status) != 1 {
				t.Fatalf("status not located")
			}
		})
	}
}

func TestStatusFor(t *testing.T) {
	tests := []struct {
		err  error
		want uint8
	}{
		{ErrUnsupported, StatusUnsupp},
		{ErrSegmentFlags, StatusUnsupp},
		{ErrSectorRange, StatusIOErr},
		{ErrReadOnly, StatusIOErr},
		{ErrPartialSector, StatusIOErr},
	}
	for _, tc := range tests {
		if got := statusFor(tc.err); got != tc.want {
			t.Errorf("statusFor(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestCheckRange(t *testing.T) {
	tests := []struct {
		sector, bytes, capacity uint64
		want                    error
	}{
		{0, 512, 1, nil},
		{0, 0, 0, nil},
		{1, 0, 1, nil},
		{2, 0, 1, ErrSectorRange},
		{0, 1024, 1, ErrSectorRange},
		{^uint64(0), 512, ^uint64(0), ErrSectorRange},
		{^uint64(0) - 1, 512, ^uint64(0), nil},
		{0, 100, 10, ErrPartialSector},
		{0, maxRequestBytes + 512, 1 << 40, ErrTooLarge},
	}
	for _, tc := range tests {
		err := checkRange(tc.sector, tc.bytes, tc.capacity)
		if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("checkRange(%d, %d, %d) = %v, want %v", tc.sector, tc.bytes, tc.capacity, err, tc.want)
		}
	}
}

// guestFaults are the errors parseRequest may return.
var guestFaults = []error{ErrNoStatus, ErrShortHeader, ErrDataDirection, ErrNoData, ErrPartialSector,
	ErrSectorRange, ErrReadOnly, ErrUnsupported, ErrSegments, ErrSegmentFlags, ErrTooManyBuffers,
	ErrTooLarge, ErrBadBuffer}

// FuzzParseRequest builds chains from the fuzz input: descriptors with
// guest-chosen addresses (inside or outside memory), lengths and
// directions over memory filled with guest-chosen bytes. Parsing must
// never panic, must return one of the typed guest faults, and on success
// must describe a request that fits the disk.
func FuzzParseRequest(f *testing.F) {
	seed := func(descs ...[4]uint16) []byte {
		var p []byte
		p = append(p, 0 /* readonly */)
		p = append(p, hdr(TypeIn, 1)...)
		for _, d := range descs {
			for _, v := range d {
				p = binary.LittleEndian.AppendUint16(p, v)
			}
		}
		return p
	}
	// {offset in memory, length, writable, unused}
	f.Add(seed([4]uint16{0, 16, 0, 0}, [4]uint16{64, 512, 1, 0}, [4]uint16{1024, 1, 1, 0}))
	f.Add(seed([4]uint16{0, 10, 0, 0}, [4]uint16{10, 6, 0, 0}, [4]uint16{2048, 1025, 1, 0}))
	f.Add(seed([4]uint16{0, 40, 0, 0}, [4]uint16{2048, 1, 1, 0}))
	f.Add(seed([4]uint16{0xfff0, 0xffff, 0, 0}, [4]uint16{1, 1, 1, 0}))
	f.Fuzz(func(t *testing.T, in []byte) {
		const memSize = 1 << 16
		host := make([]byte, memSize)
		mem, err := guestmem.New(guestmem.Region{GuestAddr: testMemBase, Host: host})
		if err != nil {
			t.Fatal(err)
		}
		if len(in) < 17 {
			return
		}
		lim := limits{capacity: 64, readOnly: in[0]&1 != 0}
		// The header bytes go to memory offset 0 and repeat through the
		// first 4 KiB so segments and data read guest-chosen values.
		for i := 0; i < 4096; i += 16 {
			copy(host[i:], in[1:17])
		}
		var c virtio.Chain
		rest := in[17:]
		for len(rest) >= 8 && len(c.Descriptors) < 24 {
			off := binary.LittleEndian.Uint16(rest[0:])
			n := binary.LittleEndian.Uint16(rest[2:])
			w := binary.LittleEndian.Uint16(rest[4:])
			addr := testMemBase + uint64(off)
			if w&2 != 0 {
				addr = uint64(off) // outside guest memory
			}
			if w&4 != 0 {
				addr = ^uint64(0) - uint64(off)
			}
			c.Descriptors = append(c.Descriptors, virtio.Descriptor{Addr: addr, Len: uint32(n), Writable: w&1 != 0})
			rest = rest[8:]
		}
		r := newRequest(8)
		err = parseRequest(mem, &c, lim, r)
		if err != nil {
			known := false
			for _, f := range guestFaults {
				if errors.Is(err, f) {
					known = true
				}
			}
			if !known {
				t.Fatalf("untyped error %v", err)
			}
			if errors.Is(err, ErrNoStatus) != (r.status == nil) {
				t.Fatalf("status %v with error %v", r.status != nil, err)
			}
			return
		}
		if r.status == nil {
			t.Fatal("success without a status byte")
		}
		switch r.typ {
		case TypeIn, TypeOut:
			if r.data.Len()%SectorSize != 0 || r.sector+uint64(r.data.Len())/SectorSize > lim.capacity {
				t.Fatalf("accepted sector %d + %d bytes on %d sectors", r.sector, r.data.Len(), lim.capacity)
			}
			if lim.readOnly && r.typ == TypeOut {
				t.Fatal("accepted a write on a read-only disk")
			}
		case TypeDiscard, TypeWriteZeroes:
			if lim.readOnly || len(r.segs) == 0 {
				t.Fatalf("accepted discard/write zeroes: readonly %v, %d segments", lim.readOnly, len(r.segs))
			}
			for _, s := range r.segs {
				if s.sector+uint64(s.num) > lim.capacity {
					t.Fatalf("accepted segment %+v", s)
				}
			}
		case TypeFlush, TypeGetID:
		default:
			t.Fatalf("accepted type %d", r.typ)
		}
		var total int64
		for _, b := range r.data.Bufs {
			total += int64(len(b))
		}
		if total != r.data.Len() {
			t.Fatalf("Vec length %d, buffers hold %d", r.data.Len(), total)
		}
	})
}
