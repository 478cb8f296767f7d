package blk

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestImageLock checks the image lock: a writer excludes every other
// opener, readers share, locking=off (NoLock) opts out, and closing
// releases the lock.
func TestImageLock(t *testing.T) {
	tests := []struct {
		name          string
		first, second FileOptions
		locked        bool
	}{
		{"writer then writer", FileOptions{}, FileOptions{}, true},
		{"writer then reader", FileOptions{}, FileOptions{ReadOnly: true}, true},
		{"reader then writer", FileOptions{ReadOnly: true}, FileOptions{}, true},
		{"reader then reader", FileOptions{ReadOnly: true}, FileOptions{ReadOnly: true}, false},
		{"writer then locking=off", FileOptions{}, FileOptions{NoLock: true}, false},
		{"locking=off then writer", FileOptions{NoLock: true}, FileOptions{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk.img")
			if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			a, err := OpenFile(path, tc.first)
			if err != nil {
				t.Fatal(err)
			}
			b, err := OpenFile(path, tc.second)
			if tc.locked != errors.Is(err, ErrLocked) {
				t.Fatalf("second open: %v, want locked %v", err, tc.locked)
			}
			if err == nil {
				b.Close()
			}
			a.Close()
			if c, err := OpenFile(path, tc.second); err != nil {
				t.Fatalf("open after the first closed: %v", err)
			} else {
				c.Close()
			}
		})
	}
}
