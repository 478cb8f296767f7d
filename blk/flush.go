package blk

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// ErrSyncFailed reports that a host sync failed earlier. After that the
// device cannot know which completed writes reached stable storage (Linux
// may mark the failed pages clean, so a later fdatasync can succeed without
// writing them), so every later durability request fails too, for the life
// of the device: better an honest IOERR than an acknowledged flush that lied.
var ErrSyncFailed = errors.New("blk: an earlier host sync failed; durability can no longer be promised")

// syncOutcome says how a durability request was satisfied.
type syncOutcome int

const (
	// syncIssued: this request issued a host sync.
	syncIssued syncOutcome = iota
	// syncElided: nothing to sync, every covered write was durable already.
	syncElided
	// syncMerged: another request's host sync covered this one.
	syncMerged
)

// syncer turns durability requests into as few host syncs as the virtio rule
// allows. Completed writes are numbered by a generation counter: a write
// bumps gen when it completes on the backend, before the guest can see it
// complete. A FLUSH records gen when it is submitted (popped from the ring)
// and is satisfied once a sync that started at or after that generation has
// finished. Hence:
//
//   - a FLUSH covers every write completed before it was submitted;
//   - a FLUSH with nothing new since the last sync costs nothing (elided);
//   - FLUSHes arriving while a sync is in flight wait for it and then share
//     one following sync (merged): N concurrent flushes cost at most 2.
type syncer struct {
	backend Backend
	// gen counts completed writes; written without the lock on the hot
	// path, read under it when a sync starts.
	gen atomic.Uint64
	// hostSyncs counts Backend.Sync calls.
	hostSyncs *atomic.Uint64

	mu       sync.Mutex
	cond     sync.Cond
	synced   uint64 // every write with generation <= synced is durable
	inFlight bool
	failed   error
	// waiters counts requests waiting for an in-flight sync (tests use it
	// to order their steps).
	waiters int
}

func newSyncer(b Backend, hostSyncs *atomic.Uint64) *syncer {
	s := &syncer{backend: b, hostSyncs: hostSyncs}
	s.cond.L = &s.mu
	return s
}

// wrote records that a write completed on the backend. Call it before the
// request's completion is published.
func (s *syncer) wrote() { s.gen.Add(1) }

// mark returns the generation a durability request submitted now must cover.
func (s *syncer) mark() uint64 { return s.gen.Load() }

// syncTo returns once every write up to generation target is durable, or
// with an error wrapping ErrSyncFailed (or the sync's own error) if that
// cannot be promised.
func (s *syncer) syncTo(target uint64) (syncOutcome, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	waited := false
	for {
		if s.failed != nil {
			return syncIssued, s.failed
		}
		if s.synced >= target {
			if waited {
				return syncMerged, nil
			}
			return syncElided, nil
		}
		if !s.inFlight {
			break
		}
		waited = true
		s.waiters++
		s.cond.Wait()
		s.waiters--
	}
	// Start a sync. It covers every write completed so far, which includes
	// target (gen only grows, and target was read from it earlier).
	s.inFlight = true
	g := s.gen.Load()
	s.mu.Unlock()
	s.hostSyncs.Add(1)
	err := s.backend.Sync()
	s.mu.Lock()
	s.inFlight = false
	switch {
	case err != nil && injectedFault(err):
		// An injected flush failure lost nothing below (the fault layer
		// did not sync, so the writes wait for the next sync, which
		// covers them): it fails this sync only, as a disk reporting one
		// failed cache flush does.
		s.cond.Broadcast()
		return syncIssued, err
	case err != nil:
		s.failed = fmt.Errorf("%w: %w", ErrSyncFailed, err)
	case g > s.synced:
		s.synced = g
	}
	s.cond.Broadcast()
	if err != nil {
		return syncIssued, s.failed
	}
	return syncIssued, nil
}

// injectedFault reports whether err is a FaultBackend's (kept out of
// syncTo so that its target variable does not cost the hot path an
// allocation).
func injectedFault(err error) bool {
	var fe *FaultError
	return errors.As(err, &fe)
}
