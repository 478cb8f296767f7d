package virtio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/flushvm/flushvm/virtio/guestmem"
)

// FuzzPop's guest: memory at fuzzBase, 64 KiB to fuzzMemSize (enough for a
// 1024-entry ring and a 32,768-entry indirect table) as the shape says,
// with guard bytes on both sides. Small inputs get small memory, which keeps
// executions, and so minimisation, cheap.
const (
	fuzzBase    = 0x10000
	fuzzMemSize = 1 << 20
	fuzzGuard   = 256
)

// fuzzRooms are the chain capacities (cap(c.Descriptors)) FuzzPop's shape
// selects: around blk's seg_max+2 for every ring size it offers, and far
// beyond the ring.
var fuzzRooms = [16]int{1, 2, 3, 4, 8, 16, 17, 64, 126, 128, 130, 256, 258, 1024, 1026, 4096}

// fuzzStart is the avail index a fuzzed queue starts from when the shape
// asks for wraparound.
const fuzzStart = 0xfff0

// fuzzShape is what FuzzPop's first argument selects: the ring, the caller
// and the memory. Bits 0-3: log2 of the queue size (mod 11, so 1 to 1024);
// bit 4: EVENT_IDX; bit 5: INDIRECT_DESC; bit 6: start at fuzzStart; bits
// 8-11: index into fuzzRooms; bits 12-14: memory of 64 KiB << n (at most
// fuzzMemSize).
type fuzzShape uint16

func (s fuzzShape) memSize() int { return min(64<<10<<(s>>12&7), fuzzMemSize) }

func (s fuzzShape) config() QueueConfig {
	size := uint16(1) << ((s & 0xf) % 11)
	n := uint64(size)
	avail := uint64(fuzzBase) + descSize*n
	used := (avail + ringHeader + 2*n + 2 + 4095) &^ 4095
	cfg := QueueConfig{Size: size, DescTable: fuzzBase, AvailRing: avail, UsedRing: used,
		EventIdx: s&0x10 != 0, IndirectDesc: s&0x20 != 0}
	if s&0x40 != 0 {
		cfg.NextAvail = fuzzStart
	}
	return cfg
}

func (s fuzzShape) room() int { return fuzzRooms[s>>8&0xf] }

// Records of FuzzPop's image argument, applied in order to zeroed guest
// memory (offsets relative to fuzzBase, wrapped into the memory, writes
// clipped at its end). A record whose tag is even is raw bytes:
//
//	tag, offset (3 bytes LE), length (2 bytes LE), bytes
//
// an odd tag is a run of count descriptors, so the fuzzer reaches tables of
// thousands of entries with 40 bytes of input:
//
//	tag, offset (3), count (2), addrStep (2), template (16), last (16)
//
// Entry i < count-1 is the template with addr + i*addrStep and next + i;
// the last entry is written as given. That is how Linux lays out an indirect
// table (next = i+1, buffers one after the other).
const (
	rawHeader = 6
	runRecord = 40
)

// applyFuzzImage writes the records of image into mem.
// A truncated last record is applied as far as it goes.
func applyFuzzImage(mem, image []byte) {
	for len(image) >= rawHeader {
		tag := image[0]
		off := int(image[1]) | int(image[2])<<8 | int(image[3])<<16
		off %= len(mem)
		count := int(binary.LittleEndian.Uint16(image[4:]))
		if tag&1 == 0 {
			image = image[rawHeader:]
			n := min(count, len(image))
			copy(mem[off:], image[:n])
			image = image[n:]
			continue
		}
		if len(image) < runRecord {
			return
		}
		step := uint64(binary.LittleEndian.Uint16(image[6:]))
		tmpl, last := image[8:24], image[24:40]
		image = image[runRecord:]
		off &^= descSize - 1
		addr, length, flags, next := readDesc(tmpl)
		for i := 0; i < count && off+descSize <= len(mem); i++ {
			if i == count-1 {
				copy(mem[off:], last)
				break
			}
			putDesc(mem[off:], addr+uint64(i)*step, length, flags, next+uint16(i))
			off += descSize
		}
	}
}

// FuzzPop feeds Pop arbitrary guest memory holding the descriptor table,
// the avail ring and any indirect tables, with rings of 1 to 1024 entries
// and callers of any room. Pop must never panic, must fail only with the
// queue's typed faults, must only return buffers inside guest memory, must
// never write outside it (guard bytes around the region), and must read at
// most MaxPopReads descriptors per call. The seed corpus in
// testdata/fuzz/FuzzPop is Linux-shaped rings built by the mock driver
// (see TestFuzzPopCorpus).
func FuzzPop(f *testing.F) {
	f.Add(uint16(0x0002), []byte{})
	f.Fuzz(func(t *testing.T, shape uint16, image []byte) {
		s := fuzzShape(shape)
		size := s.memSize()
		backing := make([]byte, size+2*fuzzGuard)
		guard := bytes.Repeat([]byte{0xa5}, fuzzGuard)
		copy(backing, guard)
		copy(backing[fuzzGuard+size:], guard)
		host := backing[fuzzGuard : fuzzGuard+size]
		applyFuzzImage(host, image)
		mem, err := guestmem.New(guestmem.Region{GuestAddr: fuzzBase, Host: host})
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.config()
		q, err := NewQueue(mem, cfg)
		if errors.Is(err, ErrQueueConfig) {
			return // a 1024-entry ring does not fit 64 KiB
		}
		if err != nil {
			t.Fatalf("NewQueue(%+v): %v", cfg, err)
		}
		c := &Chain{Descriptors: make([]Descriptor, 0, s.room())}
		for range 2*int(cfg.Size) + 2 {
			before := q.DescriptorsRead()
			ok, err := q.Pop(c)
			if n, limit := q.DescriptorsRead()-before, MaxPopReads(cfg.Size, s.room()); n > limit {
				t.Fatalf("Pop read %d descriptors, at most %d allowed", n, limit)
			}
			if !ok && err == nil {
				break
			}
			if err != nil && !checkPopFault(t, err) {
				break
			}
			if err == nil {
				checkChain(t, mem, c)
			}
			if err := q.AddUsed(c.Head, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := q.PublishUsed(); err != nil {
				t.Fatal(err)
			}
			if _, err := q.EnableNotifications(); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(backing[:fuzzGuard], guard) || !bytes.Equal(backing[fuzzGuard+size:], guard) {
			t.Fatal("memory outside the guest region was written")
		}
	})
}

var queueFaults = []error{ErrChainTooLong, ErrChainLoop, ErrDescriptorIndex, ErrDescriptorRange,
	ErrReadableAfterWritable, ErrIndirect, ErrAvailIndex}

// checkPopFault fails t unless err is one of the queue's typed faults, and
// reports whether the ring can still be popped.
func checkPopFault(t *testing.T, err error) bool {
	t.Helper()
	for _, e := range queueFaults {
		if errors.Is(err, e) {
			return !errors.Is(err, ErrAvailIndex)
		}
	}
	t.Fatalf("Pop: untyped error %v", err)
	return false
}

// checkChain fails t unless c is a chain Pop may return: not empty, inside
// guest memory, readable buffers first.
func checkChain(t *testing.T, mem *guestmem.Memory, c *Chain) {
	t.Helper()
	if len(c.Descriptors) == 0 {
		t.Fatalf("head %d popped as an empty chain", c.Head)
	}
	writable := false
	for _, d := range c.Descriptors {
		if _, err := mem.Slice(d.Addr, uint64(d.Len)); err != nil {
			t.Fatalf("Pop returned a buffer outside guest memory: %+v", d)
		}
		if writable && !d.Writable {
			t.Fatalf("readable buffer after a writable one: %+v", c.Descriptors)
		}
		writable = d.Writable
	}
}
