package virtio

import (
	"errors"
	"fmt"
	"testing"
)

// maxPopReads is MaxPopReads, checked against its own queue: the walk
// limit Pop applies is what MaxPopReads promises.
func maxPopReads(size uint16, room int) uint64 {
	q := Queue{size: size}
	if got, want := uint64(size)+uint64(q.walkLimit(room)), MaxPopReads(size, room); got != want {
		panic(fmt.Sprintf("walk limit %d for size %d, room %d; MaxPopReads says %d", got, size, room, want))
	}
	return MaxPopReads(size, room)
}

// blkShape returns the buffers of a virtio_blk-style read of n descriptors
// (header, n-2 data segments, status), all data segments sharing one
// 512-byte buffer so that huge chains fit the mock's memory.
func blkShape(t testing.TB, d *MockDriver, n int) []MockBuffer {
	t.Helper()
	hdr, err := d.Alloc(16, 8)
	if err != nil {
		t.Fatal(err)
	}
	data, err := d.Alloc(512, 8)
	if err != nil {
		t.Fatal(err)
	}
	status, err := d.Alloc(1, 1)
	if err != nil {
		t.Fatal(err)
	}
	bufs := make([]MockBuffer, n)
	bufs[0] = MockBuffer{hdr, 16, false}
	for i := 1; i < n-1; i++ {
		bufs[i] = MockBuffer{data, 512, true}
	}
	bufs[n-1] = MockBuffer{status, 1, true}
	return bufs
}

// TestPopWorkIsLinear: however long or looped a chain is, one Pop reads at
// most maxPopReads descriptors (issue 8: a 32,768-entry indirect table
// used to cost 1.65 s of host CPU, every descriptor past the caller's room
// re-walking the table).
func TestPopWorkIsLinear(t *testing.T) {
	tests := []struct {
		name  string
		size  uint16
		room  int
		build func(t *testing.T, d *MockDriver) error
		want  error
	}{
		{"32768-entry indirect table", 256, 256, func(t *testing.T, d *MockDriver) error {
			_, err := d.AddChain(blkShape(t, d, 32768), true)
			return err
		}, ErrChainTooLong},
		{"32768-entry indirect table, room 1", 256, 1, func(t *testing.T, d *MockDriver) error {
			_, err := d.AddChain(blkShape(t, d, 32768), true)
			return err
		}, ErrChainTooLong},
		{"4096-entry indirect table, 1024 ring", 1024, 256, func(t *testing.T, d *MockDriver) error {
			_, err := d.AddChain(blkShape(t, d, 4096), true)
			return err
		}, ErrChainTooLong},
		{"32768-entry indirect loop", 256, 256, func(t *testing.T, d *MockDriver) error {
			tab, err := d.Alloc(32768*descSize, descSize)
			if err != nil {
				return err
			}
			descs := make([]MockDesc, 32768)
			a, _ := d.Alloc(512, 8)
			for i := range descs {
				descs[i] = MockDesc{a, 512, DescFlagNext, uint16(i+1) % 32768}
			}
			return errors.Join(d.WriteIndirectTable(tab, descs),
				d.WriteDesc(0, MockDesc{Addr: tab, Len: 32768 * descSize, Flags: DescFlagIndirect}), d.PushAvail(0))
		}, ErrChainTooLong},
		{"direct chain of the whole 1024 ring, room 1", 1024, 1, func(t *testing.T, d *MockDriver) error {
			_, err := d.AddChain(blkShape(t, d, 1024), false)
			return err
		}, ErrChainTooLong},
		{"direct loop over the whole 1024 ring, room 1", 1024, 1, func(t *testing.T, d *MockDriver) error {
			_, err := d.AddLoop(0, 1024)
			return err
		}, ErrChainLoop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, q := newPair(t, MockConfig{Size: tt.size, IndirectDesc: true, MemorySize: 8 << 20})
			if err := tt.build(t, d); err != nil {
				t.Fatalf("building the chain: %v", err)
			}
			c := newChain(tt.room)
			ok, err := q.Pop(c)
			if !ok || !errors.Is(err, tt.want) {
				t.Errorf("Pop = %v, %v; want %v", ok, err, tt.want)
			}
			if got, limit := q.DescriptorsRead(), maxPopReads(tt.size, tt.room); got > limit {
				t.Errorf("Pop read %d descriptors, want at most %d", got, limit)
			}
		})
	}
}

// TestPopHostileThenValid: four 32,768-entry tables in the avail ring cost
// bounded work, and the valid read queued behind them comes out intact
// (issue 8: it used to wait 5.8 s).
func TestPopHostileThenValid(t *testing.T) {
	const size, room = 256, 256
	d, q := newPair(t, MockConfig{Size: size, IndirectDesc: true, MemorySize: 8 << 20})
	for range 4 {
		if _, err := d.AddChain(blkShape(t, d, 32768), true); err != nil {
			t.Fatal(err)
		}
	}
	good, err := d.Submit(MockRequest{Header: make([]byte, 16), In: []uint32{4096}, Status: 1, Indirect: true})
	if err != nil {
		t.Fatal(err)
	}
	c := newChain(room)
	for i := range 4 {
		if ok, err := q.Pop(c); !ok || !errors.Is(err, ErrChainTooLong) {
			t.Fatalf("hostile chain %d: Pop = %v, %v; want ErrChainTooLong", i, ok, err)
		}
	}
	mustPop(t, q, c)
	want := []Descriptor{Descriptor(good.Header), Descriptor(good.In[0]), Descriptor(good.Status)}
	if c.Head != good.Head || len(c.Descriptors) != len(want) {
		t.Fatalf("valid read popped as head %d, %+v; want head %d, %+v", c.Head, c.Descriptors, good.Head, want)
	}
	for i := range want {
		if c.Descriptors[i] != want[i] {
			t.Fatalf("valid read popped as %+v, want %+v", c.Descriptors, want)
		}
	}
	if got, limit := q.DescriptorsRead(), 5*maxPopReads(size, room); got > limit {
		t.Errorf("5 pops read %d descriptors, want at most %d", got, limit)
	}
}

// TestPopChainLongerThanRing: Linux builds indirect tables of up to
// seg_max+2 entries whatever ring size it picked, so a chain longer than a
// small ring but within the caller's room is served (issue 8: with a 64- or
// 128-entry ring and seg_max 254 such chains failed with IOERR).
func TestPopChainLongerThanRing(t *testing.T) {
	for _, size := range []uint16{4, 64, 128} {
		d, q := newPair(t, MockConfig{Size: size, IndirectDesc: true})
		bufs := blkShape(t, d, 256)
		head, err := d.AddChain(bufs, true)
		if err != nil {
			t.Fatal(err)
		}
		c := newChain(256)
		if ok, err := q.Pop(c); !ok || err != nil {
			t.Fatalf("ring %d: Pop = %v, %v; want the chain", size, ok, err)
		}
		if c.Head != head || len(c.Descriptors) != len(bufs) {
			t.Fatalf("ring %d: head %d with %d buffers, want head %d with %d", size, c.Head, len(c.Descriptors), head, len(bufs))
		}
		for i, b := range bufs {
			if c.Descriptors[i] != Descriptor(b) {
				t.Fatalf("ring %d: buffer %d is %+v, want %+v", size, i, c.Descriptors[i], b)
			}
		}
	}
}

// BenchmarkPopHostileIndirect measures one Pop of a 32,768-entry indirect
// table (written once, made available again each round) with a 256-entry
// ring and room for 256 buffers, as blk's request slots have.
func BenchmarkPopHostileIndirect(b *testing.B) {
	d, q := newPair(b, MockConfig{Size: 256, IndirectDesc: true, MemorySize: 8 << 20, NoKickFD: true})
	bufs := blkShape(b, d, 32768)
	tab, err := d.Alloc(uint64(len(bufs))*descSize, descSize)
	if err != nil {
		b.Fatal(err)
	}
	descs := make([]MockDesc, len(bufs))
	for i, m := range bufs {
		descs[i] = MockDesc{Addr: m.Addr, Len: m.Len, Flags: bufFlags(m, i < len(bufs)-1), Next: uint16(i + 1)}
	}
	if err := errors.Join(d.WriteIndirectTable(tab, descs),
		d.WriteDesc(0, MockDesc{Addr: tab, Len: uint32(len(descs)) * descSize, Flags: DescFlagIndirect})); err != nil {
		b.Fatal(err)
	}
	c := newChain(256)
	for b.Loop() {
		if err := d.PushAvail(0); err != nil {
			b.Fatal(err)
		}
		q.Pop(c)
		q.AddUsed(c.Head, 0)
		q.PublishUsed()
		if _, _, err := d.PopUsed(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(q.DescriptorsRead())/float64(b.N), "descs/op")
}
