package blk

import (
	"errors"
	"fmt"
	"strings"
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

// ErrBadSpec reports a --disk SPEC that cannot be parsed.
var ErrBadSpec = errors.New("bad disk spec")

// Spec is a parsed --disk SPEC:
//
//	path=FILE[,cache=MODE][,readonly=on|off][,serial=STRING][,powercut=POLICY]
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
}

// HasPowerCut reports whether the disk runs on the power-cut model.
func (s Spec) HasPowerCut() bool { return s.PowerCut.Kind != "" }

// MaxSerialLen is the size of the virtio-blk GET_ID answer.
const MaxSerialLen = 20

// ParseSpec parses a --disk SPEC.
func ParseSpec(s string) (Spec, error) {
	sp := Spec{Cache: CacheWriteback}
	if strings.TrimSpace(s) == "" {
		return sp, fmt.Errorf("%w: empty (want path=FILE[,cache=MODE][,readonly=on|off][,serial=STRING][,powercut=POLICY])", ErrBadSpec)
	}
	seen := map[string]bool{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return sp, fmt.Errorf("%w %q: %q is not key=value", ErrBadSpec, s, kv)
		}
		if seen[k] {
			return sp, fmt.Errorf("%w %q: %s given twice", ErrBadSpec, s, k)
		}
		seen[k] = true
		switch k {
		case "path":
			if v == "" {
				return sp, fmt.Errorf("%w %q: empty path", ErrBadSpec, s)
			}
			sp.Path = v
		case "cache":
			m, err := ParseCacheMode(v)
			if err != nil {
				return sp, fmt.Errorf("%w %q: %v", ErrBadSpec, s, err)
			}
			sp.Cache = m
		case "readonly":
			switch v {
			case "on":
				sp.ReadOnly = true
			case "off":
				sp.ReadOnly = false
			default:
				return sp, fmt.Errorf("%w %q: readonly=%q, want on or off", ErrBadSpec, s, v)
			}
		case "serial":
			if len(v) > MaxSerialLen {
				return sp, fmt.Errorf("%w %q: serial longer than %d bytes", ErrBadSpec, s, MaxSerialLen)
			}
			sp.Serial = v
		case "powercut":
			p, err := ParsePowerCutPolicy(v)
			if err != nil {
				return sp, fmt.Errorf("%w %q: %v", ErrBadSpec, s, err)
			}
			sp.PowerCut = p
		default:
			return sp, fmt.Errorf("%w %q: unknown key %q (known: path, cache, readonly, serial, powercut)", ErrBadSpec, s, k)
		}
	}
	if sp.Path == "" {
		return sp, fmt.Errorf("%w %q: path= is required", ErrBadSpec, s)
	}
	if sp.ReadOnly && sp.HasPowerCut() {
		return sp, fmt.Errorf("%w %q: powercut= needs a writable disk (readonly=on has nothing to lose)", ErrBadSpec, s)
	}
	return sp, nil
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
