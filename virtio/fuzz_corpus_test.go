package virtio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/flushvm/flushvm/internal/fuzzseed"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// fuzzSeed is one seed of FuzzPop: a ring shape, what the mock driver,
// laid out like fuzzShape.config, puts in it, and what the first Pop
// returns (nil: a chain).
type fuzzSeed struct {
	name  string
	shape fuzzShape
	first error
	build func(d *MockDriver) error
}

// shape builds a fuzzShape: log2 of the queue size, ring flags (0x10
// EVENT_IDX, 0x20 INDIRECT_DESC, 0x40 wraparound start), a room that must
// be one of fuzzRooms, and log2 of the memory size in units of 64 KiB.
func shape(log2 int, flags uint16, room int, mem64K int) fuzzShape {
	for i, r := range fuzzRooms {
		if r == room {
			return fuzzShape(uint16(log2) | flags | uint16(i)<<8 | uint16(mem64K)<<12)
		}
	}
	panic(fmt.Sprintf("room %d is not one of fuzzRooms", room))
}

const (
	fEventIdx = 0x10
	fIndirect = 0x20
	fWrap     = 0x40
)

// blkHeader is a virtio_blk_outhdr.
func blkHeader(typ uint32, sector uint64) []byte {
	h := make([]byte, 16)
	binary.LittleEndian.PutUint32(h, typ)
	binary.LittleEndian.PutUint64(h[8:], sector)
	return h
}

// submitAll submits rs in order.
func submitAll(d *MockDriver, rs ...MockRequest) error {
	for _, r := range rs {
		if _, err := d.Submit(r); err != nil {
			return err
		}
	}
	return nil
}

// blkRead and blkWrite are virtio_blk requests of n segments of seg bytes,
// the shape Linux gives them (indirect when the ring negotiated it and
// there is more than one descriptor).
func blkRead(sector uint64, n int, seg uint32, indirect bool) MockRequest {
	in := make([]uint32, n)
	for i := range in {
		in[i] = seg
	}
	return MockRequest{Header: blkHeader(0, sector), In: in, Status: 1, Indirect: indirect}
}

func blkWrite(sector uint64, n int, seg uint32, indirect bool) MockRequest {
	// Pop never reads the payload: zeros keep the corpus small.
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, seg)
	}
	return MockRequest{Header: blkHeader(1, sector), Out: out, Status: 1, Indirect: indirect}
}

// fuzzPopSeeds are the Linux-shaped rings FuzzPop starts from, and the
// hostile ones of issue 8. Keep each encoded seed small (a few hundred
// bytes): Go's minimiser removes every subrange of a new interesting input
// (quadratic in its length) and fuzzing shows 0 execs/s meanwhile, so long
// seeds breed minutes-long stalls. Large structures are cheap in run
// records; many distinct requests are not, so rings hold only a few.
func fuzzPopSeeds() []fuzzSeed {
	return []fuzzSeed{
		{"blk-direct-ring128", shape(7, fEventIdx, 130, 0), nil, func(d *MockDriver) error {
			return submitAll(d, blkRead(8, 1, 4096, false), blkWrite(0, 1, 512, false),
				MockRequest{Header: blkHeader(4, 0), Status: 1}, MockRequest{Header: blkHeader(8, 0), In: []uint32{20}, Status: 1})
		}},
		{"blk-indirect-ring256", shape(8, fEventIdx|fIndirect, 256, 2), nil, func(d *MockDriver) error {
			return submitAll(d, blkRead(0, 8, 4096, true), blkWrite(64, 254, 512, true),
				MockRequest{Header: blkHeader(4, 0), Status: 1}, blkRead(16, 1, 512, true))
		}},
		{"segmax-ring1", shape(0, fIndirect, 256, 2), nil, func(d *MockDriver) error {
			return submitAll(d, blkWrite(0, 254, 512, true))
		}},
		{"segmax-ring64", shape(6, fIndirect, 256, 3), nil, func(d *MockDriver) error {
			return submitAll(d, blkWrite(0, 254, 512, true), blkRead(0, 254, 512, true))
		}},
		{"segmax-ring128", shape(7, fEventIdx|fIndirect, 256, 2), nil, func(d *MockDriver) error {
			return submitAll(d, blkRead(0, 254, 512, true))
		}},
		{"over-room-ring128", shape(7, fIndirect, 256, 3), ErrChainTooLong, func(d *MockDriver) error {
			return submitAll(d, blkWrite(0, 255, 512, true), blkRead(0, 1, 512, true))
		}},
		{"busy-ring1024", shape(10, fEventIdx|fIndirect, 1026, 1), nil, func(d *MockDriver) error {
			for i := range 6 {
				if err := submitAll(d, blkRead(uint64(i)*8, 1+i%3, 256, true)); err != nil {
					return err
				}
			}
			return nil
		}},
		{"wrap-ring1024", shape(10, fEventIdx|fIndirect|fWrap, 258, 1), nil, func(d *MockDriver) error {
			for i := range 18 {
				if err := submitAll(d, blkRead(uint64(i)*8, 2, 512, i%2 == 0)); err != nil {
					return err
				}
			}
			return nil
		}},
		{"table4096-ring1024", shape(10, fIndirect, 4096, 3), nil, func(d *MockDriver) error {
			return submitAll(d, blkRead(0, 4094, 64, true), blkRead(0, 1, 512, true))
		}},
		{"table32768-hostile", shape(8, fIndirect, 256, 4), ErrChainTooLong, func(d *MockDriver) error {
			return submitHuge(d, 32768)
		}},
		{"table32768-hostile-then-read", shape(8, fEventIdx|fIndirect, 256, 4), ErrChainTooLong, func(d *MockDriver) error {
			for range 4 {
				if err := submitHuge(d, 8192); err != nil {
					return err
				}
			}
			return submitAll(d, blkRead(0, 1, 4096, true))
		}},
		{"loop-ring1024", shape(10, 0, 256, 1), ErrChainLoop, func(d *MockDriver) error {
			_, err := d.AddLoop(0, 1024)
			return err
		}},
		{"indirect-loop4096", shape(8, fIndirect, 256, 1), ErrChainTooLong, func(d *MockDriver) error {
			tab, err := d.Alloc(4096*descSize, descSize)
			if err != nil {
				return err
			}
			buf, err := d.Alloc(512, 8)
			if err != nil {
				return err
			}
			descs := make([]MockDesc, 4096)
			for i := range descs {
				descs[i] = MockDesc{Addr: buf, Len: 512, Flags: DescFlagNext, Next: uint16(i+1) % 4096}
			}
			return errors.Join(d.WriteIndirectTable(tab, descs),
				d.WriteDesc(0, MockDesc{Addr: tab, Len: 4096 * descSize, Flags: DescFlagIndirect}), d.PushAvail(0))
		}},
	}
}

// submitHuge submits a read of n descriptors whose data segments share one
// buffer, through one indirect table: what no driver sends but a hostile
// guest can.
func submitHuge(d *MockDriver, n int) error {
	hdr, err := d.Alloc(16, 8)
	if err != nil {
		return err
	}
	data, err := d.Alloc(512, 8)
	if err != nil {
		return err
	}
	status, err := d.Alloc(1, 1)
	if err != nil {
		return err
	}
	bufs := make([]MockBuffer, n)
	bufs[0] = MockBuffer{hdr, 16, false}
	for i := 1; i < n-1; i++ {
		bufs[i] = MockBuffer{data, 512, true}
	}
	bufs[n-1] = MockBuffer{status, 1, true}
	_, err = d.AddChain(bufs, true)
	return err
}

// seedImage runs s against a mock driver in FuzzPop's guest memory and
// returns the memory.
func seedImage(s fuzzSeed) ([]byte, error) {
	host := make([]byte, s.shape.memSize())
	mem, err := guestmem.New(guestmem.Region{GuestAddr: fuzzBase, Host: host})
	if err != nil {
		return nil, err
	}
	cfg := s.shape.config()
	d, err := NewMockDriver(MockConfig{Size: cfg.Size, EventIdx: cfg.EventIdx, IndirectDesc: cfg.IndirectDesc,
		StartIndex: cfg.NextAvail, Memory: mem, ArenaStart: fuzzBase, ArenaEnd: fuzzBase + uint64(len(host)), NoKickFD: true})
	if err != nil {
		return nil, err
	}
	if d.QueueConfig() != cfg {
		return nil, fmt.Errorf("mock layout %+v differs from the fuzz layout %+v", d.QueueConfig(), cfg)
	}
	if err := s.build(d); err != nil {
		return nil, err
	}
	return host, nil
}

// minRun is the shortest descriptor run encodeFuzzImage writes as a run
// record rather than raw bytes.
const minRun = 3

// descRun returns how many descriptors at the start of b follow the
// template of the first one with a constant address step, and the step.
func descRun(b []byte) (n int, step uint64) {
	if len(b) < 2*descSize || bytes.Equal(b[:descSize], make([]byte, descSize)) {
		return min(len(b)/descSize, 1), 0
	}
	addr, length, flags, next := readDesc(b)
	a1, _, _, _ := readDesc(b[descSize:])
	step = a1 - addr
	if step > 0xffff {
		return 1, 0
	}
	for n = 1; (n+1)*descSize <= len(b); n++ {
		a, l, f, x := readDesc(b[n*descSize:])
		if a != addr+uint64(n)*step || l != length || f != flags || x != next+uint16(n) || n == 0xfffe {
			break
		}
	}
	return n, step
}

// encodeFuzzImage is applyFuzzImage's inverse for memory that starts out
// zeroed: raw records for non-zero bytes, run records for descriptor runs
// (so a 32,768-entry table costs 40 bytes).
func encodeFuzzImage(mem []byte) []byte {
	var out []byte
	for i := 0; i < len(mem); {
		if i%descSize == 0 {
			if n, step := descRun(mem[i:]); n >= minRun && (n+1)*descSize <= len(mem)-i {
				out = append(out, 1, byte(i), byte(i>>8), byte(i>>16))
				out = binary.LittleEndian.AppendUint16(out, uint16(n+1))
				out = binary.LittleEndian.AppendUint16(out, uint16(step))
				out = append(out, mem[i:i+descSize]...)
				out = append(out, mem[i+n*descSize:i+(n+1)*descSize]...)
				i += (n + 1) * descSize
				continue
			}
		}
		if mem[i] == 0 {
			i++
			continue
		}
		j := rawEnd(mem, i)
		out = append(out, 0, byte(i), byte(i>>8), byte(i>>16))
		out = binary.LittleEndian.AppendUint16(out, uint16(j-i))
		out = append(out, mem[i:j]...)
		i = j
	}
	return out
}

// rawEnd is where a raw record starting at i ends: before 8 zero bytes, a
// descriptor run, the end of memory, or 65535 bytes.
func rawEnd(mem []byte, i int) int {
	j, zeros := i, 0
	for ; j < len(mem) && j-i < 0xffff; j++ {
		if j > i && j%descSize == 0 {
			if n, _ := descRun(mem[j:]); n >= minRun {
				return j - zeros
			}
		}
		if mem[j] != 0 {
			zeros = 0
			continue
		}
		if zeros++; zeros == 8 {
			return j - 7
		}
	}
	return j - zeros
}

// firstPop pops the first chain of the ring shape s lays out in host.
func firstPop(host []byte, s fuzzShape) error {
	mem, err := guestmem.New(guestmem.Region{GuestAddr: fuzzBase, Host: host})
	if err != nil {
		return err
	}
	q, err := NewQueue(mem, s.config())
	if err != nil {
		return err
	}
	ok, err := q.Pop(&Chain{Descriptors: make([]Descriptor, 0, s.room())})
	if !ok && err == nil {
		return errors.New("empty ring")
	}
	return err
}

// marshalFuzzPop writes one corpus file in `go test fuzz v1` format.
func marshalFuzzPop(shape fuzzShape, image []byte) []byte {
	return fuzzseed.Encode(uint16(shape), image)
}

// TestFuzzPopCorpus checks that testdata/fuzz/FuzzPop holds the seeds of
// fuzzPopSeeds, each of which decodes back to exactly the memory the mock
// driver built. Regenerate the corpus with
//
//	FLUSHVM_UPDATE_FUZZ_SEEDS=1 go test ./virtio/ -run TestFuzzPopCorpus
func TestFuzzPopCorpus(t *testing.T) {
	for _, s := range fuzzPopSeeds() {
		mem, err := seedImage(s)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		image := encodeFuzzImage(mem)
		back := make([]byte, len(mem))
		applyFuzzImage(back, image)
		if !bytes.Equal(back, mem) {
			t.Fatalf("%s: the encoded image does not decode to the mock's memory", s.name)
		}
		if err := firstPop(back, s.shape); !errors.Is(err, s.first) || (err == nil) != (s.first == nil) {
			t.Errorf("%s: first Pop: %v, want %v", s.name, err, s.first)
		}
		fuzzseed.Check(t, "FuzzPop", s.name, marshalFuzzPop(s.shape, image))
	}
}
