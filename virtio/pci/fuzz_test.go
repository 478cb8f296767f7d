package pci

import (
	"encoding/binary"
	"testing"
)

// FuzzGuestAccess replays arbitrary sequences of guest configuration-space
// and BAR accesses (and device interrupts) against a transport. Nothing a
// guest does may panic, and every ioeventfd the transport registers must be
// a queue's notify address inside BAR0.
func FuzzGuestAccess(f *testing.F) {
	op := func(kind, bar byte, off uint16, width byte, v uint64) []byte {
		b := make([]byte, 13)
		b[0], b[1], b[4] = kind, bar, width
		binary.LittleEndian.PutUint16(b[2:], off)
		binary.LittleEndian.PutUint64(b[5:], v)
		return b
	}
	var seed []byte
	for _, o := range [][]byte{
		op(3, 0, ccDeviceStatus, 1, 3), op(3, 0, ccDriverFeatureSelect, 4, 1), op(3, 0, ccDriverFeature, 4, 1),
		op(3, 0, ccDeviceStatus, 1, 11), op(3, 0, ccQueueEnable, 2, 1), op(1, 0, 0x9a, 2, 0x8000),
		op(3, 0, ccDeviceStatus, 1, 15), op(4, 0, 0, 0, 0), op(3, 2, 12, 4, 0), op(2, 0, bar0ISROff, 1, 0),
		op(1, 0, cfgBAR0, 4, 0xffffffff), op(3, 0, ccDeviceStatus, 1, 0),
	} {
		seed = append(seed, o...)
	}
	f.Add(seed)
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := newRig(t, 2)
		var buf [8]byte
		for len(ops) >= 13 {
			kind, bar, off, width, v := ops[0]%5, int(ops[1]%4), uint64(binary.LittleEndian.Uint16(ops[2:])), int(ops[4]%9), binary.LittleEndian.Uint64(ops[5:])
			ops = ops[13:]
			binary.LittleEndian.PutUint64(buf[:], v)
			switch kind {
			case 0:
				r.tr.ReadConfig(uint32(off), buf[:width])
			case 1:
				r.tr.WriteConfig(uint32(off), buf[:width])
			case 2:
				r.tr.ReadBAR(bar, off, buf[:width])
			case 3:
				r.tr.WriteBAR(bar, off, buf[:width])
			case 4:
				if len(r.dev.activations) > 0 {
					a := r.lastActivation()
					if int(v%3) < len(a.Queues) && a.Queues[v%3].Interrupt != nil {
						a.Queues[v%3].Interrupt.Notify()
					}
					a.ConfigInterrupt.Notify()
				}
			}
			for addr := range r.plat.registered() {
				bars := r.tr.BARs()
				if len(bars) == 0 || addr < bars[0].Addr+bar0NotifyOff || addr >= bars[0].Addr+bar0NotifyOff+2*NotifyOffMultiplier {
					t.Fatalf("ioeventfd at %#x outside the notify area of %+v", addr, bars)
				}
			}
			for _, a := range r.dev.activations {
				for _, q := range a.Queues {
					if q.Queue != nil && q.Queue.Size() > 256 {
						t.Fatalf("queue of size %d activated", q.Queue.Size())
					}
				}
			}
		}
	})
}
