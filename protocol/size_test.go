package protocol

import (
	"errors"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		bare uint64
		want uint64
		ok   bool
	}{
		{"512M", BareMiB, 512 << 20, true},
		{"512m", BareMiB, 512 << 20, true},
		{"1G", BareMiB, 1 << 30, true},
		{"2GiB", BareMiB, 2 << 30, true},
		{"2GB", BareBytes, 2 << 30, true},
		{"65536K", BareMiB, 64 << 20, true},
		{"512k", BareBytes, 512 << 10, true},
		{"1T", BareBytes, 1 << 40, true},
		{"256", BareMiB, 256 << 20, true},
		{"4096", BareBytes, 4096, true},
		{"1MB", BareMiB, 1 << 20, true},
		{"", BareMiB, 0, false},
		{"0", BareBytes, 0, false},
		{"-1G", BareMiB, 0, false},
		{"-1", BareBytes, 0, false},
		{"G", BareMiB, 0, false},
		{"12X", BareBytes, 0, false},
		{"99999999999G", BareMiB, 0, false},
		{"99999999999T", BareBytes, 0, false},
	}
	for _, tc := range tests {
		got, err := ParseSize(tc.in, tc.bare)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q, %d) = %d, %v; want %d, ok %v", tc.in, tc.bare, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadSize) {
			t.Errorf("ParseSize(%q): error %v is not ErrBadSize", tc.in, err)
		}
	}
}
