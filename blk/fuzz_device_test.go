package blk

import (
	"encoding/binary"
	"testing"

	"github.com/flushvm/flushvm/virtio"
)

// FuzzDeviceChains feeds hostile rings to the whole device: descriptor
// tables (direct and indirect), avail entries and request headers all come
// from the fuzz input. The queue is drained by hand, without the loop
// goroutine, so every run is deterministic. The device must not panic, must
// hand back at most the chains it popped, and must never take the backend
// outside the disk (memBackend reports any such access as an error, which
// the device would count).
func FuzzDeviceChains(f *testing.F) {
	// A well-formed read: header, 512-byte buffer, status.
	ok := make([]byte, 0, 64)
	for _, d := range [][4]uint16{{0, 16, 1, 1}, {1, 512, 3, 2}, {2, 1, 2, 0}} {
		for _, v := range d {
			ok = binary.LittleEndian.AppendUint16(ok, v)
		}
	}
	f.Add(append([]byte{1, 0}, ok...))
	f.Add([]byte{3, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07, 0x00, 0x05, 0x00})
	f.Add([]byte{2, 5, 0, 0, 16, 0, 4, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 2 {
			return
		}
		const qsize = 16
		drv, err := virtio.NewMockDriver(virtio.MockConfig{Size: qsize, EventIdx: in[1]&1 != 0, IndirectDesc: true, NoKickFD: true, MemorySize: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		// Data area: eight 4 KiB slots after the rings, the first 16
		// bytes of each a request header taken from the input.
		area, err := drv.Alloc(8*4096, 4096)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 8 {
			h := hdr(uint32(in[1]>>1)%16, uint64(in[0]))
			drv.Write(area+uint64(i)*4096, h)
		}
		rest := in[2:]
		var desc uint16
		for len(rest) >= 8 && desc < qsize {
			sel := binary.LittleEndian.Uint16(rest[0:])
			n := binary.LittleEndian.Uint16(rest[2:])
			flags := binary.LittleEndian.Uint16(rest[4:]) & 7
			next := binary.LittleEndian.Uint16(rest[6:]) % (qsize + 2)
			addr := area + uint64(sel&7)*4096 + uint64(sel>>3)%4096
			if sel&0x8000 != 0 {
				addr = uint64(sel) << 20 // mostly outside guest memory
			}
			if flags&virtio.DescFlagIndirect != 0 {
				// An indirect table of up to 4 entries built from the
				// same kind of input.
				tbl := area + 7*4096 + 2048
				var ds []virtio.MockDesc
				for k := range 4 {
					ds = append(ds, virtio.MockDesc{Addr: area + uint64(k)*4096, Len: uint32(n>>uint(4*k)&15) * 64,
						Flags: uint16(k+int(sel)) & 3, Next: uint16(k + 1)})
				}
				drv.WriteIndirectTable(tbl, ds)
				addr, n = tbl, uint16(16*len(ds))
				if sel&1 != 0 {
					n = 24 // not a whole number of descriptors
				}
			}
			drv.WriteDesc(desc, virtio.MockDesc{Addr: addr, Len: uint32(n), Flags: flags, Next: next})
			desc++
			rest = rest[8:]
		}
		pushed := 0
		for _, h := range rest {
			if pushed == qsize {
				break
			}
			drv.PushAvail(uint16(h) % (qsize + 4))
			pushed++
		}
		if pushed == 0 {
			drv.PushAvail(0)
			pushed = 1
		}

		m := newMemBackend(64 << 10)
		dev, err := Open(Spec{Path: "fuzz", Cache: CacheWriteback, ReadOnly: in[1]&0x80 != 0},
			Options{Backend: m, Workers: 2, PollInterval: -1, MaxQueueSize: qsize})
		if err != nil {
			t.Fatal(err)
		}
		defer dev.Close()
		q, err := drv.NewQueue()
		if err != nil {
			t.Fatal(err)
		}
		st, err := dev.start(virtio.Activation{Memory: drv.Mem, Features: dev.Features(),
			Queues: []virtio.QueueBinding{{Queue: q, Kick: -1, Interrupt: virtio.NewMockNotifier()}}}, false)
		if err != nil {
			t.Fatal(err)
		}
		st.queues[0].drain()
		st.stopAll()

		used, err := drv.UsedIdx()
		if err != nil {
			t.Fatal(err)
		}
		if int(used) > pushed {
			t.Fatalf("%d used elements for %d chains made available", used, pushed)
		}
		s := dev.Stats()
		if s.Reads+s.Writes+s.Flushes+s.Discards+s.WriteZeroes+s.GetIDs+s.Unsupported+s.InvalidRequests > uint64(pushed)+1 {
			t.Fatalf("more requests counted than made available: %+v", s)
		}
		if s.Errors > s.InvalidRequests {
			// Every request is guest-made here and the backend never
			// fails on its own, so each IOERR must be a guest fault:
			// an out-of-disk access reached the backend otherwise.
			t.Fatalf("host errors on a healthy backend: %+v", s)
		}
	})
}
