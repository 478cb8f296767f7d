package ackfile

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	tests := []struct {
		name, data string
		want       []string
	}{
		{"keys in order", "b 2\na 1\n", []string{"b 2", "a 1"}},
		{"blank lines and spaces", "\n  x  \n\n\ty\n", []string{"x", "y"}},
		{"empty", "", nil},
	}
	for _, tt := range tests {
		p := filepath.Join(t.TempDir(), "acked")
		if err := os.WriteFile(p, []byte(tt.data), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := Read(p)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("%s: Read = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
	if _, err := Read(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing file was read")
	}
}

func TestReadRefusesLarge(t *testing.T) {
	p := filepath.Join(t.TempDir(), "acked")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(MaxSize + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := Read(p); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Read of %d bytes: %v", MaxSize+1, err)
	}
}
