package debpkg

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMemoized(t *testing.T) {
	if AptStamp() == "" {
		t.Skip("no apt lists on this host: nothing is memoized")
	}
	memo := filepath.Join(t.TempDir(), "sub", "resolved")
	calls := 0
	resolve := func(words ...string) func() ([]string, error) {
		return func() ([]string, error) { calls++; return words, nil }
	}
	for _, tc := range []struct {
		name  string
		n     int
		words []string
		want  string
		calls int
	}{
		{"asks apt the first time", 2, []string{"pkg", "1.0"}, "pkg 1.0", 1},
		{"then reuses the answer", 2, []string{"other", "2.0"}, "pkg 1.0", 1},
		{"a memo of another length is asked again", 1, []string{"3.0"}, "3.0", 2},
		{"a wrong count from resolve is refused", 2, []string{"x"}, "", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Memoized(memo, tc.n, resolve(tc.words...))
			if tc.want == "" {
				if err == nil {
					t.Fatalf("got %q, want an error", got)
				}
			} else if err != nil || strings.Join(got, " ") != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
			if calls != tc.calls {
				t.Errorf("resolve ran %d times, want %d", calls, tc.calls)
			}
		})
	}
	boom := errors.New("apt is down")
	if _, err := Memoized(filepath.Join(t.TempDir(), "m"), 1, func() ([]string, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Errorf("resolve's error lost: %v", err)
	}
}

// unpacked makes a directory as Unpack returns one: root inside a
// temporary directory under parent.
func unpacked(t *testing.T, parent string) string {
	t.Helper()
	root := filepath.Join(parent, ".fetch-x", "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestPlace(t *testing.T) {
	base := t.TempDir()
	ok := func(string) error { return nil }
	dir := filepath.Join(base, "v1")
	if err := Place(unpacked(t, base), dir, ok, "pkg", "1"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, Marker)); err != nil || string(b) != "pkg 1\n" {
		t.Fatalf("marker %q, %v", b, err)
	}
	// Losing the race to a complete copy is fine; to a refused one it is not.
	root := unpacked(t, filepath.Join(base, "again"))
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Place(root, dir, ok, "pkg", "1"); err != nil {
		t.Errorf("lost race to a complete copy: %v", err)
	}
	refuse := errors.New("incomplete")
	if err := Place(root, dir, func(d string) error {
		if d == dir {
			return refuse
		}
		return nil
	}, "pkg", "1"); err == nil {
		t.Error("lost race to a refused copy, and Place said nothing")
	}
	if err := Place(unpacked(t, filepath.Join(base, "bad")), filepath.Join(base, "v2"), func(string) error { return refuse }, "x"); !errors.Is(err, refuse) {
		t.Errorf("check's error lost: %v", err)
	}
	if _, err := os.Stat(filepath.Join(base, "v2")); err == nil {
		t.Error("a refused root was moved into place")
	}
}

func TestNewest(t *testing.T) {
	base := t.TempDir()
	if _, _, err := Newest(base); !errors.Is(err, ErrNoneCached) {
		t.Fatalf("empty cache: %v", err)
	}
	for i, name := range []string{"old", "new", "older"} {
		d := filepath.Join(base, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		m := filepath.Join(d, Marker)
		if err := os.WriteFile(m, []byte(name+" 1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		at := time.Unix(1_700_000_000+int64([]int{60, 120, 0}[i]), 0)
		if err := os.Chtimes(m, at, at); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(base, "unmarked"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir, words, err := Newest(base)
	if err != nil || dir != filepath.Join(base, "new") || strings.Join(words, " ") != "new 1" {
		t.Errorf("got %s %q %v, want the newest marker's", dir, words, err)
	}
}
