package blk

import (
	"bytes"
	"testing"
	"time"

	"github.com/flushvm/flushvm/virtio"
)

// policyHarness is a device on a memBackend under a fault layer with
// rules, error policies werror and rerror, and a channel of the requests
// it held.
func policyHarness(t *testing.T, werror, rerror ErrorPolicy, rules ...string) (*harness, chan ErrorStopEvent) {
	t.Helper()
	stops := make(chan ErrorStopEvent, 16)
	h := newHarness(t, harnessConfig{backend: newMemBackend(1 << 20), faults: parseRules(t, rules...), werror: werror, rerror: rerror,
		opts: Options{Stopped: func(e ErrorStopEvent) { stops <- e }}})
	return h, stops
}

// submitHeld submits r and waits until the device held it: no completion,
// one Stopped event, Stats.Held 1.
func (h *harness) submitHeld(r virtio.MockRequest, stops chan ErrorStopEvent, op string) virtio.MockSubmission {
	h.t.Helper()
	sub := h.submit(r)
	h.kick()
	select {
	case e := <-stops:
		if e.Op != op {
			h.t.Errorf("held %s, want %s (%v)", e.Op, op, e)
		}
	case <-time.After(10 * time.Second):
		h.t.Fatal("the device never held the request")
	}
	if _, ok, _ := h.drv.PopUsed(); ok {
		h.t.Fatal("a held request completed")
	}
	if s := h.dev.Stats(); s.Held != 1 || s.ErrorStops == 0 {
		h.t.Fatalf("stats held %d, stops %d", s.Held, s.ErrorStops)
	}
	return sub
}

// finish waits for sub's completion and returns its status.
func (h *harness) finish(sub virtio.MockSubmission) byte {
	h.t.Helper()
	u := h.waitUsed(1)[0]
	if u.Head != sub.Head {
		h.t.Fatalf("used head %d, want %d", u.Head, sub.Head)
	}
	return h.result(sub).status
}

func TestErrorPolicyStopThenResume(t *testing.T) {
	for _, tc := range []struct {
		name           string
		werror, rerror ErrorPolicy
		rule, op       string
		req            virtio.MockRequest
	}{
		{"werror=stop write", ErrorStop, "", "write sectors=8 eio once", "write", writeReq(8, pattern(512, 3))},
		{"werror=enospc write", ErrorENOSPC, "", "write enospc once", "write", writeReq(8, pattern(512, 3))},
		{"werror=stop flush", ErrorStop, "", "flush eio once", "flush", flushReq()},
		{"rerror=stop read", "", ErrorStop, "read eio once", "read", readReq(8, 512)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, stops := policyHarness(t, tc.werror, tc.rerror, tc.rule)
			if tc.op == "flush" {
				if st := h.do(writeReq(0, pattern(512, 1))).status; st != StatusOK {
					t.Fatalf("write %d", st)
				}
			}
			sub := h.submitHeld(tc.req, stops, tc.op)
			if n := h.dev.Resume(); n != 1 {
				t.Fatalf("Resume retried %d", n)
			}
			if st := h.finish(sub); st != StatusOK {
				t.Fatalf("status after resume %d", st)
			}
			if tc.op == "write" && !bytes.Equal(h.mem.data[8*512:9*512], pattern(512, 3)) {
				t.Error("the retried write is not on the disk")
			}
			if s := h.dev.Stats(); s.Held != 0 || s.Errors != 0 {
				t.Errorf("after resume: held %d errors %d", s.Held, s.Errors)
			}
		})
	}
}

func TestErrorPolicyFailHeldAndReset(t *testing.T) {
	h, stops := policyHarness(t, ErrorStop, "", "write eio")
	sub := h.submitHeld(writeReq(1, pattern(512, 1)), stops, "write")
	if n := h.dev.Resume(); n != 1 {
		t.Fatal("nothing resumed")
	}
	// The rule still fires: the retry is held again.
	select {
	case <-stops:
	case <-time.After(10 * time.Second):
		t.Fatal("a retry that failed again was not held again")
	}
	if n := h.dev.FailHeld(); n != 1 {
		t.Fatalf("FailHeld failed %d", n)
	}
	if st := h.finish(sub); st != StatusIOErr {
		t.Fatalf("status %d, want IOERR", st)
	}
	h.drv.ResetBuffers()
	h.submitHeld(writeReq(2, pattern(512, 1)), stops, "write")
	done := make(chan struct{})
	go func() { h.dev.Reset(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Reset waited for a held request")
	}
	if s := h.dev.Stats(); s.Held != 0 || s.ErrorStops != 3 {
		t.Errorf("held %d stops %d, want 0 and 3", s.Held, s.ErrorStops)
	}
}

func TestErrorPolicyReportAndIgnore(t *testing.T) {
	for _, tc := range []struct {
		name           string
		werror, rerror ErrorPolicy
		rule           string
		req            virtio.MockRequest
		want           byte
	}{
		{"report write", ErrorReport, "", "write eio", writeReq(1, pattern(512, 1)), StatusIOErr},
		{"werror=enospc reports eio", ErrorENOSPC, "", "write eio", writeReq(1, pattern(512, 1)), StatusIOErr},
		{"ignore write", ErrorIgnore, "", "write eio", writeReq(1, pattern(512, 1)), StatusOK},
		{"ignore read", "", ErrorIgnore, "read eio", readReq(1, 512), StatusOK},
		{"werror=stop leaves reads alone", ErrorStop, "", "read eio", readReq(1, 512), StatusIOErr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, stops := policyHarness(t, tc.werror, tc.rerror, tc.rule)
			if st := h.do(tc.req).status; st != tc.want {
				t.Errorf("status %d, want %d", st, tc.want)
			}
			s := h.dev.Stats()
			if tc.want == StatusOK && (s.ErrorsIgnored != 1 || s.Errors != 0) {
				t.Errorf("ignored %d errors %d", s.ErrorsIgnored, s.Errors)
			}
			if tc.want == StatusIOErr && s.Errors != 1 {
				t.Errorf("errors %d", s.Errors)
			}
			if len(stops) != 0 {
				t.Error("the device stopped")
			}
		})
	}
}

// An injected flush failure fails that FLUSH only: the next one syncs
// and succeeds (a host fsync failure, in contrast, fails every later one:
// TestSyncFailureIsSticky or its like).
func TestInjectedFlushFailureIsNotSticky(t *testing.T) {
	h, _ := policyHarness(t, "", "", "flush eio once")
	h.do(writeReq(0, pattern(512, 1)))
	if st := h.do(flushReq()).status; st != StatusIOErr {
		t.Fatalf("first flush %d, want IOERR", st)
	}
	if h.mem.syncs.Load() != 0 {
		t.Error("a failed flush reached the disk")
	}
	if st := h.do(flushReq()).status; st != StatusOK {
		t.Fatalf("second flush %d, want OK", st)
	}
	if h.mem.syncs.Load() != 1 || !bytes.Equal(h.mem.durable[:512], pattern(512, 1)) {
		t.Errorf("syncs %d; the write is not durable after the second flush", h.mem.syncs.Load())
	}
}

func TestParseErrorPolicy(t *testing.T) {
	for _, tc := range []struct {
		in    string
		write bool
		ok    bool
	}{
		{"report", true, true}, {"ignore", false, true}, {"stop", false, true},
		{"enospc", true, true}, {"enospc", false, false}, {"halt", true, false}, {"", true, false},
	} {
		_, err := ParseErrorPolicy(tc.in, tc.write)
		if (err == nil) != tc.ok {
			t.Errorf("%q write=%v: %v", tc.in, tc.write, err)
		}
	}
	sp, err := ParseSpec("path=x,werror=stop,rerror=ignore,faults=f.rules")
	if err != nil || sp.WError != ErrorStop || sp.RError != ErrorIgnore || sp.Faults != "f.rules" {
		t.Errorf("%+v %v", sp, err)
	}
	if _, err := ParseSpec("path=x,crashstates=s.json,faults=f"); err == nil {
		t.Error("crashstates= with faults= accepted")
	}
}

// TestErrorPolicyStopUnderLoad: writes and flushes that fail at random
// under werror=stop are held and retried by a Resume loop running beside
// them until every one completes, each exactly once and successfully
// (run with -race: Resume re-queues a held request while the goroutine
// that held it is still finishing its pass).
func TestErrorPolicyStopUnderLoad(t *testing.T) {
	h, stops := policyHarness(t, ErrorStop, "", "write prob=0.5 eio", "flush prob=0.5 eio")
	go func() {
		for range stops {
		}
	}()
	const n = 32
	subs := make(map[uint16]bool)
	for i := range n {
		r := writeReq(uint64(i), pattern(512, byte(i)))
		if i%4 == 3 {
			r = flushReq()
		}
		subs[h.submit(r).Head] = true
	}
	h.kick()
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
				h.dev.Resume()
			}
		}
	}()
	used := h.waitUsed(n)
	close(done)
	for _, u := range used {
		if !subs[u.Head] {
			t.Fatalf("head %d completed twice or was never submitted", u.Head)
		}
		delete(subs, u.Head)
	}
	s := h.dev.Stats()
	if s.Held != 0 || s.Errors != 0 || s.ErrorStops == 0 || s.Writes != n-n/4 {
		t.Errorf("stats: held %d errors %d stops %d writes %d", s.Held, s.Errors, s.ErrorStops, s.Writes)
	}
}
