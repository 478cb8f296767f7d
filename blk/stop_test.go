package blk

import (
	"testing"

	"github.com/flushvm/flushvm/virtio"
)

// TestPopAllStopsForReset: a queue pass checks for the device stopping
// before every pop, so Reset waits for at most the chain being popped, not
// for a pass over every chain queued (issue 8: a pass over long chains held
// Reset, and the transport's lock, for seconds). The queue is driven by
// hand, without its loop goroutine, so what one pass does is counted
// exactly: chains popped and descriptors read.
func TestPopAllStopsForReset(t *testing.T) {
	const queued = 8
	cases := []struct {
		name       string
		stopping   bool
		wantPopped int
		wantOK     bool
	}{
		{"device running: the pass pops every chain", false, queued, true},
		{"device stopping: the pass pops nothing", true, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dev, err := Open(Spec{Path: "mem", Cache: CacheWriteback}, Options{Backend: newMemBackend(1 << 20)})
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			drv, err := virtio.NewMockDriver(virtio.MockConfig{Size: 64, EventIdx: true, IndirectDesc: true})
			if err != nil {
				t.Fatal(err)
			}
			defer drv.Close()
			vq, err := drv.NewQueue()
			if err != nil {
				t.Fatal(err)
			}
			st, err := dev.start(virtio.Activation{Memory: drv.Mem, Features: dev.Features(),
				Queues: []virtio.QueueBinding{{Queue: vq, Kick: drv.KickFD(), Interrupt: virtio.NewMockNotifier()}}}, false)
			if err != nil {
				t.Fatal(err)
			}
			defer st.stopAll()
			for i := range queued {
				r := readReq(uint64(i), 512, 512)
				r.Indirect = i%2 == 1
				if _, err := drv.Submit(r); err != nil {
					t.Fatal(err)
				}
			}
			if tc.stopping {
				st.requestStop()
			}
			n, ok := st.queues[0].popAll()
			if n != tc.wantPopped || ok != tc.wantOK {
				t.Errorf("popAll = %d, %v; want %d, %v", n, ok, tc.wantPopped, tc.wantOK)
			}
			if tc.stopping && vq.DescriptorsRead() != 0 {
				t.Errorf("a stopping pass read %d descriptors, want 0", vq.DescriptorsRead())
			}
		})
	}
}
