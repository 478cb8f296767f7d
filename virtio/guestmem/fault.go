package guestmem

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
)

// ErrFault reports an access to mapped guest memory that the host could not
// complete. Memory shared by another process can lose its backing under the
// mapping: a vhost-user frontend that truncates an unsealed memfd after
// handing it over makes every later access raise SIGBUS, which would kill
// the whole process; Memory's accessors, and Guard around code that touches
// Slice's bytes itself, turn it into this error.
var ErrFault = errors.New("guestmem: fault accessing guest memory")

// FaultError is a memory fault that an accessor or Guard recovered. It
// wraps ErrFault.
type FaultError struct {
	// Addr is the host address whose access faulted.
	Addr uintptr
	// GuestAddr is the guest physical address Addr stands for; it is
	// meaningful only when InGuest is set (the fault was inside the Memory
	// whose Guard caught it).
	GuestAddr uint64
	InGuest   bool
}

// Error says where the fault was.
func (e *FaultError) Error() string {
	if e.InGuest {
		return fmt.Sprintf("%v at guest address %#x (host %#x): its backing is gone (file truncated?)", ErrFault, e.GuestAddr, e.Addr)
	}
	return fmt.Sprintf("%v at host address %#x", ErrFault, e.Addr)
}

// Unwrap makes errors.Is(err, ErrFault) hold.
func (e *FaultError) Unwrap() error { return ErrFault }

// Guard runs fn on the calling goroutine with memory faults made
// recoverable (runtime/debug.SetPanicOnFault), and returns fn's error, or a
// *FaultError when fn touched memory that faulted. fn is abandoned at the
// fault, so it must not leave shared state half-changed there: wrap a whole
// goroutine body, or one message, not a critical section. Other panics,
// nil dereferences included, propagate unchanged. The goroutine's previous
// panic-on-fault setting is restored on return.
func Guard(fn func() error) error { return guard(nil, fn) }

// Guard is the package-level Guard for a goroutine that touches m; the
// FaultError also locates the fault in guest memory, and is reported to m's
// fault handler (see WithFaultHandler) before Guard returns it.
func (m *Memory) Guard(fn func() error) error { return guard(m, fn) }

// WithFaultHandler returns the same guest memory (same regions, same
// mappings) whose accessors and Guard also hand every fault they recover to
// h, on the faulting goroutine. The owner of the mappings installs it to learn that
// a device goroutine stopped on a fault: a vhost-user session ends itself.
// h must not block.
func (m *Memory) WithFaultHandler(h func(error)) *Memory {
	return &Memory{regions: m.regions, onFault: h}
}

func guard(m *Memory, fn func() error) (err error) {
	defer m.recoverFault(debug.SetPanicOnFault(true), &err)
	return fn()
}

// recoverFault is deferred, with the goroutine's previous panic-on-fault
// setting, by Guard and by every accessor: it restores the setting and
// turns a recovered memory fault into a *FaultError in *errp, located in m
// and reported to m's handler when m is not nil. Other panics go on.
func (m *Memory) recoverFault(old bool, errp *error) {
	r := recover()
	debug.SetPanicOnFault(old)
	if r == nil {
		return
	}
	fe := faultFrom(r)
	if fe == nil {
		panic(r)
	}
	if m != nil {
		fe.GuestAddr, fe.InGuest = m.guestAddr(fe.Addr)
		if m.onFault != nil {
			m.onFault(fe)
		}
	}
	*errp = fe
}

// faultFrom returns the FaultError a recovered panic value stands for, or
// nil when it is not a memory fault at a known address.
func faultFrom(r any) *FaultError {
	if _, ok := r.(runtime.Error); !ok {
		return nil
	}
	a, ok := r.(interface{ Addr() uintptr })
	if !ok {
		return nil
	}
	return &FaultError{Addr: a.Addr()}
}
