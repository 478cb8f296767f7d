package blk

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrorPolicy is what the device does when the disk under it fails a
// request (a host I/O error or an injected fault), in QEMU's vocabulary:
// SPEC keys werror= (writes, discards, write-zeroes and flushes) and
// rerror= (reads).
type ErrorPolicy string

// The error policies.
const (
	// ErrorReport completes the request with VIRTIO_BLK_S_IOERR (the
	// default).
	ErrorReport ErrorPolicy = "report"
	// ErrorIgnore completes the request as if it had succeeded. Dangerous:
	// the guest believes data is written (or read) that is not.
	ErrorIgnore ErrorPolicy = "ignore"
	// ErrorENOSPC stops on ENOSPC and reports every other error (werror
	// only): a full host file system can be grown and the VM resumed.
	ErrorENOSPC ErrorPolicy = "enospc"
	// ErrorStop holds the request, not completed, and tells the VMM
	// (Options.Stopped), which pauses the VM; Device.Resume retries the
	// held requests, Device.FailHeld fails them.
	ErrorStop ErrorPolicy = "stop"
)

// ParseErrorPolicy reads the value of werror= (write true) or rerror=.
func ParseErrorPolicy(s string, write bool) (ErrorPolicy, error) {
	switch p := ErrorPolicy(s); p {
	case ErrorReport, ErrorIgnore, ErrorStop:
		return p, nil
	case ErrorENOSPC:
		if write {
			return p, nil
		}
	}
	if write {
		return "", fmt.Errorf("werror=%q, want report, ignore, enospc or stop", s)
	}
	return "", fmt.Errorf("rerror=%q, want report, ignore or stop", s)
}

// errorAction is what a policy decides for one error.
type errorAction int

const (
	actReport errorAction = iota
	actIgnore
	actStop
)

// action is what p decides for err.
func (p ErrorPolicy) action(err error) errorAction {
	switch p {
	case ErrorIgnore:
		return actIgnore
	case ErrorStop:
		return actStop
	case ErrorENOSPC:
		if errors.Is(err, unix.ENOSPC) {
			return actStop
		}
	}
	return actReport
}

// ErrorStopEvent is one request a stop policy held (Options.Stopped).
type ErrorStopEvent struct {
	// Op is the request: "read", "write", "discard", "write-zeroes" or
	// "flush".
	Op string
	// Sector is where it starts (0 for a flush).
	Sector uint64
	// Err is the error the disk returned.
	Err error
}

// String is the event in one line.
func (e ErrorStopEvent) String() string {
	if e.Op == "flush" {
		return fmt.Sprintf("flush failed: %v", e.Err)
	}
	return fmt.Sprintf("%s at sector %d failed: %v", e.Op, e.Sector, e.Err)
}

// opName names a request type for ErrorStopEvent.
func opName(typ uint32) string {
	switch typ {
	case TypeIn:
		return "read"
	case TypeOut:
		return "write"
	case TypeFlush:
		return "flush"
	case TypeDiscard:
		return "discard"
	case TypeWriteZeroes:
		return "write-zeroes"
	}
	return fmt.Sprintf("type %d", typ)
}

// hostError completes a request the backend failed with err as the
// disk's policy says, and reports whether it held the request instead
// (the caller must then not publish it).
func (d *Device) hostError(s *slot, err error) (held bool) {
	pol := d.spec.WError
	if s.req.typ == TypeIn {
		pol = d.spec.RError
	}
	switch pol.action(err) {
	case actIgnore:
		d.c.errorsIgnored.Add(1)
		written := uint32(1)
		if s.req.typ == TypeIn {
			written += uint32(s.req.data.Len())
		}
		d.complete(s, StatusOK, written)
		return false
	case actStop:
		if s.q.st.hold(s, err) {
			return true
		}
		// The device is resetting: nothing will resume it.
	}
	d.c.errors.Add(1)
	d.complete(s, StatusIOErr, 1)
	return false
}

// hold keeps s, not completed, until Resume or FailHeld, and tells the
// VMM; it refuses (false) once the activation is stopping, so a request
// failing while Reset runs is reported instead of held forever.
func (st *activeState) hold(s *slot, err error) bool {
	// Read the request before it is in the list: from then on Resume may
	// hand it to another worker.
	ev := ErrorStopEvent{Op: opName(s.req.typ), Sector: s.req.sector, Err: err}
	st.heldMu.Lock()
	if st.closing {
		st.heldMu.Unlock()
		return false
	}
	st.held = append(st.held, s)
	d := st.d
	d.c.held.Add(1) // under the lock: takeHeld's subtraction never overtakes it
	st.heldMu.Unlock()
	d.c.errorStops.Add(1)
	if d.stopped != nil {
		d.stopped(ev)
	}
	return true
}

// takeHeld empties the held list and returns what it held.
func (st *activeState) takeHeld() []*slot {
	st.heldMu.Lock()
	defer st.heldMu.Unlock()
	held := st.held
	st.held = make([]*slot, 0, cap(held))
	st.d.c.held.Add(^uint64(len(held) - 1))
	return held
}

// Resume retries every request a stop policy holds (after the VM was
// resumed, or the cause removed) and returns how many. A retry that fails
// again is held again.
func (d *Device) Resume() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run == nil {
		return 0
	}
	held := d.run.takeHeld()
	for _, s := range held {
		if s.req.typ == TypeFlush {
			d.run.flushes <- s
		} else {
			d.run.work <- s
		}
	}
	return len(held)
}

// FailHeld completes every request a stop policy holds with IOERR and
// returns how many.
func (d *Device) FailHeld() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run == nil {
		return 0
	}
	return d.run.failHeld()
}

// closeHeld fails the held requests and refuses to hold any more: Reset
// calls it before it waits for the requests in flight.
func (st *activeState) closeHeld() {
	st.heldMu.Lock()
	st.closing = true
	st.heldMu.Unlock()
	st.failHeld()
}

// failHeld completes the held requests with IOERR.
func (st *activeState) failHeld() int {
	held := st.takeHeld()
	for _, s := range held {
		if !st.faulted.Load() {
			st.guard(func() error {
				st.d.c.errors.Add(1)
				st.d.complete(s, StatusIOErr, 1)
				return nil
			})
		}
		s.q.addDone(s)
		s.q.publish()
	}
	return len(held)
}
