package main

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestRecordCheck(t *testing.T) {
	good := make([]byte, 4096)
	encode(good, 3, 41)
	tests := []struct {
		name   string
		mutate func(b []byte)
		w      uint32
		seq    uint64
		want   error
	}{
		{"intact", func([]byte) {}, 3, 41, nil},
		{"payload bit flip", func(b []byte) { b[1000] ^= 1 }, 3, 41, errChecksum},
		{"crc field damaged", func(b []byte) { b[21] ^= 0xff }, 3, 41, errChecksum},
		{"torn: tail zeroed", func(b []byte) { clear(b[2048:]) }, 3, 41, errChecksum},
		{"never written", func(b []byte) { clear(b) }, 3, 41, errMagic},
		{"other writer's record", func([]byte) {}, 2, 41, errIdentity},
		{"stale sequence", func([]byte) {}, 3, 40, errIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := bytes.Clone(good)
			tt.mutate(b)
			if err := check(b, tt.w, tt.seq); !errors.Is(err, tt.want) {
				t.Errorf("check = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestRecordsDiffer(t *testing.T) {
	a, b := make([]byte, 512), make([]byte, 512)
	encode(a, 0, 1)
	encode(b, 0, 2)
	if bytes.Equal(a[headerLen:], b[headerLen:]) {
		t.Error("payloads of different records are equal")
	}
}

func TestRun(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want int
		out  string
	}{
		{"dir", []string{"-dir", t.TempDir(), "-writers", "2", "-records", "20", "-size", "1024"}, 0, "40 of 40 records intact"},
		{"dev as file", []string{"-dev", devFile(t, 1<<20), "-writers", "2", "-records", "8"}, 0, "16 of 16 records intact"},
		{"dev too small", []string{"-dev", devFile(t, 4096), "-writers", "2", "-records", "8"}, 2, "the run needs"},
		{"no target", []string{"-writers", "2"}, 2, "exactly one of -dir and -dev"},
		{"bad size", []string{"-dir", t.TempDir(), "-size", "1000"}, 2, "multiple of 512"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			if got := run(tt.args, &out); got != tt.want || !strings.Contains(out.String(), tt.out) {
				t.Errorf("run = %d, want %d; output:\n%s", got, tt.want, out.String())
			}
		})
	}
}

func devFile(t *testing.T, size int64) string {
	p := t.TempDir() + "/dev"
	f, err := createSized(p, size)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func createSized(p string, size int64) (interface{ Close() error }, error) {
	f, err := os.Create(p)
	if err != nil {
		return nil, err
	}
	return f, f.Truncate(size)
}
