package blk

import "fmt"

// policy is a cache mode: how the host file is opened, what write cache the
// guest is shown at first, and what FLUSH and writes cost on the host, one
// row of this table (policies):
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
type policy struct {
	mode CacheMode
	// directIO: the host file is opened O_DIRECT.
	directIO bool
	// initialWCE is the config writeback value the guest first sees.
	initialWCE bool
	// neverSyncs: flushes are acknowledged and never reach the host, and
	// no write is made durable (cache=unsafe).
	neverSyncs bool
}

// policies is the table above.
var policies = []policy{
	{mode: CacheWriteback, initialWCE: true},
	{mode: CacheWritethrough},
	{mode: CacheNone, directIO: true, initialWCE: true},
	{mode: CacheDirectSync, directIO: true},
	{mode: CacheUnsafe, initialWCE: true, neverSyncs: true},
}

// Mode is the cache mode's name.
func (p policy) Mode() CacheMode { return p.mode }

// DirectIO reports whether the host file is opened O_DIRECT.
func (p policy) DirectIO() bool { return p.directIO }

// InitialWCE is the config writeback value the guest first sees.
func (p policy) InitialWCE() bool { return p.initialWCE }

// FlushSyncs reports whether a guest FLUSH reaches the host as a sync
// (when there is anything to sync).
func (p policy) FlushSyncs() bool { return !p.neverSyncs }

// WriteThrough reports whether a write must be durable before it
// completes, given the write cache state the guest currently sees.
func (p policy) WriteThrough(wce bool) bool { return !p.neverSyncs && !wce }

// policyFor returns the policy of cache mode m ("" is the default,
// writeback).
func policyFor(m CacheMode) (policy, error) {
	if m == "" {
		m = CacheWriteback
	}
	for _, p := range policies {
		if p.mode == m {
			return p, nil
		}
	}
	return policy{}, fmt.Errorf("%w: cache mode %q", ErrBadSpec, m)
}
