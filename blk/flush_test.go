package blk

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor spins until cond holds. It only orders the test's steps (no
// timing is asserted); the deadline catches a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
		time.Sleep(100 * time.Microsecond)
	}
}

func (s *syncer) waitingForTest() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiters
}

func gatedBackend() *memBackend {
	m := newMemBackend(1 << 16)
	m.gate = make(chan struct{})
	m.entered = make(chan struct{}, 16)
	return m
}

// TestFlushMerging: N flushes submitted while a host sync is in flight cost
// one more sync between them, and every one of them is covered by it.
func TestFlushMerging(t *testing.T) {
	for _, n := range []int{1, 2, 8, 64} {
		t.Run("", func(t *testing.T) {
			m := gatedBackend()
			var hs atomic.Uint64
			s := newSyncer(m, &hs)

			m.write(t, 0, []byte{1})
			s.wrote()
			first := make(chan syncOutcome, 1)
			go func() {
				o, err := s.syncTo(s.mark())
				if err != nil {
					t.Error(err)
				}
				first <- o
			}()
			m.waitEntered(t) // sync 1 is in flight

			m.write(t, 512, []byte{2}) // completes during sync 1
			s.wrote()
			outs := make(chan syncOutcome, n)
			var wg sync.WaitGroup
			for range n {
				mark := s.mark()
				wg.Add(1)
				go func() {
					defer wg.Done()
					o, err := s.syncTo(mark)
					if err != nil {
						t.Error(err)
					}
					outs <- o
				}()
			}
			waitFor(t, "flushes to wait", func() bool { return s.waitingForTest() == n })
			m.gate <- struct{}{} // sync 1 done
			m.waitEntered(t)     // exactly one flush started sync 2
			m.gate <- struct{}{}
			wg.Wait()
			close(outs)
			if o := <-first; o != syncIssued {
				t.Fatalf("first flush outcome %d, want issued", o)
			}
			issued, merged := 0, 0
			for o := range outs {
				switch o {
				case syncIssued:
					issued++
				case syncMerged:
					merged++
				}
			}
			if got := m.syncs.Load(); got != 2 || hs.Load() != 2 {
				t.Fatalf("%d concurrent flushes cost %d host syncs (counted %d), want 2", n, got, hs.Load())
			}
			if issued != 1 || merged != n-1 {
				t.Fatalf("issued %d merged %d, want 1 and %d", issued, merged, n-1)
			}
			if m.coveredAtSync != 2 || m.durable[512] != 2 {
				t.Fatal("the write completed before the flushes is not durable")
			}
			// Nothing written since: a flush is free.
			m.gate = nil
			if o, err := s.syncTo(s.mark()); err != nil || o != syncElided || m.syncs.Load() != 2 {
				t.Fatalf("idle flush: %d %v, %d syncs", o, err, m.syncs.Load())
			}
		})
	}
}

// TestFlushCoversCompletedWrites: a write that completes while a sync is in
// flight is not covered by that sync, so a flush submitted after it must
// wait for a new sync, which covers it.
func TestFlushCoversCompletedWrites(t *testing.T) {
	m := gatedBackend()
	var hs atomic.Uint64
	s := newSyncer(m, &hs)
	m.write(t, 0, []byte{1})
	s.wrote()
	done0 := make(chan struct{})
	go func() { s.syncTo(s.mark()); close(done0) }()
	m.waitEntered(t)

	m.write(t, 4096, []byte{7})
	s.wrote()
	mark := s.mark()
	done1 := make(chan error, 1)
	go func() { _, err := s.syncTo(mark); done1 <- err }()
	waitFor(t, "flush to wait", func() bool { return s.waitingForTest() == 1 })
	m.gate <- struct{}{}
	<-done0
	select {
	case <-done1:
		t.Fatal("flush completed on a sync that started before its write completed")
	case <-m.entered: // it started its own sync instead
	}
	m.gate <- struct{}{}
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
	if m.durable[4096] != 7 {
		t.Fatal("write completed before the flush is not durable after it")
	}
}

// TestFlushElided: flushes with nothing written since the last sync issue
// none.
func TestFlushElided(t *testing.T) {
	m := newMemBackend(4096)
	var hs atomic.Uint64
	s := newSyncer(m, &hs)
	for i := range 3 {
		if o, err := s.syncTo(s.mark()); err != nil || o != syncElided {
			t.Fatalf("flush %d on a clean disk: %d %v", i, o, err)
		}
	}
	s.wrote()
	if o, _ := s.syncTo(s.mark()); o != syncIssued {
		t.Fatalf("flush after a write: %d, want issued", o)
	}
	if o, _ := s.syncTo(s.mark()); o != syncElided {
		t.Fatalf("second flush: %d, want elided", o)
	}
	if m.syncs.Load() != 1 {
		t.Fatalf("%d syncs, want 1", m.syncs.Load())
	}
}

// TestSyncFailureSticks: once a host sync failed, no later flush claims
// durability.
func TestSyncFailureSticks(t *testing.T) {
	m := newMemBackend(4096)
	m.syncErr = errors.New("EIO")
	var hs atomic.Uint64
	s := newSyncer(m, &hs)
	s.wrote()
	if _, err := s.syncTo(s.mark()); !errors.Is(err, ErrSyncFailed) {
		t.Fatalf("failed sync: %v", err)
	}
	m.syncErr = nil
	if _, err := s.syncTo(s.mark()); !errors.Is(err, ErrSyncFailed) {
		t.Fatalf("flush after a failed sync: %v, want ErrSyncFailed", err)
	}
}
