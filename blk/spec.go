package blk

import (
	"fmt"
	"strconv"

	"github.com/flushvm/flushvm/protocol"
)

// CacheMode is a host cache and sync policy, named as QEMU names them.
type CacheMode string

// The cache modes a disk may use.
const (
	// CacheWriteback: page cache; the guest sees a write-back cache and its
	// FLUSH becomes fdatasync. The default.
	CacheWriteback CacheMode = "writeback"
	// CacheWritethrough: page cache; each write is durable before it
	// completes; the guest sees a write-through cache.
	CacheWritethrough CacheMode = "writethrough"
	// CacheNone: O_DIRECT; the guest sees a write-back cache; FLUSH is
	// fdatasync.
	CacheNone CacheMode = "none"
	// CacheDirectSync: O_DIRECT and each write durable before completion.
	CacheDirectSync CacheMode = "directsync"
	// CacheUnsafe: page cache; flushes are acknowledged and never synced.
	CacheUnsafe CacheMode = "unsafe"
)

// CacheModes lists every cache mode, default first.
var CacheModes = []CacheMode{CacheWriteback, CacheWritethrough, CacheNone, CacheDirectSync, CacheUnsafe}

// ErrBadSpec reports a --disk SPEC that cannot be parsed (protocol's).
var ErrBadSpec = protocol.ErrBadSpec

// Spec is a parsed --disk SPEC:
//
//	path=FILE[,cache=MODE][,readonly=on|off][,serial=STRING][,powercut=POLICY][,locking=on|off]
//	    [,discard=unmap|ignore][,crashstates=FILE][,faults=FILE]
//	    [,werror=report|ignore|enospc|stop][,rerror=report|ignore|stop][,queues=N]
//	    [,aio=threads|io_uring]
//
// Unknown keys are errors, never ignored, so a typo cannot silently change
// a disk's semantics.
//
// powercut=POLICY (see ParsePowerCutPolicy) puts the power-cut model
// (VolatileCache) under the device: the disk gets a volatile write cache
// that a power cut can lose by POLICY. It is valid with every cache mode —
// the cache mode decides what the guest's FLUSH and write-through writes
// do, the model is the disk under them, so cache=unsafe (whose flushes never
// reach the disk) shows what an unsafe mode loses and the safe modes show
// that they lose nothing acknowledged — and invalid with readonly=on, which
// has nothing to lose.
//
// crashstates=FILE (a CrashStateSet) makes the disk a crash state disk
// (CrashStateBackend): path= is the base image, opened read-only, and the
// disk shows the crash states FILE lists, one at a time, as a checker guest
// asks for them; the guest's writes stay in memory. The backend sets the
// serial, and a crash state disk has no power to cut and is writable, so
// crashstates= is invalid with serial=, powercut= and readonly=on.
//
// faults=FILE loads fault rules (faults.go) into the disk's fault layer
// (FaultBackend); werror= and rerror= are the error policies
// (ErrorPolicy) for failed writes and flushes, and reads. Neither goes
// with crashstates=.
type Spec struct {
	// Path is the host file or block device backing the disk.
	Path string
	// Cache is the sync policy.
	Cache CacheMode
	// ReadOnly makes the disk refuse writes (VIRTIO_BLK_F_RO).
	ReadOnly bool
	// Serial is the string GET_ID returns (at most 20 bytes).
	Serial string
	// PowerCut is the policy of the disk's power-cut model; the zero value
	// (empty Kind) means the disk has none.
	PowerCut PowerCutPolicy
	// NoLock is locking=off: the image is opened without its lock
	// (FileOptions.NoLock).
	NoLock bool
	// IgnoreDiscard is discard=ignore (QEMU's): the guest's DISCARD
	// requests complete without reaching the image. The default,
	// discard=unmap, passes them on (a hole punched in the file).
	IgnoreDiscard bool
	// CrashStates is crashstates=FILE: the crash state set the disk
	// shows ("": an ordinary disk).
	CrashStates string
	// Faults is faults=FILE: the disk's fault rules ("": none at start).
	Faults string
	// WError and RError are the error policies for failed writes (and
	// discards, write-zeroes, flushes) and reads; ParseSpec sets both to
	// ErrorReport unless the SPEC says otherwise.
	WError, RError ErrorPolicy
	// Queues is queues=N: the number of request virtqueues, each served
	// by its own loop with its own interrupt vector (0: the transport's
	// default, one per vCPU under flushvm run).
	Queues int
	// AIO is aio=: the engine that executes reads and writes (AIOThreads
	// when the SPEC does not say).
	AIO AIOEngine
}

// AIOEngine names an I/O engine, in QEMU's vocabulary.
type AIOEngine string

// The I/O engines.
const (
	// AIOThreads: a pool of worker goroutines, each doing blocking
	// preadv/pwritev. The default, and the fallback of AIOIOUring.
	AIOThreads AIOEngine = "threads"
	// AIOIOUring: each queue submits its reads and O_DIRECT writes to an
	// io_uring of its own, one io_uring_enter per pass over the ring, and
	// its loop completes them in batches (inline ones at once, later ones
	// when the ring's eventfd wakes it). Requests the ring cannot take as
	// they are (a layer in the way: power-cut model, write log, active
	// fault rules; an O_DIRECT bounce; buffered writes, which Linux hands
	// to a kernel worker on most file systems; write-through writes, which
	// need a sync before they complete) run on the worker pool, and so
	// does the whole disk where the kernel refuses io_uring.
	AIOIOUring AIOEngine = "io_uring"
)

// HasPowerCut reports whether the disk runs on the power-cut model.
func (s Spec) HasPowerCut() bool { return s.PowerCut.Kind != "" }

// MaxSerialLen is the size of the virtio-blk GET_ID answer.
const MaxSerialLen = 20

// ParseSpec parses a --disk SPEC.
func ParseSpec(s string) (Spec, error) {
	sp := Spec{Cache: CacheWriteback, WError: ErrorReport, RError: ErrorReport, AIO: AIOThreads}
	kvs, err := protocol.SplitDiskSpec(s)
	if err != nil {
		return sp, err
	}
	for _, kv := range kvs {
		if err := sp.set(kv.Key, kv.Value); err != nil {
			return sp, fmt.Errorf("%w %q: %v", ErrBadSpec, s, err)
		}
	}
	if sp.ReadOnly && sp.HasPowerCut() {
		return sp, fmt.Errorf("%w %q: powercut= needs a writable disk (readonly=on has nothing to lose)", ErrBadSpec, s)
	}
	if err := sp.checkCrashStates(kvs); err != nil {
		return sp, fmt.Errorf("%w %q: %v", ErrBadSpec, s, err)
	}
	return sp, nil
}

// checkCrashStates refuses the keys crashstates= cannot go with.
func (sp *Spec) checkCrashStates(kvs []protocol.DiskSpecKey) error {
	if sp.CrashStates == "" {
		return nil
	}
	switch _, serial := protocol.DiskSpecValue(kvs, "serial"); {
	case sp.HasPowerCut():
		return fmt.Errorf("crashstates= and powercut= do not go together (a crash state disk has no power to cut)")
	case sp.ReadOnly:
		return fmt.Errorf("crashstates= needs a writable disk (the guest's writes stay in memory; the image is never written)")
	case serial:
		return fmt.Errorf("crashstates= and serial= do not go together (the serial names the state shown)")
	case sp.Faults != "" || sp.WError != ErrorReport || sp.RError != ErrorReport:
		return fmt.Errorf("crashstates= does not go with faults=, werror= or rerror= (a crash state disk is checked, not failed)")
	}
	return nil
}

// set checks the value of one SPEC key and sets it.
func (sp *Spec) set(key, v string) error {
	var err error
	switch key {
	case "path":
		sp.Path = v
	case "cache":
		sp.Cache, err = ParseCacheMode(v)
	case "readonly":
		on, ok := protocol.ParseOnOff(v)
		if !ok {
			return fmt.Errorf("readonly=%q, want on or off", v)
		}
		sp.ReadOnly = on
	case "serial":
		if len(v) > MaxSerialLen {
			return fmt.Errorf("serial longer than %d bytes", MaxSerialLen)
		}
		sp.Serial = v
	case "powercut":
		sp.PowerCut, err = ParsePowerCutPolicy(v)
	case "locking":
		on, ok := protocol.ParseOnOff(v)
		if !ok {
			return fmt.Errorf("locking=%q, want on or off", v)
		}
		sp.NoLock = !on
	case "discard":
		if v != "unmap" && v != "ignore" {
			return fmt.Errorf("discard=%q, want unmap or ignore", v)
		}
		sp.IgnoreDiscard = v == "ignore"
	case "crashstates":
		if v == "" {
			return fmt.Errorf("empty crashstates=")
		}
		sp.CrashStates = v
	case "faults":
		if v == "" {
			return fmt.Errorf("empty faults=")
		}
		sp.Faults = v
	case "werror":
		sp.WError, err = ParseErrorPolicy(v, true)
	case "rerror":
		sp.RError, err = ParseErrorPolicy(v, false)
	case "aio":
		if v != string(AIOThreads) && v != string(AIOIOUring) {
			return fmt.Errorf("aio=%q, want threads or io_uring", v)
		}
		sp.AIO = AIOEngine(v)
	case "queues":
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > MaxQueues {
			return fmt.Errorf("queues=%q, want a number 1..%d", v, MaxQueues)
		}
		sp.Queues = n
	}
	return err
}

// ParseCacheMode returns the cache mode named s.
func ParseCacheMode(s string) (CacheMode, error) {
	for _, m := range CacheModes {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown cache mode %q (want writeback, writethrough, none, directsync or unsafe)", s)
}
