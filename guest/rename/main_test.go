package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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
	for _, args := range [][]string{{}, {"-dir", "x", "-versions", "0"}, {"-dir", "x", "extra"}, {"-bogus"}, {"-dir", "x", "-bug", "no-fsync"}, {"-dir", "x", "-tmpfile"}} {
		var out bytes.Buffer
		if st := run(args, &out); st != exitError {
			t.Errorf("%q: status %d, want %d", args, st, exitError)
		}
	}
}

// syncLog records what a workload fsyncs ("dir" for the directory, the
// file's base name otherwise, marked "(unnamed)" while no directory entry
// names it yet) and prints, in order.
type syncLog struct {
	dir    string
	events []string
}

// sync is the workload's fsync seam.
func (l *syncLog) sync(f *os.File) error {
	name := filepath.Base(f.Name())
	if f.Name() == l.dir {
		name = "dir"
	} else if _, err := os.Lstat(f.Name()); os.IsNotExist(err) {
		name += " (unnamed)"
	}
	l.events = append(l.events, "fsync "+name)
	return f.Sync()
}

// Write records each console line.
func (l *syncLog) Write(p []byte) (int, error) {
	l.events = append(l.events, strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func TestWorkloadSyncOrder(t *testing.T) {
	tests := []struct {
		name    string
		create  bool
		tmpfile bool
		bug     string
		want    []string
	}{
		{"replace", false, false, "", []string{"fsync " + tmpName, "fsync dir", "ACK rename 1", "fsync " + tmpName, "fsync dir", "ACK rename 2", "rename: 2 versions replaced"}},
		{"replace, no-dir-fsync", false, false, bugNoDirFsync, []string{"fsync " + tmpName, "ACK rename 1", "fsync " + tmpName, "ACK rename 2", "rename: 2 versions replaced"}},
		{"create", true, false, "", []string{"fsync v-1", "fsync dir", "ACK rename 1", "fsync v-2", "fsync dir", "ACK rename 2", "rename: 2 versions created"}},
		{"create, no-dir-fsync", true, false, bugNoDirFsync, []string{"fsync v-1", "ACK rename 1", "fsync v-2", "ACK rename 2", "rename: 2 versions created"}},
		{"tmpfile", true, true, "", []string{"fsync v-1 (unnamed)", "fsync dir", "ACK rename 1", "fsync v-2 (unnamed)", "fsync dir", "ACK rename 2", "rename: 2 versions created and linked"}},
		{"tmpfile, no-dir-fsync", true, true, bugNoDirFsync, []string{"fsync v-1 (unnamed)", "ACK rename 1", "fsync v-2 (unnamed)", "ACK rename 2", "rename: 2 versions created and linked"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			log := &syncLog{dir: dir}
			c := config{dir: dir, versions: 2, size: 100, create: tt.create, tmpfile: tt.tmpfile, bug: tt.bug, sync: log.sync}
			if err := workload(c, log); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(log.events, tt.want) {
				t.Errorf("events %q\nwant   %q", log.events, tt.want)
			}
		})
	}
}

func TestCreateWorkloadAndCheck(t *testing.T) {
	for _, mode := range [][]string{{"-create"}, {"-create", "-tmpfile"}} {
		t.Run(strings.Join(mode, " "), func(t *testing.T) { testCreateWorkloadAndCheck(t, mode) })
	}
}

func testCreateWorkloadAndCheck(t *testing.T, mode []string) {
	dir := t.TempDir()
	var out bytes.Buffer
	if st := run(append(mode, "-dir", dir, "-versions", "4", "-size", "3000"), &out); st != exitOK {
		t.Fatalf("status %d: %s", st, out.String())
	}
	for v := 1; v <= 4; v++ {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("v-%d", v)))
		if err != nil || !bytes.Equal(b, content(v, 3000)) {
			t.Fatalf("v-%d: %d bytes, %v; want version %d", v, len(b), err, v)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, target)); !os.IsNotExist(err) {
		t.Errorf("-create wrote %s: %v", target, err)
	}
	out.Reset()
	// The checker takes the workload's argument list, -bug included.
	args := append([]string{"-check"}, mode...)
	args = append(args, "-dir", dir, "-versions", "4", "-size", "3000", "-bug", bugNoDirFsync, "-acked", "3")
	if st := run(args, &out); st != exitOK || !strings.HasSuffix(out.String(), "CHECK rename acked=3 lost=0 extra=1\n") {
		t.Errorf("check: status %d: %s", st, out.String())
	}
}

func TestCheckCreated(t *testing.T) {
	whole := func(v int) []byte { return content(v, 2000) }
	cases := []struct {
		name   string
		files  map[string][]byte
		acked  int
		status int
		msg    string
		last   string
	}{
		{"nothing written, nothing acked", nil, 0, exitOK, "acknowledged 0, lost 0, extra 0", "CHECK rename acked=0 lost=0 extra=0"},
		{"all acked there", map[string][]byte{"v-1": whole(1), "v-2": whole(2)}, 2, exitOK, "lost 0, extra 0", "CHECK rename acked=2 lost=0 extra=0"},
		{"unacked whole ones are extra", map[string][]byte{"v-1": whole(1), "v-2": whole(2), "v-3": whole(3)}, 1, exitOK, "extra 2", "CHECK rename acked=1 lost=0 extra=2"},
		{"unacked torn one is allowed", map[string][]byte{"v-1": whole(1), "v-2": whole(2)[:100]}, 1, exitOK, "extra 0", "CHECK rename acked=1 lost=0 extra=0"},
		{"acked one missing", map[string][]byte{"v-1": whole(1), "v-3": whole(3)}, 3, exitViolation, "LOST v-2: open", "CHECK rename acked=3 lost=1 extra=0"},
		{"acked one empty", map[string][]byte{"v-1": {}, "v-2": whole(2)}, 2, exitViolation, "LOST v-1: not a whole version: no header", "CHECK rename acked=2 lost=1 extra=0"},
		{"acked one holds another version", map[string][]byte{"v-1": whole(2)}, 1, exitViolation, "LOST v-1: not a whole version: holds version 2", "CHECK rename acked=1 lost=1 extra=0"},
		{"other names ignored", map[string][]byte{"v-01": whole(1), "v-x": whole(1), target: whole(5)}, 0, exitOK, "extra 0", "CHECK rename acked=0 lost=0 extra=0"},
		{"many lost, details bounded", nil, 15, exitViolation, "5 more lost versions not shown", "CHECK rename acked=15 lost=15 extra=0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, b := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			var out bytes.Buffer
			st := run([]string{"-check", "-create", "-dir", dir, "-acked", fmt.Sprint(tc.acked)}, &out)
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if st != tc.status || !strings.Contains(out.String(), tc.msg) || lines[len(lines)-1] != tc.last {
				t.Fatalf("status %d, output %q; want %d, %q and last line %q", st, out.String(), tc.status, tc.msg, tc.last)
			}
		})
	}
}

func TestCheckCreatedIOError(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "v-1"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, acked := range []string{"1", "0"} { // acknowledged, and extra
		var out bytes.Buffer
		if st := run([]string{"-check", "-create", "-dir", dir, "-acked", acked}, &out); st != exitError || strings.Contains(out.String(), "CHECK ") {
			t.Errorf("-acked %s: status %d, output %q; want %d and no CHECK line", acked, st, out.String(), exitError)
		}
	}
}

func TestAckedFile(t *testing.T) {
	tests := []struct {
		name, keys string
		want       int
		ok         bool
	}{
		{"versions", "rename 1\nrename 2\nrename 3\n", 3, true},
		{"none", "", 0, true},
		{"out of order", "rename 4\nrename 2\n", 4, true},
		{"another workload's key", "fsyncstress 0 1\n", 0, false},
		{"version 0", "rename 0\n", 0, false},
	}
	for _, tt := range tests {
		p := filepath.Join(t.TempDir(), "acked")
		if err := os.WriteFile(p, []byte(tt.keys), 0o644); err != nil {
			t.Fatal(err)
		}
		v, err := ackedFromFile(p, 0)
		if v != tt.want || (err == nil) != tt.ok {
			t.Errorf("%s: ackedFromFile = %d, %v; want %d, ok %v", tt.name, v, err, tt.want, tt.ok)
		}
	}
	if _, err := ackedFromFile("x", 2); err == nil {
		t.Error("-acked and -acked-file together accepted")
	}
}
