package l1qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/host/debpkg"
)

const madison = ` qemu-system-x86 | 1:10.0.2+ds-2+deb13u1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
qemu-system-x86 | 1:7.2+dfsg-7+deb12u18+b3 | http://deb.debian.org/debian bookworm/main amd64 Packages
qemu-system-x86 | 1:7.2+dfsg-7+deb12u15 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
`

func TestSuiteVersion(t *testing.T) {
	tests := []struct {
		name, out, suite, want string
	}{
		{"backports", madison, "bookworm-backports", "1:10.0.2+ds-2+deb13u1~bpo12+1"},
		{"the release itself", madison, "bookworm", "1:7.2+dfsg-7+deb12u18+b3"},
		{"a suite apt does not know", madison, "trixie-backports", ""},
		{"no lines", "", "bookworm-backports", ""},
		{"a malformed line", "qemu-system-x86 1:10 bookworm-backports\n", "bookworm-backports", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := suiteVersion([]byte(tc.out), tc.suite); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestMajor(t *testing.T) {
	for v, want := range map[string]int{"10.0.2": 10, "7.2.22": 7, "9.1": 9, "": 0, "x.1": 0} {
		if got := major(v); got != want {
			t.Errorf("major(%q) = %d, want %d", v, got, want)
		}
	}
}

// fakeQEMU writes an executable at path that prints QEMU's version banner
// with version v.
func fakeQEMU(t *testing.T, path, v string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\necho 'QEMU emulator version " + v + " (Debian)'\necho 'Copyright (c) 2003-2025'\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestFindEnv(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "qemu-system-x86_64")
	fakeQEMU(t, bin, "7.2.22")
	t.Setenv(Env, bin)
	q, fallback := Find(context.Background(), t.TempDir())
	if fallback != nil {
		t.Fatal(fallback)
	}
	if q.Version != "7.2.22" || q.Exec[0] != bin || len(q.Exec) != 1 || q.Source != "$"+Env {
		t.Errorf("got %+v", q)
	}
	t.Setenv(Env, filepath.Join(dir, "missing"))
	if _, err := Find(context.Background(), t.TempDir()); err == nil {
		t.Error("a missing $FLUSHVM_L1_QEMU was accepted")
	}
}

func TestFindNewSystemQEMU(t *testing.T) {
	dir := t.TempDir()
	fakeQEMU(t, filepath.Join(dir, "qemu-system-x86_64"), "10.1.0")
	t.Setenv(Env, "")
	t.Setenv("PATH", dir)
	q, fallback := Find(context.Background(), t.TempDir())
	if fallback != nil || q.Source != "system" || q.Version != "10.1.0" {
		t.Errorf("got %+v, %v; want the system's QEMU 10.1.0", q, fallback)
	}
}

func TestOpenCached(t *testing.T) {
	base := t.TempDir()
	old := filepath.Join(base, "1_9.2.0")
	fakeQEMU(t, filepath.Join(old, "usr", "bin", "qemu-system-x86_64"), "9.2.0")
	newer := filepath.Join(base, "1_10.0.2")
	fakeQEMU(t, filepath.Join(newer, "usr", "bin", "qemu-system-x86_64"), "10.0.2")
	if _, err := open(context.Background(), newer); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Fatalf("a directory without its marker was taken: %v", err)
	}
	for i, d := range []string{old, newer} {
		m := filepath.Join(d, debpkg.Marker)
		if err := os.WriteFile(m, []byte(filepath.Base(d)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		at := time.Unix(1_700_000_000+int64(i)*60, 0)
		if err := os.Chtimes(m, at, at); err != nil {
			t.Fatal(err)
		}
	}
	q, err := newestCached(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	if q.Version != "10.0.2" || q.DataDir != filepath.Join(newer, "usr", "share", "qemu") ||
		strings.Join(q.Exec, " ") != filepath.Join(newer, "usr", "bin", "qemu-system-x86_64")+" -L "+q.DataDir {
		t.Errorf("got %+v", q)
	}
}
