package blk

import (
	"bytes"
	"testing"
)

// TestDeviceOverVolatileCache runs the real device (through the mock
// driver) on a VolatileCache in every cache mode and cuts the power under
// every policy: what the device acknowledged as durable — a write followed
// by a completed FLUSH in write-back modes, every completed write in
// write-through modes or after the guest turns its write cache off — is on
// the platter afterwards. cache=unsafe acknowledges flushes it never
// passes on, so lose-all loses acknowledged data there: the oracle can
// fail.
func TestDeviceOverVolatileCache(t *testing.T) {
	const size = 1 << 20
	type step struct {
		write  uint64 // sector to write (when !flush && !wceOff)
		flush  bool
		wceOff bool // the guest turns its write cache off
	}
	a, b, c := step{write: 0}, step{write: 8}, step{write: 16}
	flush, wceOff := step{flush: true}, step{wceOff: true}
	cases := []struct {
		name  string
		mode  CacheMode
		steps []step
		// durable lists the steps (indexes) the device acknowledged as
		// durable: they must survive any cut.
		durable []int
		// lostUnderLoseAll: an acknowledged-durable write lose-all loses.
		lostUnderLoseAll bool
	}{
		{"writeback", CacheWriteback, []step{a, flush, b, c}, []int{0}, false},
		{"none", CacheNone, []step{a, flush, b, c}, []int{0}, false},
		{"writethrough", CacheWritethrough, []step{a, b, c}, []int{0, 1, 2}, false},
		{"directsync", CacheDirectSync, []step{a, b, c}, []int{0, 1, 2}, false},
		{"writeback, WCE off with a write pending", CacheWriteback, []step{a, wceOff, b}, []int{0, 2}, false},
		{"unsafe", CacheUnsafe, []step{a, flush, b}, []int{0}, true},
	}
	for _, tc := range cases {
		for _, p := range allTestPolicies() {
			t.Run(tc.name+"/"+p.String(), func(t *testing.T) {
				disk := newPCDisk(size, 3)
				cache := newTestCache(t, disk, 0)
				h := newHarness(t, harnessConfig{cache: tc.mode, opts: Options{Backend: cache}})
				data := map[int][]byte{}
				for i, s := range tc.steps {
					switch {
					case s.flush:
						mustStatus(t, "flush", h.do(flushReq()), StatusOK)
					case s.wceOff:
						h.dev.WriteConfig(cfgWriteback, []byte{0})
					default:
						data[i] = pattern(4096, byte(i*40+1))
						mustStatus(t, "write", h.do(writeReq(s.write, data[i])), StatusOK)
					}
				}
				rep, err := cache.PowerCut(p, 7)
				if err != nil {
					t.Fatal(err)
				}
				img := disk.image()
				lost := false
				for _, i := range tc.durable {
					off := tc.steps[i].write * 512
					if !bytes.Equal(img[off:off+4096], data[i]) {
						lost = true
						if !tc.lostUnderLoseAll {
							t.Fatalf("acknowledged-durable write %d lost (%s)", i, rep.Summary())
						}
					}
				}
				if tc.lostUnderLoseAll && p.Kind == PowerCutLoseAll && !lost {
					t.Fatalf("cache=unsafe kept every acknowledged write under lose-all (%s)", rep.Summary())
				}
			})
		}
	}
}
