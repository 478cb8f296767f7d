package protocol

import (
	"strings"
	"testing"
)

func TestCheckFileSystem(t *testing.T) {
	tests := []struct {
		fs   string
		size int64
		err  string
	}{
		{FSExt4, 16 << 20, ""},
		{FSExt4, 8 << 20, "at least 16M"},
		{FSXFS, 300 << 20, ""},
		{FSXFS, 128 << 20, "at least 300M"},
		{FSBtrfs, 128 << 20, ""},
		{FSBtrfs, 64 << 20, "at least 128M"},
		{"zfs", 1 << 30, "want one of"},
	}
	for _, tt := range tests {
		err := CheckFileSystem(tt.fs, tt.size)
		if (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("CheckFileSystem(%s, %d) = %v, want %q", tt.fs, tt.size, err, tt.err)
		}
	}
}
