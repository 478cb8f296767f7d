package guestmem

import (
	"errors"
	"runtime/debug"
	"testing"

	"golang.org/x/sys/unix"
)

// shrunkMemory maps a 2-page memfd at guest address base and truncates the
// file to its first page, as a hostile vhost-user frontend would: the
// second page of the mapping then raises SIGBUS when touched.
func shrunkMemory(t *testing.T, base uint64) *Memory {
	t.Helper()
	page := uint64(unix.Getpagesize())
	fd, err := unix.MemfdCreate("guestmem-fault-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(2*page)); err != nil {
		t.Fatal(err)
	}
	b, err := unix.Mmap(fd, 0, int(2*page), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	if err := unix.Ftruncate(fd, int64(page)); err != nil {
		t.Fatal(err)
	}
	m, err := New(Region{GuestAddr: base, Host: b})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// sink keeps a read alive that the compiler would otherwise drop.
var sink byte

// TestFaultBecomesError: every accessor, and Guard around direct use of
// Slice's bytes, turns a fault on truncated memory into a FaultError,
// located in guest memory and reported to the handler when the Memory has
// one.
func TestFaultBecomesError(t *testing.T) {
	const base = 0x10000
	page := uint64(unix.Getpagesize())
	gone := base + page + 8 // in the truncated page
	m := shrunkMemory(t, base)
	var handled []error
	hm := m.WithFaultHandler(func(err error) { handled = append(handled, err) })
	touch := func(mem *Memory) func() error {
		return func() error {
			b, err := mem.Slice(gone, 8)
			if err == nil {
				sink = b[0]
			}
			return err
		}
	}

	cases := []struct {
		name    string
		run     func() error
		fault   bool
		inGuest bool
		handled int
	}{
		{"LoadUint16Acquire", func() error { _, err := hm.LoadUint16Acquire(gone); return err }, true, true, 1},
		{"StoreUint16Release", func() error { return hm.StoreUint16Release(gone, 1) }, true, true, 1},
		{"Uint64", func() error { _, err := hm.Uint64(gone); return err }, true, true, 1},
		{"PutUint32", func() error { return hm.PutUint32(gone, 1) }, true, true, 1},
		{"ReadAt across the cut", func() error { return hm.ReadAt(make([]byte, 16), gone-16) }, true, true, 1},
		{"WriteAt", func() error { return hm.WriteAt([]byte{1}, gone) }, true, true, 1},
		{"accessor without handler", func() error { _, err := m.Uint16(gone); return err }, true, true, 0},
		{"slice bytes under Memory.Guard", func() error { return hm.Guard(touch(hm)) }, true, true, 1},
		{"slice bytes under Guard", func() error { return Guard(touch(m)) }, true, false, 0},
		{"page still backed", func() error { return hm.PutUint32(base+8, 7) }, false, false, 0},
		{"error passes through Guard", func() error { return hm.Guard(func() error { return ErrOutOfRange }) }, false, false, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			handled = nil
			err := tc.run()
			var fe *FaultError
			if got := errors.As(err, &fe); got != tc.fault || errors.Is(err, ErrFault) != tc.fault {
				t.Fatalf("got %v, want a fault: %v", err, tc.fault)
			}
			if len(handled) != tc.handled {
				t.Errorf("handler called %d times, want %d", len(handled), tc.handled)
			}
			if debug.SetPanicOnFault(false) {
				t.Errorf("panic-on-fault left set on the goroutine")
			}
			if !tc.fault {
				return
			}
			if fe.InGuest != tc.inGuest || (tc.inGuest && (fe.GuestAddr < base+page || fe.GuestAddr >= base+2*page)) {
				t.Errorf("fault located at guest %#x (in guest %v), want in the truncated page at %#x (%v)", fe.GuestAddr, fe.InGuest, base+page, tc.inGuest)
			}
		})
	}
}

// TestGuardRestoresAndRepanics: Guard leaves the goroutine's panic-on-fault
// setting as it found it and does not swallow panics that are not faults.
func TestGuardRestoresAndRepanics(t *testing.T) {
	if debug.SetPanicOnFault(false) {
		t.Fatal("panic-on-fault already set on the test goroutine")
	}
	Guard(func() error { return nil })
	if debug.SetPanicOnFault(false) {
		t.Errorf("Guard left panic-on-fault set")
	}
	var p *Memory
	cases := []struct {
		name string
		fn   func() error
	}{
		{"plain panic", func() error { panic("boom") }},
		{"nil dereference", func() error { return p.PutUint16(0, 1) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("panic swallowed")
				}
			}()
			Guard(tc.fn)
		})
	}
}
