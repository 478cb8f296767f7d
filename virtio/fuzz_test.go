package virtio

import (
	"bytes"
	"errors"
	"testing"

	"github.com/flushvm/flushvm/virtio/guestmem"
)

const (
	fuzzBase    = 0x10000
	fuzzMemSize = 0x4000
	fuzzGuard   = 256
)

// fuzzLayout is where the mock driver puts a ring of size entries when its
// arena starts at fuzzBase, so seeds built by the mock line up.
func fuzzLayout(size uint16) QueueConfig {
	n := uint64(size)
	avail := uint64(fuzzBase) + descSize*n
	used := (avail + ringHeader + 2*n + 2 + 4095) &^ 4095
	return QueueConfig{Size: size, DescTable: fuzzBase, AvailRing: avail, UsedRing: used}
}

func fuzzConfig(b byte) QueueConfig {
	cfg := fuzzLayout(uint16(1) << (b % 8))
	cfg.EventIdx = b&0x40 != 0
	cfg.IndirectDesc = b&0x80 != 0
	return cfg
}

// fuzzSeed runs build against a mock driver laid out like fuzzLayout and
// returns the resulting guest memory image.
func fuzzSeed(f *testing.F, cfgByte byte, build func(d *MockDriver) error) []byte {
	host := make([]byte, fuzzMemSize)
	mem, err := guestmem.New(guestmem.Region{GuestAddr: fuzzBase, Host: host})
	if err != nil {
		f.Fatal(err)
	}
	cfg := fuzzConfig(cfgByte)
	d, err := NewMockDriver(MockConfig{Size: cfg.Size, EventIdx: cfg.EventIdx, IndirectDesc: cfg.IndirectDesc,
		Memory: mem, ArenaStart: fuzzBase, ArenaEnd: fuzzBase + fuzzMemSize, NoKickFD: true})
	if err != nil {
		f.Fatal(err)
	}
	if d.QueueConfig() != cfg {
		f.Fatalf("mock layout %+v differs from fuzz layout %+v", d.QueueConfig(), cfg)
	}
	if err := build(d); err != nil {
		f.Fatal(err)
	}
	// The fuzz body zero-fills past the input: trailing zeros are noise
	// for the mutator.
	return bytes.TrimRight(host, "\x00")
}

var queueFaults = []error{ErrChainTooLong, ErrChainLoop, ErrDescriptorIndex, ErrDescriptorRange,
	ErrReadableAfterWritable, ErrIndirect, ErrAvailIndex}

// FuzzPop feeds Pop arbitrary guest memory holding the descriptor table,
// the avail ring and any indirect tables. Pop must never panic, must fail
// only with the queue's typed faults, must only return buffers inside guest
// memory, and must never write outside it (guard bytes around the region).
func FuzzPop(f *testing.F) {
	blk := func(indirect bool) func(d *MockDriver) error {
		return func(d *MockDriver) error {
			hdr := make([]byte, 16)
			if _, err := d.Submit(MockRequest{Header: hdr, In: []uint32{512, 512}, Status: 1, Indirect: indirect}); err != nil {
				return err
			}
			_, err := d.Submit(MockRequest{Header: hdr, Out: [][]byte{make([]byte, 100)}, Status: 1, Indirect: indirect})
			return err
		}
	}
	f.Add(byte(0x04), fuzzSeed(f, 0x04, blk(false)))
	f.Add(byte(0xc4), fuzzSeed(f, 0xc4, blk(true)))
	f.Add(byte(0x83), fuzzSeed(f, 0x83, func(d *MockDriver) error { _, err := d.AddLoop(1, 5); return err }))
	f.Add(byte(0x87), fuzzSeed(f, 0x87, func(d *MockDriver) error {
		_, err := d.AddChain([]MockBuffer{{fuzzBase + 0x3000, 16, true}, {fuzzBase + 0x3100, 16, false}}, true)
		return err
	}))
	f.Add(byte(0x02), []byte{})

	f.Fuzz(func(t *testing.T, cfgByte byte, image []byte) {
		backing := make([]byte, fuzzMemSize+2*fuzzGuard)
		for i := range backing {
			backing[i] = 0xa5
		}
		host := backing[fuzzGuard : fuzzGuard+fuzzMemSize]
		clear(host)
		copy(host, image)
		mem, err := guestmem.New(guestmem.Region{GuestAddr: fuzzBase, Host: host})
		if err != nil {
			t.Fatal(err)
		}
		cfg := fuzzConfig(cfgByte)
		q, err := NewQueue(mem, cfg)
		if err != nil {
			t.Fatalf("NewQueue(%+v): %v", cfg, err)
		}
		c := &Chain{Descriptors: make([]Descriptor, 0, int(cfgByte>>3&7)*16+1)}
		for range 2*int(cfg.Size) + 2 {
			ok, err := q.Pop(c)
			if !ok && err == nil {
				break
			}
			if err != nil {
				known := false
				for _, e := range queueFaults {
					known = known || errors.Is(err, e)
				}
				if !known {
					t.Fatalf("Pop: untyped error %v", err)
				}
				if errors.Is(err, ErrAvailIndex) {
					break
				}
			} else {
				if len(c.Descriptors) > int(cfg.Size) {
					t.Fatalf("chain of %d buffers in a queue of %d", len(c.Descriptors), cfg.Size)
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
		guard := bytes.Repeat([]byte{0xa5}, fuzzGuard)
		if !bytes.Equal(backing[:fuzzGuard], guard) || !bytes.Equal(backing[fuzzGuard+fuzzMemSize:], guard) {
			t.Fatal("memory outside the guest region was written")
		}
	})
}
