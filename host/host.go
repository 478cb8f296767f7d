// Package host holds the host tooling that boots real Linux test guests for
// flushvm: the Debian kernel fetch (host/kernel) and the nested L1 guest's
// QEMU (host/l1qemu), both Debian packages unpacked into the cache
// (host/debpkg), initramfs images built in Go (host/initramfs) around the
// programs that run inside guests (under guest/), and the harness that
// runs `flushvm run` directly or nested inside a QEMU L1 guest
// (host/harness, command cmd/flushvm-harness).
//
// This package itself only answers where the repository and the artifact
// cache are, and quotes shell words. Nothing under host/ or guest/ imports
// the VMM packages (the internal/layout test keeps it so): the harness
// drives flushvm as a separate binary, exactly as a user would.
package host

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ModulePath is the Go module path of flushvm; RepoRoot looks for it.
const ModulePath = "github.com/flushvm/flushvm"

// ErrNoRepo reports that the working directory is not inside the flushvm
// source tree, so programs that must be built from source cannot be.
var ErrNoRepo = errors.New("not inside the flushvm source tree")

// RepoRoot returns the directory holding flushvm's go.mod, searching
// upwards from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("repo root: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && isFlushvmModule(b) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", ErrNoRepo
		}
		dir = parent
	}
}

func isFlushvmModule(gomod []byte) bool {
	for _, line := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "module" && f[1] == ModulePath {
			return true
		}
	}
	return false
}

// CacheDir returns the directory for cached guest artifacts and creates it:
// $FLUSHVM_CACHE if set, else build/cache under the repository root, else
// $XDG_CACHE_HOME/flushvm (or ~/.cache/flushvm) outside the tree.
func CacheDir() (string, error) {
	dir := os.Getenv("FLUSHVM_CACHE")
	if dir == "" {
		if root, err := RepoRoot(); err == nil {
			dir = filepath.Join(root, "build", "cache")
		} else {
			base, err := os.UserCacheDir()
			if err != nil {
				return "", fmt.Errorf("cache dir: %w", err)
			}
			dir = filepath.Join(base, "flushvm")
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("cache dir: %w", err)
	}
	return dir, nil
}

// ShellQuote quotes s as one word for a POSIX shell: host tools hand
// commands to shells in L1 and on Slurm nodes.
func ShellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
