package blk

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memBackend is an in-memory disk for tests. It counts syncs, can hold a
// Sync until the test releases it, can fail any kind of call, and keeps a
// "durable" image: the data as it was when the last successful Sync was
// called (what the durability contract promises survives).
type memBackend struct {
	mu      sync.Mutex
	data    []byte
	durable []byte
	// writesDone counts completed writes; coveredAtSync is writesDone as
	// seen by the last Sync when it was called.
	writesDone    int
	coveredAtSync int

	syncs atomic.Int64
	// gate, when set, makes Sync signal entered and then wait for a value
	// on gate before completing.
	gate    chan struct{}
	entered chan struct{}

	readErr, writeErr, syncErr, discardErr error
	discards, zeroes                       atomic.Int64
	closed                                 atomic.Bool
}

func newMemBackend(size int) *memBackend {
	return &memBackend{data: make([]byte, size), durable: make([]byte, size)}
}

func (m *memBackend) Size() int64 { return int64(len(m.data)) }

func (m *memBackend) ReadAt(v *Vec, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.readErr != nil {
		return m.readErr
	}
	if off < 0 || off+v.Len() > int64(len(m.data)) {
		return fmt.Errorf("memBackend: read [%d, +%d) past %d", off, v.Len(), len(m.data))
	}
	for _, b := range v.Bufs {
		off += int64(copy(b, m.data[off:]))
	}
	return nil
}

func (m *memBackend) WriteAt(v *Vec, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.writeErr != nil {
		return m.writeErr
	}
	if off < 0 || off+v.Len() > int64(len(m.data)) {
		return fmt.Errorf("memBackend: write [%d, +%d) past %d", off, v.Len(), len(m.data))
	}
	for _, b := range v.Bufs {
		off += int64(copy(m.data[off:], b))
	}
	m.writesDone++
	return nil
}

func (m *memBackend) Sync() error {
	m.syncs.Add(1)
	m.mu.Lock()
	snap := append([]byte(nil), m.data...)
	covered := m.writesDone
	err := m.syncErr
	gate, entered := m.gate, m.entered
	m.mu.Unlock()
	if gate != nil {
		entered <- struct{}{}
		<-gate
	}
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.durable = snap
	m.coveredAtSync = covered
	m.mu.Unlock()
	return nil
}

func (m *memBackend) Discard(off, n int64) error {
	m.discards.Add(1)
	if m.discardErr != nil {
		return m.discardErr
	}
	return m.WriteZeroes(off, n, true)
}

func (m *memBackend) WriteZeroes(off, n int64, unmap bool) error {
	m.zeroes.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.writeErr != nil {
		return m.writeErr
	}
	if off < 0 || off+n > int64(len(m.data)) {
		return fmt.Errorf("memBackend: zero [%d, +%d) past %d", off, n, len(m.data))
	}
	clear(m.data[off : off+n])
	m.writesDone++
	return nil
}

func (m *memBackend) Close() error { m.closed.Store(true); return nil }

// image returns a copy of the data now.
func (m *memBackend) image() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data...)
}

// hold makes the next Syncs signal entered and block until release.
func (m *memBackend) hold() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gate, m.entered = make(chan struct{}), make(chan struct{}, 16)
}

// release lets the held Syncs (and later ones) complete.
func (m *memBackend) release() {
	m.mu.Lock()
	g := m.gate
	m.gate = nil
	m.mu.Unlock()
	close(g)
}

func (m *memBackend) write(t *testing.T, off int64, p []byte) {
	t.Helper()
	v := NewVec(1)
	v.Append(p)
	if err := m.WriteAt(v, off); err != nil {
		t.Fatal(err)
	}
}

func TestVec(t *testing.T) {
	v := NewVec(2)
	if err := v.Append(nil); err != nil || len(v.Bufs) != 0 {
		t.Fatalf("empty append: %v, %d bufs", err, len(v.Bufs))
	}
	v.Append(make([]byte, 3))
	v.Append(make([]byte, 5))
	if err := v.Append(make([]byte, 1)); !errors.Is(err, ErrVecFull) {
		t.Fatalf("third append: %v, want ErrVecFull", err)
	}
	if v.Len() != 8 || v.Cap() != 2 {
		t.Fatalf("len %d cap %d", v.Len(), v.Cap())
	}
	v.Reset()
	if v.Len() != 0 || len(v.Bufs) != 0 || v.Bufs[:2][0] != nil {
		t.Fatal("Reset kept buffers")
	}
}

// waitEntered waits until a gated Sync has started.
func (m *memBackend) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-m.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for a host sync to start")
	}
}
