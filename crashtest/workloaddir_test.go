package crashtest

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
	"golang.org/x/sys/unix"
)

// archiveNames lists what an archive holds, with each entry's mode.
func archiveNames(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	x, err := workloadArchive(dir)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := x.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]uint64{}
	rr := cpio.Newc.Reader(bytes.NewReader(raw))
	for {
		rec, err := rr.ReadRecord()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names[rec.Name] = rec.Mode
	}
}

func TestWorkloadArchive(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string, perm os.FileMode) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), perm); err != nil {
			t.Fatal(err)
		}
	}
	write("run.sh", "#!/bin/sh\necho ACK 1\n", 0o755)
	write("data/seed.txt", "x", 0o644)
	if err := os.Symlink("run.sh", filepath.Join(dir, "go")); err != nil {
		t.Fatal(err)
	}
	// A dynamically linked host program brings its loader.
	tr, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Skip("no /bin/true:", err)
	}
	write("bin/true", string(tr), 0o755)
	names := archiveNames(t, dir)
	for name, mode := range map[string]uint64{
		"workload/run.sh":        cpio.S_IFREG | 0o755,
		"workload/data/seed.txt": cpio.S_IFREG | 0o644,
		"workload/go":            cpio.S_IFLNK | 0o777,
		"workload/bin/true":      cpio.S_IFREG | 0o755,
		"workload/data":          cpio.S_IFDIR | 0o755,
	} {
		if got, ok := names[name]; !ok || got != mode {
			t.Errorf("%s: mode %o (present %v), want %o", name, got, ok, mode)
		}
	}
	loader := false
	for name := range names {
		loader = loader || strings.Contains(name, "ld-linux")
	}
	if !loader {
		t.Errorf("the dynamic program came without its loader: %v", names)
	}
}

func TestWorkloadArchiveRefuses(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := workloadArchive(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a FIFO: %v", err)
	}
	if _, err := workloadArchive(filepath.Join(dir, "nope")); err == nil {
		t.Error("a missing directory was archived")
	}
}

func TestCustomWorkloadFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	tests := []struct {
		name  string
		flags []string
		err   string
	}{
		{"built-in", []string{"--workload", "rename"}, ""},
		{"own commands", []string{"--workload", "w.sh 5", "--checker", "c.sh", "--workload-dir", dir}, ""},
		{"unknown built-in", []string{"--workload", "w.sh"}, "or a command of your own with --checker"},
		{"command of two lines", []string{"--workload", "a\nb", "--checker", "c"}, "more than one line"},
		{"workload dir is a file", []string{"--workload", "w", "--checker", "c", "--workload-dir", file}, "not a directory"},
		{"workload dir missing", []string{"--workload", "w", "--checker", "c", "--workload-dir", file + "x"}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := filepath.Join(dir, "k")
			os.WriteFile(k, nil, 0o644)
			f := NewFlags()
			args := append([]string{"--kernel", k, "--initrd", k, "--disk-size", "16M", "--seed", "1"}, tt.flags...)
			if err := f.FS.Parse(args); err != nil {
				t.Fatal(err)
			}
			c, err := f.Campaign()
			if (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("Campaign: %v, want %q", err, tt.err)
			}
			if err != nil || c.checker == "" {
				return
			}
			cmd := c.commandLine(1)
			if c.label != customLabel || !strings.Contains(cmd, "--checker c.sh") || !strings.Contains(cmd, "--workload-dir "+dir) ||
				!strings.Contains(cmd, "--workload 'w.sh 5'") {
				t.Errorf("label %q, command %s", c.label, cmd)
			}
		})
	}
}
