package virtio

import (
	"errors"
	"runtime"
	"slices"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func newPair(t testing.TB, cfg MockConfig) (*MockDriver, *Queue) {
	t.Helper()
	d, err := NewMockDriver(cfg)
	if err != nil {
		t.Fatalf("NewMockDriver: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	q, err := d.NewQueue()
	if err != nil {
		t.Fatalf("NewQueue: %v", err)
	}
	return d, q
}

func newChain(n int) *Chain { return &Chain{Descriptors: make([]Descriptor, 0, n)} }

func mustPop(t *testing.T, q *Queue, c *Chain) {
	t.Helper()
	ok, err := q.Pop(c)
	if err != nil || !ok {
		t.Fatalf("Pop = %v, %v; want a chain", ok, err)
	}
}

// A virtio_blk request, direct and indirect, comes out of Pop exactly as it
// was built and goes back through the used ring.
func TestPopBlkRequest(t *testing.T) {
	for _, indirect := range []bool{false, true} {
		d, q := newPair(t, MockConfig{Size: 16, IndirectDesc: true})
		hdr := []byte{1, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0}
		sub, err := d.Submit(MockRequest{Header: hdr, Out: [][]byte{make([]byte, 512), make([]byte, 4096)}, Status: 1, Indirect: indirect})
		if err != nil {
			t.Fatal(err)
		}
		rd, err := d.Submit(MockRequest{Header: hdr, In: []uint32{1024, 3072}, Status: 1, Indirect: indirect})
		if err != nil {
			t.Fatal(err)
		}
		if kicked, err := d.Kick(); err != nil || !kicked {
			t.Fatalf("Kick = %v, %v", kicked, err)
		}
		var buf [8]byte
		if _, err := unix.Read(d.KickFD(), buf[:]); err != nil || buf[0] != 1 {
			t.Fatalf("kick eventfd read %v, %v", buf, err)
		}
		c := newChain(16)
		for _, want := range []MockSubmission{sub, rd} {
			mustPop(t, q, c)
			all := append(append(append([]MockBuffer{want.Header}, want.Out...), want.In...), want.Status)
			if c.Head != want.Head || len(c.Descriptors) != len(all) {
				t.Fatalf("indirect=%v: chain head %d with %d buffers, want %d with %d", indirect, c.Head, len(c.Descriptors), want.Head, len(all))
			}
			for i, b := range all {
				if got := c.Descriptors[i]; got != Descriptor(b) {
					t.Errorf("indirect=%v: buffer %d = %+v, want %+v", indirect, i, got, b)
				}
			}
			if err := q.AddUsed(c.Head, 1); err != nil {
				t.Fatal(err)
			}
		}
		if ok, err := q.Pop(c); ok || err != nil {
			t.Fatalf("Pop on empty ring = %v, %v", ok, err)
		}
		if notify, err := q.PublishUsed(); err != nil || !notify {
			t.Fatalf("PublishUsed = %v, %v", notify, err)
		}
		for _, want := range []uint16{sub.Head, rd.Head} {
			u, ok, err := d.PopUsed()
			if err != nil || !ok || u.Head != want || u.Len != 1 {
				t.Fatalf("PopUsed = %+v, %v, %v; want head %d", u, ok, err, want)
			}
		}
		if d.NumFree() != 16 {
			t.Fatalf("%d descriptors free after completion, want 16", d.NumFree())
		}
	}
}

// Every malformed ring gives its own typed error, with c.Head set, and the
// queue keeps working afterwards.
func TestPopErrors(t *testing.T) {
	const size = 8
	readable := func(d *MockDriver) uint64 { a, _ := d.Alloc(512, 8); return a }
	tests := []struct {
		name     string
		indirect bool // negotiate VIRTIO_F_INDIRECT_DESC
		capacity int
		build    func(d *MockDriver) (head uint16, err error)
		want     error
	}{
		{"head out of range", false, size, func(d *MockDriver) (uint16, error) {
			return size + 3, d.PushAvail(size + 3)
		}, ErrDescriptorIndex},
		{"next out of range", false, size, func(d *MockDriver) (uint16, error) {
			return 0, errors.Join(d.WriteDesc(0, MockDesc{Addr: readable(d), Len: 16, Flags: DescFlagNext, Next: size}), d.PushAvail(0))
		}, ErrDescriptorIndex},
		{"loop", false, size, func(d *MockDriver) (uint16, error) { return d.AddLoop(2, 3) }, ErrChainLoop},
		{"self loop", false, size, func(d *MockDriver) (uint16, error) { return d.AddLoop(5, 1) }, ErrChainLoop},
		{"loop beyond capacity", false, 2, func(d *MockDriver) (uint16, error) { return d.AddLoop(0, 5) }, ErrChainLoop},
		{"longer than capacity", false, 3, func(d *MockDriver) (uint16, error) {
			a := readable(d)
			return d.AddChain([]MockBuffer{{a, 1, false}, {a, 1, false}, {a, 1, false}, {a, 1, true}}, false)
		}, ErrChainTooLong},
		{"address outside memory", false, size, func(d *MockDriver) (uint16, error) {
			return d.AddChain([]MockBuffer{{0, 16, false}}, false)
		}, ErrDescriptorRange},
		{"buffer straddles end of memory", false, size, func(d *MockDriver) (uint16, error) {
			return d.AddChain([]MockBuffer{{MockMemoryBase + MockMemorySize - 8, 16, true}}, false)
		}, ErrDescriptorRange},
		{"buffer wraps address space", false, size, func(d *MockDriver) (uint16, error) {
			return d.AddChain([]MockBuffer{{^uint64(0) - 4, 16, false}}, false)
		}, ErrDescriptorRange},
		{"readable after writable", false, size, func(d *MockDriver) (uint16, error) {
			a := readable(d)
			return d.AddChain([]MockBuffer{{a, 16, false}, {a, 1, true}, {a, 16, false}}, false)
		}, ErrReadableAfterWritable},
		{"readable after writable, indirect", true, size, func(d *MockDriver) (uint16, error) {
			a := readable(d)
			return d.AddChain([]MockBuffer{{a, 1, true}, {a, 16, false}}, true)
		}, ErrReadableAfterWritable},
		{"indirect not negotiated", false, size, func(d *MockDriver) (uint16, error) {
			return d.AddChain([]MockBuffer{{readable(d), 16, false}}, true)
		}, ErrIndirect},
		{"indirect with next", true, size, func(d *MockDriver) (uint16, error) {
			tab, _ := d.Alloc(32, 16)
			err := errors.Join(d.WriteIndirectTable(tab, []MockDesc{{Addr: readable(d), Len: 8}}),
				d.WriteDesc(0, MockDesc{Addr: tab, Len: 16, Flags: DescFlagIndirect | DescFlagNext, Next: 1}),
				d.WriteDesc(1, MockDesc{Addr: readable(d), Len: 8}), d.PushAvail(0))
			return 0, err
		}, ErrIndirect},
		{"indirect inside indirect", true, size, func(d *MockDriver) (uint16, error) {
			tab, _ := d.Alloc(32, 16)
			err := errors.Join(d.WriteIndirectTable(tab, []MockDesc{{Addr: readable(d), Len: 8, Flags: DescFlagNext, Next: 1}, {Addr: tab, Len: 32, Flags: DescFlagIndirect}}),
				d.WriteDesc(0, MockDesc{Addr: tab, Len: 32, Flags: DescFlagIndirect}), d.PushAvail(0))
			return 0, err
		}, ErrIndirect},
		{"indirect length not a multiple of 16", true, size, func(d *MockDriver) (uint16, error) {
			tab, _ := d.Alloc(32, 16)
			return 0, errors.Join(d.WriteDesc(0, MockDesc{Addr: tab, Len: 24, Flags: DescFlagIndirect}), d.PushAvail(0))
		}, ErrIndirect},
		{"indirect length zero", true, size, func(d *MockDriver) (uint16, error) {
			return 0, errors.Join(d.WriteDesc(0, MockDesc{Addr: readable(d), Len: 0, Flags: DescFlagIndirect}), d.PushAvail(0))
		}, ErrIndirect},
		{"indirect table outside memory", true, size, func(d *MockDriver) (uint16, error) {
			return 0, errors.Join(d.WriteDesc(0, MockDesc{Addr: 1 << 40, Len: 32, Flags: DescFlagIndirect}), d.PushAvail(0))
		}, ErrDescriptorRange},
		{"indirect table longer than queue and room", true, 4, func(d *MockDriver) (uint16, error) {
			a := readable(d)
			bufs := make([]MockBuffer, size+1)
			for i := range bufs {
				bufs[i] = MockBuffer{a, 8, false}
			}
			return d.AddChain(bufs, true)
		}, ErrChainTooLong},
		{"indirect loop", true, size, func(d *MockDriver) (uint16, error) {
			tab, _ := d.Alloc(48, 16)
			a := readable(d)
			err := errors.Join(d.WriteIndirectTable(tab, []MockDesc{{a, 8, DescFlagNext, 1}, {a, 8, DescFlagNext, 2}, {a, 8, DescFlagNext, 1}}),
				d.WriteDesc(3, MockDesc{Addr: tab, Len: 48, Flags: DescFlagIndirect}), d.PushAvail(3))
			return 3, err
		}, ErrChainLoop},
		{"indirect loop beyond capacity", true, 1, func(d *MockDriver) (uint16, error) {
			tab, _ := d.Alloc(32, 16)
			a := readable(d)
			err := errors.Join(d.WriteIndirectTable(tab, []MockDesc{{a, 8, DescFlagNext, 1}, {a, 8, DescFlagNext, 0}}),
				d.WriteDesc(3, MockDesc{Addr: tab, Len: 32, Flags: DescFlagIndirect}), d.PushAvail(3))
			return 3, err
		}, ErrChainLoop},
		{"indirect next out of range", true, size, func(d *MockDriver) (uint16, error) {
			tab, _ := d.Alloc(32, 16)
			a := readable(d)
			err := errors.Join(d.WriteIndirectTable(tab, []MockDesc{{a, 8, DescFlagNext, 2}, {a, 8, 0, 0}}),
				d.WriteDesc(1, MockDesc{Addr: tab, Len: 32, Flags: DescFlagIndirect}), d.PushAvail(1))
			return 1, err
		}, ErrDescriptorIndex},
		{"indirect buffer outside memory", true, size, func(d *MockDriver) (uint16, error) {
			return d.AddChain([]MockBuffer{{readable(d), 16, false}, {1 << 50, 1, true}}, true)
		}, ErrDescriptorRange},
		{"direct then indirect over room", true, 4, func(d *MockDriver) (uint16, error) {
			tab, _ := d.Alloc(size*16, 16)
			a := readable(d)
			descs := make([]MockDesc, size)
			for i := range descs {
				descs[i] = MockDesc{a, 8, DescFlagNext, uint16(i + 1)}
			}
			descs[size-1].Flags = 0
			err := errors.Join(d.WriteIndirectTable(tab, descs),
				d.WriteDesc(0, MockDesc{Addr: a, Len: 8, Flags: DescFlagNext, Next: 1}),
				d.WriteDesc(1, MockDesc{Addr: tab, Len: size * 16, Flags: DescFlagIndirect}), d.PushAvail(0))
			return 0, err
		}, ErrChainTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, q := newPair(t, MockConfig{Size: size, IndirectDesc: tt.indirect})
			head, err := tt.build(d)
			if err != nil {
				t.Fatalf("building the chain: %v", err)
			}
			c := newChain(tt.capacity)
			ok, err := q.Pop(c)
			if !ok || !errors.Is(err, tt.want) {
				t.Fatalf("Pop = %v, %v; want %v", ok, err, tt.want)
			}
			if c.Head != head {
				t.Errorf("c.Head = %d, want %d", c.Head, head)
			}
			// The device hands the bad head back and carries on.
			if err := q.AddUsed(c.Head, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := q.PublishUsed(); err != nil {
				t.Fatal(err)
			}
			d2, err := NewMockDriver(MockConfig{Size: size, Memory: d.Mem, ArenaStart: MockMemoryBase + MockMemorySize/2, ArenaEnd: MockMemoryBase + MockMemorySize, NoKickFD: true})
			if err != nil {
				t.Fatal(err)
			}
			buf, _ := d2.Alloc(64, 8)
			// Reuse the broken driver's ring for one good chain at the
			// last descriptor, which no case above uses.
			if err := errors.Join(d.WriteDesc(size-1, MockDesc{Addr: buf, Len: 64, Flags: DescFlagWrite}), d.PushAvail(size-1)); err != nil {
				t.Fatal(err)
			}
			c = newChain(size)
			if ok, err := q.Pop(c); !ok || err != nil || c.Head != size-1 || len(c.Descriptors) != 1 {
				t.Fatalf("Pop after the fault = %v, %v, %+v", ok, err, c)
			}
		})
	}
}

func TestPopAvailIndexJump(t *testing.T) {
	d, q := newPair(t, MockConfig{Size: 8})
	if err := d.SetAvailIdx(9); err != nil {
		t.Fatal(err)
	}
	if ok, err := q.Pop(newChain(8)); ok || !errors.Is(err, ErrAvailIndex) {
		t.Fatalf("Pop = %v, %v; want ErrAvailIndex", ok, err)
	}
	// Exactly the queue size ahead is legal (a full ring).
	if err := d.SetAvailIdx(8); err != nil {
		t.Fatal(err)
	}
	if ok, err := q.Pop(newChain(8)); !ok || errors.Is(err, ErrAvailIndex) {
		t.Fatalf("Pop of a full ring = %v, %v", ok, err)
	}
}

func TestNewQueueErrors(t *testing.T) {
	mem, err := NewMockMemory(0x1000, 0x10000)
	if err != nil {
		t.Fatal(err)
	}
	good := QueueConfig{Size: 256, DescTable: 0x1000, AvailRing: 0x2000, UsedRing: 0x3000, EventIdx: true}
	if _, err := NewQueue(mem, good); err != nil {
		t.Fatalf("good config: %v", err)
	}
	tests := []struct {
		name string
		edit func(c *QueueConfig)
	}{
		{"size zero", func(c *QueueConfig) { c.Size = 0 }},
		{"size not a power of two", func(c *QueueConfig) { c.Size = 100 }},
		{"size too big", func(c *QueueConfig) { c.Size = 65535 }},
		{"desc misaligned", func(c *QueueConfig) { c.DescTable += 8 }},
		{"avail misaligned", func(c *QueueConfig) { c.AvailRing++ }},
		{"used misaligned", func(c *QueueConfig) { c.UsedRing += 2 }},
		{"desc outside memory", func(c *QueueConfig) { c.DescTable = 0x10800 }},
		{"avail outside memory", func(c *QueueConfig) { c.AvailRing = 0 }},
		{"used outside memory", func(c *QueueConfig) { c.UsedRing = 0x11000 - 0x800 }},
		{"avail_event outside memory", func(c *QueueConfig) { c.UsedRing = 0x11000 - 4 - 8*256 }},
	}
	for _, tt := range tests {
		cfg := good
		tt.edit(&cfg)
		if _, err := NewQueue(mem, cfg); !errors.Is(err, ErrQueueConfig) {
			t.Errorf("%s: NewQueue = %v, want ErrQueueConfig", tt.name, err)
		}
	}
	if _, err := NewQueue(nil, good); !errors.Is(err, ErrQueueConfig) {
		t.Errorf("nil memory: %v", err)
	}
}

// The 16-bit indices wrap: from a start just below 65536, and over 70000
// requests through a small ring from 0.
func TestIndexWraparound(t *testing.T) {
	for _, tc := range []struct {
		start uint16
		n     int
		ev    bool
	}{{65530, 20, false}, {65530, 20, true}, {0, 70000, true}} {
		d, q := newPair(t, MockConfig{Size: 4, StartIndex: tc.start, EventIdx: tc.ev, NoKickFD: true})
		c := newChain(4)
		buf, _ := d.Alloc(64, 8)
		for i := range tc.n {
			if _, err := d.AddChain([]MockBuffer{{buf, 16, false}, {buf + 16, 1, true}}, false); err != nil {
				t.Fatalf("start %d, request %d: %v", tc.start, i, err)
			}
			if kicked, err := d.Kick(); err != nil || !kicked {
				t.Fatalf("start %d, request %d: Kick = %v, %v", tc.start, i, kicked, err)
			}
			mustPop(t, q, c)
			if _, err := q.EnableNotifications(); err != nil {
				t.Fatal(err)
			}
			if err := q.AddUsed(c.Head, uint32(i)); err != nil {
				t.Fatal(err)
			}
			if notify, err := q.PublishUsed(); err != nil || !notify {
				t.Fatalf("start %d, request %d: PublishUsed = %v, %v", tc.start, i, notify, err)
			}
			u, ok, err := d.PopUsed()
			if err != nil || !ok || u.Len != uint32(i) {
				t.Fatalf("start %d, request %d: PopUsed = %+v, %v, %v", tc.start, i, u, ok, err)
			}
		}
		if want := tc.start + uint16(tc.n); q.NextAvail() != want {
			t.Errorf("NextAvail = %d, want %d", q.NextAvail(), want)
		}
	}
}

func TestNeedEvent(t *testing.T) {
	tests := []struct {
		ev, new, old uint16
		want         bool
	}{
		{0, 1, 0, true},
		{0, 0, 0, false},
		{5, 5, 4, false},
		{4, 5, 4, true},
		{3, 5, 4, false}, // already signalled past 3
		{2, 10, 0, true},
		{65535, 0, 65535, true},
		{65534, 1, 65533, true},
		{65535, 2, 0, false},
		{1, 0, 65530, false},
		{65533, 3, 65530, true},
	}
	for _, tt := range tests {
		if got := NeedEvent(tt.ev, tt.new, tt.old); got != tt.want {
			t.Errorf("NeedEvent(%d, %d, %d) = %v, want %v", tt.ev, tt.new, tt.old, got, tt.want)
		}
	}
}

// With EVENT_IDX the device interrupts only when used->idx crosses
// used_event, and the driver kicks only when avail->idx crosses
// avail_event.
func TestEventIdxSuppression(t *testing.T) {
	d, q := newPair(t, MockConfig{Size: 8, EventIdx: true, NoKickFD: true})
	buf, _ := d.Alloc(64, 8)
	add := func() {
		t.Helper()
		if _, err := d.AddChain([]MockBuffer{{buf, 1, true}}, false); err != nil {
			t.Fatal(err)
		}
	}
	kick := func(want bool) {
		t.Helper()
		if got, err := d.Kick(); err != nil || got != want {
			t.Fatalf("Kick = %v, %v; want %v", got, err, want)
		}
	}
	// avail_event starts at 0: the first chain (index 0 -> 1) kicks.
	add()
	kick(true)
	c := newChain(8)
	mustPop(t, q, c)
	// The device is busy and has not re-armed: avail_event stays 0, so the
	// next kicks are suppressed.
	if err := q.DisableNotifications(); err != nil {
		t.Fatal(err)
	}
	add()
	add()
	kick(false)
	mustPop(t, q, c)
	mustPop(t, q, c)
	more, err := q.EnableNotifications()
	if err != nil || more {
		t.Fatalf("EnableNotifications = %v, %v", more, err)
	}
	if ev, _ := d.AvailEvent(); ev != 3 {
		t.Fatalf("avail_event = %d, want 3", ev)
	}
	add()
	kick(true)
	// A chain added before re-arming is reported by EnableNotifications.
	add()
	if more, _ := q.EnableNotifications(); !more {
		t.Fatal("EnableNotifications missed a pending chain")
	}

	// Interrupts: used_event is 0 (driver has read nothing yet).
	for range 2 {
		if err := q.AddUsed(0, 0); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := q.PublishUsed(); !n {
		t.Fatal("first publish should interrupt (used_event 0 crossed)")
	}
	if err := q.AddUsed(0, 0); err != nil {
		t.Fatal(err)
	}
	if n, _ := q.PublishUsed(); n {
		t.Fatal("publish past an already-crossed used_event should not interrupt")
	}
	// The driver asks for an interrupt when used->idx passes 4.
	if err := d.Mem.StoreUint16Release(d.avail+ringHeader+2*8, 4); err != nil {
		t.Fatal(err)
	}
	if err := q.AddUsed(0, 0); err != nil {
		t.Fatal(err)
	}
	if n, _ := q.PublishUsed(); n {
		t.Fatal("used->idx 4 does not pass used_event 4")
	}
	if err := q.AddUsed(0, 0); err != nil {
		t.Fatal(err)
	}
	if n, _ := q.PublishUsed(); !n {
		t.Fatal("used->idx 5 passes used_event 4")
	}
	if n, _ := q.PublishUsed(); n {
		t.Fatal("an empty publish should not interrupt")
	}
}

// Without EVENT_IDX: used->flags NO_NOTIFY and avail->flags NO_INTERRUPT.
func TestFlagSuppression(t *testing.T) {
	d, q := newPair(t, MockConfig{Size: 8, NoKickFD: true})
	buf, _ := d.Alloc(64, 8)
	if err := q.DisableNotifications(); err != nil {
		t.Fatal(err)
	}
	if f, _ := d.UsedFlags(); f != 1 {
		t.Fatalf("used->flags = %d after DisableNotifications", f)
	}
	if _, err := d.AddChain([]MockBuffer{{buf, 1, true}}, false); err != nil {
		t.Fatal(err)
	}
	if k, _ := d.Kick(); k {
		t.Fatal("kicked despite NO_NOTIFY")
	}
	if more, err := q.EnableNotifications(); err != nil || !more {
		t.Fatalf("EnableNotifications = %v, %v; want a pending chain", more, err)
	}
	if _, err := d.AddChain([]MockBuffer{{buf, 1, true}}, false); err != nil {
		t.Fatal(err)
	}
	if k, _ := d.Kick(); !k {
		t.Fatal("no kick with notifications enabled")
	}
	if err := d.DisableInterrupts(); err != nil {
		t.Fatal(err)
	}
	c := newChain(8)
	mustPop(t, q, c)
	if err := q.AddUsed(c.Head, 0); err != nil {
		t.Fatal(err)
	}
	if n, _ := q.PublishUsed(); n {
		t.Fatal("interrupt despite NO_INTERRUPT")
	}
	if pending, err := d.EnableInterrupts(); err != nil || !pending {
		t.Fatalf("EnableInterrupts = %v, %v; want pending", pending, err)
	}
	mustPop(t, q, c)
	if err := q.AddUsed(c.Head, 0); err != nil {
		t.Fatal(err)
	}
	if n, _ := q.PublishUsed(); !n {
		t.Fatal("no interrupt with interrupts enabled")
	}
}

func TestAddUsedOverflow(t *testing.T) {
	_, q := newPair(t, MockConfig{Size: 4, NoKickFD: true})
	for i := range 4 {
		if err := q.AddUsed(uint16(i), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.AddUsed(0, 0); !errors.Is(err, ErrQueueConfig) {
		t.Fatalf("fifth unpublished AddUsed = %v", err)
	}
}

// The device path (Pop, AddUsed, PublishUsed, notification toggling) and
// the mock's own AddChain/Kick/PopUsed allocate nothing.
func TestNoAllocations(t *testing.T) {
	for _, indirect := range []bool{false, true} {
		d, q := newPair(t, MockConfig{Size: 64, EventIdx: true, IndirectDesc: true})
		buf, _ := d.Alloc(8192, 8)
		bufs := []MockBuffer{{buf, 16, false}, {buf + 16, 4096, true}, {buf + 4112, 1, true}}
		c := newChain(64)
		var kick [8]byte
		allocs := testing.AllocsPerRun(1000, func() {
			for range 8 {
				if _, err := d.AddChain(bufs, indirect); err != nil {
					t.Fatal(err)
				}
			}
			d.Kick()
			unix.Read(d.KickFD(), kick[:])
			q.DisableNotifications()
			for {
				ok, err := q.Pop(c)
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					break
				}
				q.AddUsed(c.Head, 4097)
			}
			q.EnableNotifications()
			q.PublishUsed()
			for {
				_, ok, err := d.PopUsed()
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					break
				}
			}
		})
		if allocs != 0 {
			t.Errorf("indirect=%v: %v allocations per batch, want 0", indirect, allocs)
		}
	}
}

// Pop on one goroutine, AddUsed/PublishUsed on another, the driver on a
// third: run with -race to check the ordering between them.
func TestConcurrentPopAndComplete(t *testing.T) {
	const total = 5000
	d, q := newPair(t, MockConfig{Size: 32, EventIdx: true, IndirectDesc: true, NoKickFD: true})
	buf, _ := d.Alloc(4096, 8)
	heads := make(chan uint16, 32)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(heads)
		c := newChain(32)
		for n := 0; n < total; {
			ok, err := q.Pop(c)
			if err != nil {
				t.Error(err)
				return
			}
			if ok {
				heads <- c.Head
				n++
			} else {
				runtime.Gosched()
			}
		}
	}()
	go func() {
		defer wg.Done()
		for h := range heads {
			if err := q.AddUsed(h, 1); err != nil {
				t.Error(err)
				return
			}
			if _, err := q.PublishUsed(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	done := 0
	for sent := 0; done < total; {
		if sent < total && d.NumFree() >= 2 {
			if _, err := d.AddChain([]MockBuffer{{buf, 16, false}, {buf + 16, 1, true}}, sent%2 == 0); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		_, ok, err := d.PopUsed()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			done++
		} else {
			runtime.Gosched()
		}
	}
	wg.Wait()
}

func BenchmarkPopComplete(b *testing.B) {
	d, q := newPair(b, MockConfig{Size: 256, EventIdx: true, NoKickFD: true})
	buf, _ := d.Alloc(8192, 8)
	bufs := []MockBuffer{{buf, 16, false}, {buf + 16, 4096, true}, {buf + 4112, 1, true}}
	c := newChain(256)
	b.ReportAllocs()
	for b.Loop() {
		d.AddChain(bufs, false)
		q.Pop(c)
		q.AddUsed(c.Head, 4097)
		q.PublishUsed()
		d.PopUsed()
	}
}

// A chain longer than the caller's room fails with ErrChainTooLong, yet
// c.Descriptors ends with the chain's real last buffer: a block device writes
// IOERR into the status byte there, so the driver never reads a stale "OK"
// for a request that was dropped.
func TestPopOverflowKeepsLastBuffer(t *testing.T) {
	for _, indirect := range []bool{false, true} {
		d, q := newPair(t, MockConfig{Size: 16, IndirectDesc: indirect})
		a, err := d.Alloc(512, 8)
		if err != nil {
			t.Fatal(err)
		}
		status, err := d.Alloc(1, 1)
		if err != nil {
			t.Fatal(err)
		}
		bufs := []MockBuffer{{a, 16, false}, {a + 16, 8, false}, {a + 32, 8, false}, {a + 48, 8, false}, {status, 1, true}}
		head, err := d.AddChain(bufs, indirect)
		if err != nil {
			t.Fatal(err)
		}
		c := newChain(3)
		ok, err := q.Pop(c)
		if !ok || !errors.Is(err, ErrChainTooLong) || c.Head != head {
			t.Fatalf("indirect=%v: Pop = %v, %v, head %d; want ErrChainTooLong, head %d", indirect, ok, err, c.Head, head)
		}
		want := []Descriptor{Descriptor(bufs[0]), Descriptor(bufs[1]), Descriptor(bufs[4])}
		if !slices.Equal(c.Descriptors, want) {
			t.Errorf("indirect=%v: descriptors %+v, want %+v", indirect, c.Descriptors, want)
		}
	}

	// A chain longer than the queue, the room and walkFloor is followed
	// no further: its end, and its status byte, stay out of reach, so
	// none is reported.
	d, q := newPair(t, MockConfig{Size: 4, IndirectDesc: true})
	if _, err := d.AddChain(blkShape(t, d, walkFloor+2), true); err != nil {
		t.Fatal(err)
	}
	c := newChain(3)
	if ok, err := q.Pop(c); !ok || !errors.Is(err, ErrChainTooLong) {
		t.Fatalf("Pop = %v, %v; want ErrChainTooLong", ok, err)
	}
	if len(c.Descriptors) != 0 {
		t.Errorf("descriptors %+v, want none", c.Descriptors)
	}
}
