package debpkg

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Marker names the file Place writes into an unpacked directory once it is
// complete; it holds the words the caller gave (package, version).
const Marker = ".flushvm-package"

// ErrNoneCached reports that Newest found no complete directory.
var ErrNoneCached = errors.New("nothing unpacked in the cache")

// Memoized returns the n words resolve answers (a package's name and
// version, say), reusing the answer stored in path while apt's package
// lists are unchanged (AptStamp): apt-cache takes about a second to load
// them, and every harness run asks. The stamp is taken again after
// resolve, which may itself run apt-get update.
func Memoized(path string, n int, resolve func() ([]string, error)) ([]string, error) {
	stamp := AptStamp()
	if b, err := os.ReadFile(path); err == nil && stamp != "" {
		if f := strings.Fields(string(b)); len(f) == n+1 && f[0] == stamp {
			return f[1:], nil
		}
	}
	words, err := resolve()
	if err != nil {
		return nil, err
	}
	if len(words) != n {
		return nil, fmt.Errorf("memo %s: %d words to store, want %d", path, len(words), n)
	}
	if stamp = AptStamp(); stamp != "" && os.MkdirAll(filepath.Dir(path), 0o755) == nil {
		// Best effort: without the memo the next run asks apt again.
		_ = os.WriteFile(path, []byte(stamp+" "+strings.Join(words, " ")+"\n"), 0o644)
	}
	return words, nil
}

// Place completes a directory Unpack returned and moves it to dir: it
// writes the Marker with words, has check accept root, and renames root to
// dir. Check's error is returned as it is. Another process may have placed the same version at dir meanwhile;
// either copy is complete, so losing that race is fine when check accepts
// dir.
func Place(root, dir string, check func(dir string) error, words ...string) error {
	if err := os.WriteFile(filepath.Join(root, Marker), []byte(strings.Join(words, " ")+"\n"), 0o644); err != nil {
		return fmt.Errorf("place %s: %w", dir, err)
	}
	if err := check(root); err != nil {
		return err
	}
	if err := os.Rename(root, dir); err != nil {
		if cerr := check(dir); cerr != nil {
			return fmt.Errorf("place %s: %w", dir, err)
		}
	}
	return nil
}

// Newest returns the directory directly under base whose Marker was
// written last, with the marker's words: what to use when apt cannot be
// asked.
func Newest(base string) (dir string, words []string, err error) {
	marks, _ := filepath.Glob(filepath.Join(base, "*", Marker))
	if len(marks) == 0 {
		return "", nil, fmt.Errorf("%s: %w", base, ErrNoneCached)
	}
	mtime := func(p string) int64 {
		fi, err := os.Stat(p)
		if err != nil {
			return 0
		}
		return fi.ModTime().UnixNano()
	}
	sort.Slice(marks, func(i, j int) bool { return mtime(marks[i]) > mtime(marks[j]) })
	b, err := os.ReadFile(marks[0])
	if err != nil {
		return "", nil, fmt.Errorf("cache: %w", err)
	}
	return filepath.Dir(marks[0]), strings.Fields(string(b)), nil
}
