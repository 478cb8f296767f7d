package uring

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mustNew returns a ring closed at test end, skipping the test when
// io_uring is unavailable.
func mustNew(t *testing.T, entries uint32) *Ring {
	t.Helper()
	r, err := New(entries)
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatalf("New(%d): %v", entries, err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

// tempFile returns an open read-write temp file closed at test end.
func tempFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "f"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// iovec returns one iovec per buffer.
func iovec(bufs ...[]byte) []unix.Iovec {
	iov := make([]unix.Iovec, len(bufs))
	for i, b := range bufs {
		iov[i].Base = &b[0]
		iov[i].SetLen(len(b))
	}
	return iov
}

// submit submits everything prepared and fails the test unless the
// kernel consumed want SQEs.
func submit(t *testing.T, r *Ring, want int) {
	t.Helper()
	n, err := r.Submit()
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if n != want {
		t.Fatalf("Submit consumed %d SQEs, want %d", n, want)
	}
}

// collect waits for and reaps n CQEs.
func collect(t *testing.T, r *Ring, n int) []CQE {
	t.Helper()
	out := make([]CQE, n)
	got := 0
	for got < n {
		if err := r.Wait(); err != nil {
			t.Fatalf("Wait: %v", err)
		}
		got += r.Reap(out[got:])
	}
	if extra := r.Reap(make([]CQE, 1)); extra != 0 {
		t.Fatalf("unexpected extra CQE")
	}
	return out
}

// do submits what is prepared (one SQE) and returns its completion,
// checking its user data.
func do(t *testing.T, r *Ring, userData uint64) CQE {
	t.Helper()
	submit(t, r, 1)
	c := collect(t, r, 1)[0]
	if c.UserData != userData {
		t.Fatalf("CQE user data %#x, want %#x", c.UserData, userData)
	}
	return c
}

func TestNewEntries(t *testing.T) {
	for _, entries := range []uint32{0, 3, 12, 8192} {
		r, err := New(entries)
		if err == nil {
			r.Close()
			t.Errorf("New(%d) succeeded, want error", entries)
		} else if errors.Is(err, ErrUnsupported) || !errors.Is(err, unix.EINVAL) {
			t.Errorf("New(%d): %v, want EINVAL", entries, err)
		}
	}
	for _, entries := range []uint32{1, 2, 64, 4096} {
		r := mustNew(t, entries)
		if got := r.SQSpace(); got != int(entries) {
			t.Errorf("New(%d): SQSpace %d", entries, got)
		}
		if got := len(r.cqes); got != 2*int(entries) {
			t.Errorf("New(%d): %d CQ entries, want %d", entries, got, 2*entries)
		}
		flags, err := unix.FcntlInt(uintptr(r.fd), unix.F_GETFD, 0)
		if err != nil {
			t.Fatal(err)
		}
		if flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("ring fd is not close-on-exec")
		}
	}
}

func TestWriteFsyncRead(t *testing.T) {
	tests := []struct {
		name       string
		off        int64
		len1, len2 int
	}{
		{"start", 0, 4096, 4096},
		{"aligned", 8192, 512, 1536},
		{"unaligned", 12345, 7, 1000},
	}
	r := mustNew(t, 4)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tempFile(t)
			fd := int(f.Fd())
			w1, w2 := make([]byte, tt.len1), make([]byte, tt.len2)
			for j := range w1 {
				w1[j] = byte(j*7 + i)
			}
			for j := range w2 {
				w2[j] = byte(j*13 + 1)
			}
			total := int32(tt.len1 + tt.len2)
			base := uint64(i) << 32

			if !r.PrepWritev(fd, iovec(w1, w2), tt.off, base|1) {
				t.Fatal("PrepWritev: SQ full")
			}
			if c := do(t, r, base|1); c.Res != total {
				t.Fatalf("writev Res %d, want %d", c.Res, total)
			}
			if !r.PrepFsync(fd, true, base|2) {
				t.Fatal("PrepFsync: SQ full")
			}
			if c := do(t, r, base|2); c.Res != 0 {
				t.Fatalf("fsync Res %d, want 0", c.Res)
			}

			r1, r2 := make([]byte, tt.len2), make([]byte, tt.len1) // split differently
			if !r.PrepReadv(fd, iovec(r1, r2), tt.off, base|3) {
				t.Fatal("PrepReadv: SQ full")
			}
			if c := do(t, r, base|3); c.Res != total {
				t.Fatalf("readv Res %d, want %d", c.Res, total)
			}
			want := append(append([]byte(nil), w1...), w2...)
			got := append(append([]byte(nil), r1...), r2...)
			if !bytes.Equal(got, want) {
				t.Fatal("read back data differs from written data")
			}
			// The file holds the same bytes at the same offset.
			check := make([]byte, total)
			if _, err := f.ReadAt(check, tt.off); err != nil || !bytes.Equal(check, want) {
				t.Fatalf("ReadAt: %v, equal %t", err, bytes.Equal(check, want))
			}
		})
	}
}

func TestBatchReads(t *testing.T) {
	const (
		entries = 32
		reads   = 64
		size    = 512
	)
	f := tempFile(t)
	data := make([]byte, reads*size)
	for i := range data {
		data[i] = byte(i/size) ^ byte(i*31)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	fd := int(f.Fd())
	r := mustNew(t, entries)
	bufs := make([][]byte, reads)
	iovs := make([][]unix.Iovec, reads)
	for i := range bufs {
		bufs[i] = make([]byte, size)
		iovs[i] = iovec(bufs[i])
	}

	// Fill the SQ, submit, and repeat: the CQ (2*entries) holds all reads.
	next := 0
	for next < reads {
		for next < reads && r.PrepReadv(fd, iovs[next], int64(next*size), uint64(next)) {
			next++
		}
		if next < reads && r.SQSpace() != 0 {
			t.Fatalf("PrepReadv refused with SQSpace %d", r.SQSpace())
		}
		submit(t, r, entries)
		if got := r.SQSpace(); got != entries {
			t.Fatalf("SQSpace after Submit = %d, want %d", got, entries)
		}
	}
	seen := make([]bool, reads)
	for _, c := range collect(t, r, reads) {
		i := c.UserData
		if i >= reads || seen[i] {
			t.Fatalf("unexpected user data %d", i)
		}
		seen[i] = true
		if c.Res != size {
			t.Fatalf("read %d: Res %d, want %d", i, c.Res, size)
		}
		if !bytes.Equal(bufs[i], data[i*size:(i+1)*size]) {
			t.Fatalf("read %d: wrong data", i)
		}
	}
}

func TestBadFD(t *testing.T) {
	r := mustNew(t, 4)
	buf := make([]byte, 16)
	iov := iovec(buf)
	tests := []struct {
		name string
		prep func(userData uint64) bool
	}{
		{"readv -1", func(u uint64) bool { return r.PrepReadv(-1, iov, 0, u) }},
		{"readv unused", func(u uint64) bool { return r.PrepReadv(1<<20, iov, 0, u) }},
		{"writev -1", func(u uint64) bool { return r.PrepWritev(-1, iov, 0, u) }},
		{"fsync -1", func(u uint64) bool { return r.PrepFsync(-1, false, u) }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := uint64(100 + i)
			if !tt.prep(u) {
				t.Fatal("prep: SQ full")
			}
			if c := do(t, r, u); c.Res != -int32(unix.EBADF) {
				t.Fatalf("Res %d, want %d (-EBADF)", c.Res, -int32(unix.EBADF))
			}
		})
	}
}

func TestWaitOtherGoroutine(t *testing.T) {
	r := mustNew(t, 2)
	type result struct {
		c   CQE
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		var out [2]CQE
		err := r.Wait()
		n := r.Reap(out[:])
		done <- result{out[0], n, err}
	}()
	select {
	case res := <-done:
		t.Fatalf("Wait returned before anything was submitted: %+v", res)
	case <-time.After(50 * time.Millisecond):
	}
	if !r.PrepNop(0xfeedface) {
		t.Fatal("PrepNop: SQ full")
	}
	submit(t, r, 1)
	select {
	case res := <-done:
		if res.err != nil || res.n != 1 || res.c.UserData != 0xfeedface || res.c.Res != 0 {
			t.Fatalf("got %+v, want one NOP CQE with user data 0xfeedface", res)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Wait did not return after the NOP completed")
	}
}

func TestAllocs(t *testing.T) {
	f := tempFile(t)
	fd := int(f.Fd())
	r := mustNew(t, 8)
	wbuf, rbuf := bytes.Repeat([]byte{0xa5}, 4096), make([]byte, 4096)
	wiov, riov := iovec(wbuf), iovec(rbuf)
	out := make([]CQE, 8)
	allocs := testing.AllocsPerRun(50, func() {
		ok := r.PrepWritev(fd, wiov, 0, 1) && r.PrepReadv(fd, riov, 4096, 2) &&
			r.PrepFsync(fd, true, 3) && r.PrepNop(4)
		if !ok {
			panic("prep: SQ full")
		}
		if n, err := r.Submit(); n != 4 || err != nil {
			panic("Submit failed")
		}
		for got := 0; got < 4; {
			if err := r.Wait(); err != nil {
				panic(err)
			}
			got += r.Reap(out[got:])
		}
	})
	if allocs != 0 {
		t.Fatalf("Prep/Submit/Wait/Reap allocate %v times per run, want 0", allocs)
	}
}

func TestSeparateMmap(t *testing.T) {
	r, err := newRing(4, true)
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.cqMap == nil {
		t.Fatal("CQ ring not mapped separately")
	}
	for round := range 3 { // wrap the 4-entry SQ and 8-entry CQ
		for i := range 4 {
			if !r.PrepNop(uint64(round*4 + i)) {
				t.Fatal("PrepNop: SQ full")
			}
		}
		submit(t, r, 4)
		for i, c := range collect(t, r, 4) {
			if c.UserData != uint64(round*4+i) || c.Res != 0 {
				t.Fatalf("round %d: CQE %d = %+v", round, i, c)
			}
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestSubmitNothing(t *testing.T) {
	r := mustNew(t, 4)
	if n, err := r.Submit(); n != 0 || err != nil {
		t.Fatalf("Submit with nothing prepared = %d, %v; want 0, nil", n, err)
	}
	if n := r.Reap(make([]CQE, 4)); n != 0 {
		t.Fatalf("Reap on an empty CQ = %d", n)
	}
}

func TestClose(t *testing.T) {
	r, err := New(4)
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if !r.PrepNop(1) {
		t.Fatal("PrepNop: SQ full")
	}
	submit(t, r, 1)
	collect(t, r, 1)
	for i := range 2 {
		if err := r.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	if _, err := r.Submit(); !errors.Is(err, ErrClosed) {
		t.Errorf("Submit after Close: %v, want ErrClosed", err)
	}
	if err := r.Wait(); !errors.Is(err, ErrClosed) {
		t.Errorf("Wait after Close: %v, want ErrClosed", err)
	}
	if r.PrepNop(2) || r.PrepFsync(0, false, 3) || r.PrepReadv(0, nil, 0, 4) || r.PrepWritev(0, nil, 0, 5) {
		t.Error("Prep succeeded after Close")
	}
	if n := r.SQSpace(); n != 0 {
		t.Errorf("SQSpace after Close = %d, want 0", n)
	}
	if n := r.Reap(make([]CQE, 1)); n != 0 {
		t.Errorf("Reap after Close = %d, want 0", n)
	}
}

// TestRegisterEventfd: a read of an empty pipe completes out of line once
// data arrives, and the registered eventfd is signalled for it, so a poll
// loop wakes without a thread in Wait; a closed ring refuses registration.
func TestRegisterEventfd(t *testing.T) {
	r := mustNew(t, 4)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := r.RegisterEventfd(efd); err != nil {
		t.Fatal(err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	buf := make([]byte, 16)
	if !r.PrepReadv(p[0], iovec(buf), -1, 7) {
		t.Fatal("PrepReadv: SQ full")
	}
	submit(t, r, 1)
	var out [1]CQE
	var cnt [8]byte
	if n := r.Reap(out[:]); n != 0 {
		t.Fatalf("a read of an empty pipe completed at once: %+v", out[0])
	}
	if _, err := unix.Read(efd, cnt[:]); err != unix.EAGAIN {
		t.Fatalf("eventfd signalled before any completion (read: %v)", err)
	}
	if _, err := unix.Write(p[1], []byte("hello")); err != nil {
		t.Fatal(err)
	}
	pfd := []unix.PollFd{{Fd: int32(efd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); n != 1 || err != nil {
		t.Fatalf("eventfd not signalled within 5 s of the completion: poll %d, %v", n, err)
	}
	if n := r.Reap(out[:]); n != 1 || out[0].UserData != 7 || out[0].Res != 5 || string(buf[:5]) != "hello" {
		t.Fatalf("reaped %d: %+v %q", n, out[0], buf[:5])
	}
	closed := mustNew(t, 1)
	closed.Close()
	if err := closed.RegisterEventfd(efd); !errors.Is(err, ErrClosed) {
		t.Fatalf("RegisterEventfd on a closed ring: %v, want ErrClosed", err)
	}
}
