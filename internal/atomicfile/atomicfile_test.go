package atomicfile

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestWriteJSON(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "doc.json")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteJSON(path, map[string]int{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "{\n  \"a\": 1\n}\n" {
		t.Errorf("wrote %q", b)
	}
	// A value JSON cannot encode leaves the old document and no temporary.
	if err := WriteJSON(path, func() {}); err == nil {
		t.Fatal("encoded a func")
	}
	if b, _ := os.ReadFile(path); string(b) != "{\n  \"a\": 1\n}\n" {
		t.Errorf("a failed write changed the document: %q", b)
	}
	if err := WriteJSON(filepath.Join(dir, "no", "doc.json"), 1); err == nil {
		t.Fatal("wrote into a missing directory")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// TestWriteRacing has writers race for one path: the file ends as one of
// them wrote it, whole, with no temporary left and mode 0644.
func TestWriteRacing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vmlinux")
	const writers = 8
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := Write(path, bytes.Repeat([]byte{byte('a' + i)}, 1<<20)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 1<<20 || bytes.Count(b, b[:1]) != len(b) {
		t.Errorf("the file mixes writers: %d bytes, first %q", len(b), b[0])
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v (%v), want 0644", fi.Mode(), err)
	}
	if names, _ := os.ReadDir(dir); len(names) != 1 {
		t.Errorf("directory holds %d names, want only the file", len(names))
	}
}

func TestSync(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name    string
		sync    func(string) error
		path    string
		wantErr bool
	}{
		{"file", SyncFile, file, false},
		{"missing file", SyncFile, missing, true},
		{"directory", SyncDir, dir, false},
		{"missing directory", SyncDir, missing, true},
	}
	for _, tc := range tests {
		if err := tc.sync(tc.path); (err != nil) != tc.wantErr {
			t.Errorf("%s: %v, want error %v", tc.name, err, tc.wantErr)
		}
	}
}
