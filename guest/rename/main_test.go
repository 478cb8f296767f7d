package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWorkloadAcks(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if st := run([]string{"-dir", dir, "-versions", "5", "-size", "1000"}, &out); st != exitOK {
		t.Fatalf("status %d: %s", st, out.String())
	}
	var acks []string
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "ACK ") {
			acks = append(acks, l)
		}
	}
	if fmt.Sprint(acks) != "[ACK rename 1 ACK rename 2 ACK rename 3 ACK rename 4 ACK rename 5]" {
		t.Fatalf("acks %q", acks)
	}
	if _, err := os.Stat(filepath.Join(dir, tmpName)); !os.IsNotExist(err) {
		t.Fatalf("temporary file left behind: %v", err)
	}
	out.Reset()
	if st := run([]string{"-check", "-dir", dir, "-acked", "5"}, &out); st != exitOK || !strings.Contains(out.String(), "ok: version 5") {
		t.Fatalf("check: status %d: %s", st, out.String())
	}
}

func TestCheck(t *testing.T) {
	v3 := content(3, 5000)
	torn := append([]byte(nil), v3...)
	copy(torn[4096:], content(4, 5000)[4096:]) // second block from another version
	cases := []struct {
		name   string
		file   []byte // nil: no target file
		acked  int
		status int
		msg    string
		last   string
	}{
		{"no file, nothing acked", nil, 0, exitOK, "ok: no version", "CHECK rename acked=0 lost=0 extra=0"},
		{"no file, acked", nil, 2, exitViolation, "missing", "CHECK rename acked=2 lost=2 extra=0"},
		{"acked version", v3, 3, exitOK, "ok: version 3", "CHECK rename acked=3 lost=0 extra=0"},
		{"newer than acked", v3, 2, exitOK, "ok: version 3", "CHECK rename acked=2 lost=0 extra=1"},
		{"nothing acked, a version there", v3, 0, exitOK, "ok: version 3", "CHECK rename acked=0 lost=0 extra=3"},
		{"older than acked", v3, 7, exitViolation, "older than acknowledged", "CHECK rename acked=7 lost=4 extra=0"},
		{"torn", torn, 3, exitViolation, "not its contents", "CHECK rename acked=3 lost=3 extra=0"},
		{"truncated", v3[:4096], 0, exitViolation, "not its contents", "CHECK rename acked=0 lost=0 extra=0"},
		{"empty", []byte{}, 5, exitViolation, "no header", "CHECK rename acked=5 lost=5 extra=0"},
		{"zeroes", make([]byte, 4096), 0, exitViolation, "header", "CHECK rename acked=0 lost=0 extra=0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.file != nil {
				if err := os.WriteFile(filepath.Join(dir, target), tc.file, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			var out bytes.Buffer
			st := run([]string{"-check", "-dir", dir, "-acked", fmt.Sprint(tc.acked)}, &out)
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if st != tc.status || !strings.Contains(out.String(), tc.msg) || lines[len(lines)-1] != tc.last {
				t.Fatalf("status %d, output %q; want %d, %q and last line %q", st, out.String(), tc.status, tc.msg, tc.last)
			}
		})
	}
}

func TestCheckIOError(t *testing.T) {
	dir := t.TempDir()
	// A directory where the file should be: reading it fails, which is
	// no verdict on the file system.
	if err := os.Mkdir(filepath.Join(dir, target), 0o755); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if st := run([]string{"-check", "-dir", dir, "-acked", "1"}, &out); st != exitError || strings.Contains(out.String(), "CHECK ") {
		t.Fatalf("status %d, output %q; want %d and no CHECK line", st, out.String(), exitError)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"-dir", "x", "-versions", "0"}, {"-dir", "x", "extra"}, {"-bogus"}} {
		var out bytes.Buffer
		if st := run(args, &out); st != exitError {
			t.Errorf("%q: status %d, want %d", args, st, exitError)
		}
	}
}
