package protocol

import (
	"errors"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"512M", 512 << 20, true},
		{"512m", 512 << 20, true},
		{"1G", 1 << 30, true},
		{"2GiB", 2 << 30, true},
		{"2GB", 2 << 30, true},
		{"65536K", 64 << 20, true},
		{"512k", 512 << 10, true},
		{"1T", 1 << 40, true},
		{"256", 256, true},
		{"4096", 4096, true},
		{"1MB", 1 << 20, true},
		{"", 0, false},
		{"0", 0, false},
		{"-1G", 0, false},
		{"-1", 0, false},
		{"G", 0, false},
		{"12X", 0, false},
		{"99999999999G", 0, false},
		{"99999999999T", 0, false},
	}
	for _, tc := range tests {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadSize) {
			t.Errorf("ParseSize(%q): error %v is not ErrBadSize", tc.in, err)
		}
	}
}
