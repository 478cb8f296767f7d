package blk

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/flushvm/flushvm/protocol"
	"github.com/flushvm/flushvm/virtio"
)

// newCrashBackend records standardOps over a random 64 KiB base file and
// serves states over it.
func newCrashBackend(t *testing.T, states []CrashState) (*CrashStateBackend, *crashFixture, string) {
	t.Helper()
	fx := newCrashFixture(t, newPCDisk(64<<10, 3).image(), standardOps)
	basePath := filepath.Join(t.TempDir(), "base.img")
	if err := os.WriteFile(basePath, fx.base, 0o644); err != nil {
		t.Fatal(err)
	}
	fb, err := OpenFile(basePath, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewCrashStateBackend(fb, &CrashStateSet{Log: fx.logPath, States: states})
	if err != nil {
		fb.Close()
		t.Fatal(err)
	}
	return b, fx, basePath
}

func readBackend(t *testing.T, b Backend, off, n int64) ([]byte, error) {
	t.Helper()
	p := make([]byte, n)
	v := NewVec(3)
	// Uneven buffers, as a guest's scatter list may be.
	v.Append(p[:100])
	v.Append(p[100 : n-700])
	v.Append(p[n-700:])
	return p, b.ReadAt(v, off)
}

func TestCrashStateBackend(t *testing.T) {
	states := []CrashState{{ID: "s0", Prefix: 3}, {ID: "s1", Prefix: 9}}
	b, fx, basePath := newCrashBackend(t, states)
	defer b.Close()
	steps := []struct {
		name   string
		do     func() error
		serial string
		want   []byte // whole disk; nil: reads fail
	}{
		{"before any state", func() error { return nil }, protocol.CrashStateNoneSerial, fx.base},
		{"state 1", func() error { return b.Select(1) }, "crashstate-1", fx.reference(t, states[1])},
		{"private write", func() error {
			v := NewVec(1)
			v.Append(bytes.Repeat([]byte{0xee}, 1024))
			return b.WriteAt(v, 2048)
		}, "crashstate-1", overwrite(fx.reference(t, states[1]), 2048, bytes.Repeat([]byte{0xee}, 1024))},
		{"private zeroes", func() error { return b.WriteZeroes(2560, 512, true) }, "crashstate-1",
			overwrite(overwrite(fx.reference(t, states[1]), 2048, bytes.Repeat([]byte{0xee}, 1024)), 2560, make([]byte, 512))},
		{"discard is a hint", func() error { return b.Discard(0, 64<<10) }, "crashstate-1",
			overwrite(overwrite(fx.reference(t, states[1]), 2048, bytes.Repeat([]byte{0xee}, 1024)), 2560, make([]byte, 512))},
		{"state 0 drops the writes", func() error { return b.Select(0) }, "crashstate-0", fx.reference(t, states[0])},
		{"no state 2", func() error { return b.Select(2) }, protocol.CrashStateErrorSerial, nil},
		{"state 1 again", func() error { return b.Select(1) }, "crashstate-1", fx.reference(t, states[1])},
	}
	for _, st := range steps {
		err := st.do()
		if wantErr := st.want == nil; (err != nil) != wantErr {
			t.Fatalf("%s: error %v", st.name, err)
		}
		if got := b.Serial(); got != st.serial {
			t.Fatalf("%s: serial %q, want %q", st.name, got, st.serial)
		}
		got, err := readBackend(t, b, 0, 64<<10)
		switch {
		case st.want == nil && !errors.Is(err, ErrBadCrashState):
			t.Fatalf("%s: read: %v, want ErrBadCrashState", st.name, err)
		case st.want != nil && (err != nil || !bytes.Equal(got, st.want)):
			t.Fatalf("%s: read wrong bytes (%v)", st.name, err)
		}
	}
	if disk, err := os.ReadFile(basePath); err != nil || !bytes.Equal(disk, fx.base) {
		t.Fatalf("the base image changed (%v)", err)
	}
}

func overwrite(img []byte, off int, p []byte) []byte {
	copy(img[off:], p)
	return img
}

// TestCrashStateBackendRefuses: a set the log cannot back is refused at
// once; writes beyond the private bound fail and change nothing.
func TestCrashStateBackendRefuses(t *testing.T) {
	fx := newCrashFixture(t, make([]byte, 64<<10), standardOps)
	base := newMemBackend(64 << 10)
	_, err := NewCrashStateBackend(base, &CrashStateSet{Log: fx.logPath, States: []CrashState{{Prefix: 1}, {Prefix: 99}}})
	if !errors.Is(err, ErrBadCrashState) {
		t.Fatalf("bad state: %v, want ErrBadCrashState", err)
	}
	if _, err := NewCrashStateBackend(base, &CrashStateSet{Log: fx.logPath + ".missing"}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing log: %v", err)
	}

	huge := zeroBackend{size: 1 << 30}
	big := newCrashFixture(t, make([]byte, 4096), nil)
	b, err := NewCrashStateBackend(huge, &CrashStateSet{Log: big.logPath})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WriteZeroes(0, 1<<30, false); !errors.Is(err, ErrCrashWritesFull) {
		t.Fatalf("1 GiB of private zeroes: %v, want ErrCrashWritesFull", err)
	}
	if len(b.private) != 0 {
		t.Fatalf("a refused write left %d private sectors", len(b.private))
	}
}

// TestCrashStateDeviceSerial: the device answers GET_ID with the backend's
// serial, which follows Select, and serves the state's bytes.
func TestCrashStateDeviceSerial(t *testing.T) {
	states := []CrashState{{ID: "s0", Prefix: 2}, {ID: "s1", Prefix: 9}}
	b, fx, _ := newCrashBackend(t, states)
	h := newHarness(t, harnessConfig{opts: Options{Backend: b}})
	getID := func() string {
		r := h.do(virtio.MockRequest{Header: hdr(TypeGetID, 0), In: []uint32{20}, Status: 1})
		mustStatus(t, "get id", r, StatusOK)
		return string(bytes.TrimRight(r.in[0], "\x00"))
	}
	if id := getID(); id != protocol.CrashStateNoneSerial {
		t.Fatalf("serial %q before Select", id)
	}
	if err := b.Select(1); err != nil {
		t.Fatal(err)
	}
	if id := getID(); id != protocol.CrashStateSerial(1) {
		t.Fatalf("serial %q after Select(1)", id)
	}
	r := h.do(readReq(8, 4096, 4096))
	mustStatus(t, "read", r, StatusOK)
	if want := fx.reference(t, states[1])[4096:12288]; !bytes.Equal(bytes.Join(r.in, nil), want) {
		t.Fatal("device read other bytes than state 1's")
	}
	mustStatus(t, "write", h.do(writeReq(8, pattern(512, 9))), StatusOK)
	mustStatus(t, "flush", h.do(flushReq()), StatusOK)
}

// zeroBackend is a disk of zeroes that takes no memory.
type zeroBackend struct{ size int64 }

func (z zeroBackend) Size() int64 { return z.size }
func (z zeroBackend) ReadAt(v *Vec, off int64) error {
	for _, b := range v.Bufs {
		clear(b)
	}
	return nil
}
func (z zeroBackend) WriteAt(*Vec, int64) error            { return errors.New("read-only") }
func (z zeroBackend) Sync() error                          { return nil }
func (z zeroBackend) Discard(int64, int64) error           { return nil }
func (z zeroBackend) WriteZeroes(int64, int64, bool) error { return errors.New("read-only") }
func (z zeroBackend) Close() error                         { return nil }

// TestCrashStateBackendConcurrentSelect: reads racing with Select see one
// whole state, never a mix (run with -race).
func TestCrashStateBackendConcurrentSelect(t *testing.T) {
	states := []CrashState{{ID: "s0", Prefix: 3}, {ID: "s1", Prefix: 9}}
	b, fx, _ := newCrashBackend(t, states)
	defer b.Close()
	want := [][]byte{fx.base, fx.reference(t, states[0]), fx.reference(t, states[1])}
	done := make(chan error, 2)
	for range 2 {
		go func() {
			for range 50 {
				p := make([]byte, 64<<10)
				v := NewVec(1)
				v.Append(p)
				if err := b.ReadAt(v, 0); err != nil {
					done <- err
					return
				}
				if !bytes.Equal(p, want[0]) && !bytes.Equal(p, want[1]) && !bytes.Equal(p, want[2]) {
					done <- errors.New("a read saw a mix of states")
					return
				}
			}
			done <- nil
		}()
	}
	for i := range 100 {
		if err := b.Select(i % 2); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
