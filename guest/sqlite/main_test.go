package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// needSQLite points the workload at the host's sqlite3 or skips.
func needSQLite(t *testing.T) {
	t.Helper()
	p, err := exec.LookPath("sqlite3")
	if err != nil {
		t.Skip("sqlite3 not installed (scripts/deps.sh installs it)")
	}
	sqlite3Path = p
}

func keys(t *testing.T, lines string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "acked")
	if err := os.WriteFile(p, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWorkloadThenCheck(t *testing.T) {
	needSQLite(t)
	for _, journal := range []string{"delete", "wal"} {
		t.Run(journal, func(t *testing.T) {
			dir := t.TempDir()
			var out strings.Builder
			if st := run([]string{"-dir", dir, "-ack", "-records", "5", "-journal", journal}, &out); st != exitOK {
				t.Fatalf("workload: status %d: %s", st, out.String())
			}
			var acks []string
			for _, l := range strings.Split(out.String(), "\n") {
				if k, ok := strings.CutPrefix(l, "ACK "); ok {
					acks = append(acks, k)
				}
			}
			if strings.Join(acks, ",") != "sqlite 1,sqlite 2,sqlite 3,sqlite 4,sqlite 5" {
				t.Fatalf("acknowledgements %q", acks)
			}
			out.Reset()
			st := run([]string{"-check", "-dir", dir, "-acked-file", keys(t, "sqlite 1\nsqlite 2\nsqlite 3\n")}, &out)
			if st != exitOK || !strings.Contains(out.String(), "CHECK sqlite acked=3 lost=0 extra=2") {
				t.Errorf("check: status %d: %s", st, out.String())
			}
		})
	}
}

func TestCheckFindsLostAndDamaged(t *testing.T) {
	needSQLite(t)
	dir := t.TempDir()
	var out strings.Builder
	if st := run([]string{"-dir", dir, "-records", "4"}, &out); st != exitOK {
		t.Fatalf("workload: status %d: %s", st, out.String())
	}
	db := filepath.Join(dir, dbName)
	// Row 2 deleted, row 3 damaged.
	if b, err := exec.Command(sqlite3Path, db, "DELETE FROM t WHERE id = 2; UPDATE t SET payload = 'torn' WHERE id = 3;").CombinedOutput(); err != nil {
		t.Fatalf("sqlite3: %v: %s", err, b)
	}
	out.Reset()
	st := run([]string{"-check", "-dir", dir, "-acked-file", keys(t, "sqlite 1\nsqlite 2\nsqlite 3\n")}, &out)
	got := out.String()
	if st != exitViolation || !strings.Contains(got, "LOST sqlite 2\n") || !strings.Contains(got, "LOST sqlite 3\n") ||
		!strings.Contains(got, "CHECK sqlite acked=3 lost=2 extra=1") {
		t.Errorf("check: status %d: %s", st, got)
	}
	// A file that is not a database is damage, not an error.
	if err := os.WriteFile(db, []byte(strings.Repeat("garbage!", 1024)), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if st := run([]string{"-check", "-dir", dir, "-acked-file", keys(t, "")}, &out); st != exitViolation {
		t.Errorf("garbage database: status %d: %s", st, out.String())
	}
}

func TestCheckEmpty(t *testing.T) {
	needSQLite(t)
	tests := []struct {
		name, setup, acked string
		status             int
	}{
		{"no database, nothing acknowledged", "", "", exitOK},
		{"no database, a row acknowledged", "", "sqlite 1\n", exitViolation},
		{"no table yet", "PRAGMA journal_mode=wal;", "", exitOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.setup != "" {
				if b, err := exec.Command(sqlite3Path, filepath.Join(dir, dbName), tt.setup).CombinedOutput(); err != nil {
					t.Fatalf("sqlite3: %v: %s", err, b)
				}
			}
			var out strings.Builder
			if st := run([]string{"-check", "-dir", dir, "-acked-file", keys(t, tt.acked)}, &out); st != tt.status {
				t.Errorf("status %d, want %d: %s", st, tt.status, out.String())
			}
		})
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{}, {"-dir", "d", "-journal", "memory"}, {"-dir", "d", "-sync", "extra"}, {"-dir", "d", "-check"},
		{"-dir", "d", "-records", "0"}, {"-dir", "d", "x"}, {"-dir", "d", "-check", "-ack", "-acked-file", "f"},
	} {
		if st := run(args, &strings.Builder{}); st != exitError {
			t.Errorf("%q: status %d, want %d", args, st, exitError)
		}
	}
}
