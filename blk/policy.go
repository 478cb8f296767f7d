package blk

import "fmt"

// policy is a cache mode: how the host file is opened, what write cache the
// guest is shown at first, and what FLUSH and writes cost on the host. One
// type per mode, following the table of issue 3:
//
//	cache=        host file                         guest sees     FLUSH
//	writeback     page cache                        write back     fdatasync
//	writethrough  page cache, writes durable        write through  no-op
//	none          O_DIRECT                          write back     fdatasync
//	directsync    O_DIRECT, writes durable          write through  no-op
//	unsafe        page cache                        write back     acknowledged, never synced
//
// The guest may change the write cache it sees (config writeback, Linux's
// /sys/block/vdX/queue/write_cache). Turning it off switches to write-through
// semantics at once: every later write is durable before it completes.
// Turning it on switches back to write back. In the write-through modes a
// FLUSH is a no-op because every completed write is already durable, so the
// flush engine finds nothing to sync and elides it; should the guest turn the
// cache on, a FLUSH then syncs what was written since, as it must.
// cache=unsafe never syncs, whatever the guest asks: that is its point.
type policy interface {
	// Mode is the cache mode's name.
	Mode() CacheMode
	// DirectIO reports whether the host file is opened O_DIRECT.
	DirectIO() bool
	// InitialWCE is the config writeback value the guest first sees.
	InitialWCE() bool
	// FlushSyncs reports whether a guest FLUSH reaches the host as a sync
	// (when there is anything to sync).
	FlushSyncs() bool
	// WriteThrough reports whether a write must be durable before it
	// completes, given the write cache state the guest currently sees.
	WriteThrough(wce bool) bool
}

// writebackPolicy is cache=writeback.
type writebackPolicy struct{}

// Mode implements policy.
func (writebackPolicy) Mode() CacheMode { return CacheWriteback }

// DirectIO implements policy.
func (writebackPolicy) DirectIO() bool { return false }

// InitialWCE implements policy.
func (writebackPolicy) InitialWCE() bool { return true }

// FlushSyncs implements policy.
func (writebackPolicy) FlushSyncs() bool { return true }

// WriteThrough implements policy.
func (writebackPolicy) WriteThrough(wce bool) bool { return !wce }

// writethroughPolicy is cache=writethrough.
type writethroughPolicy struct{}

// Mode implements policy.
func (writethroughPolicy) Mode() CacheMode { return CacheWritethrough }

// DirectIO implements policy.
func (writethroughPolicy) DirectIO() bool { return false }

// InitialWCE implements policy.
func (writethroughPolicy) InitialWCE() bool { return false }

// FlushSyncs implements policy.
func (writethroughPolicy) FlushSyncs() bool { return true }

// WriteThrough implements policy.
func (writethroughPolicy) WriteThrough(wce bool) bool { return !wce }

// nonePolicy is cache=none.
type nonePolicy struct{}

// Mode implements policy.
func (nonePolicy) Mode() CacheMode { return CacheNone }

// DirectIO implements policy.
func (nonePolicy) DirectIO() bool { return true }

// InitialWCE implements policy.
func (nonePolicy) InitialWCE() bool { return true }

// FlushSyncs implements policy.
func (nonePolicy) FlushSyncs() bool { return true }

// WriteThrough implements policy.
func (nonePolicy) WriteThrough(wce bool) bool { return !wce }

// directsyncPolicy is cache=directsync.
type directsyncPolicy struct{}

// Mode implements policy.
func (directsyncPolicy) Mode() CacheMode { return CacheDirectSync }

// DirectIO implements policy.
func (directsyncPolicy) DirectIO() bool { return true }

// InitialWCE implements policy.
func (directsyncPolicy) InitialWCE() bool { return false }

// FlushSyncs implements policy.
func (directsyncPolicy) FlushSyncs() bool { return true }

// WriteThrough implements policy.
func (directsyncPolicy) WriteThrough(wce bool) bool { return !wce }

// unsafePolicy is cache=unsafe.
type unsafePolicy struct{}

// Mode implements policy.
func (unsafePolicy) Mode() CacheMode { return CacheUnsafe }

// DirectIO implements policy.
func (unsafePolicy) DirectIO() bool { return false }

// InitialWCE implements policy.
func (unsafePolicy) InitialWCE() bool { return true }

// FlushSyncs implements policy.
func (unsafePolicy) FlushSyncs() bool { return false }

// WriteThrough implements policy.
func (unsafePolicy) WriteThrough(bool) bool { return false }

// policyFor returns the policy of cache mode m.
func policyFor(m CacheMode) (policy, error) {
	switch m {
	case CacheWriteback, "":
		return writebackPolicy{}, nil
	case CacheWritethrough:
		return writethroughPolicy{}, nil
	case CacheNone:
		return nonePolicy{}, nil
	case CacheDirectSync:
		return directsyncPolicy{}, nil
	case CacheUnsafe:
		return unsafePolicy{}, nil
	}
	return nil, fmt.Errorf("%w: cache mode %q", ErrBadSpec, m)
}
