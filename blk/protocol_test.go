package blk

import (
	"testing"

	"github.com/flushvm/flushvm/protocol"
)

// TestCacheModeNames keeps the typed cache modes and the contract's names
// (which the harness and the QEMU stand-in check SPECs against) the same
// list in the same order.
func TestCacheModeNames(t *testing.T) {
	if len(CacheModes) != len(protocol.CacheModes) {
		t.Fatalf("blk has %d cache modes, protocol %d", len(CacheModes), len(protocol.CacheModes))
	}
	for i, m := range CacheModes {
		if string(m) != protocol.CacheModes[i] {
			t.Errorf("cache mode %d: blk %q, protocol %q", i, m, protocol.CacheModes[i])
		}
	}
}
