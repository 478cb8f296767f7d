// Package debpkg fetches Debian packages into flushvm's artifact cache
// without installing them: `apt-get download` fetches the .deb files and
// `dpkg -x` unpacks them into one directory, which the caller moves into
// place. The guest kernel (host/kernel) and the nested L1's QEMU
// (host/l1qemu) come this way.
package debpkg

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Unpack downloads the packages, each given as NAME=VERSION, and unpacks
// them all into a new directory under parent, which it returns. The caller
// completes it with Place, or removes it with Discard. On error nothing is
// left under parent.
func Unpack(ctx context.Context, parent string, pkgs ...string) (root string, err error) {
	what := strings.Join(pkgs, " ")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", fmt.Errorf("unpack %s: %w", what, err)
	}
	tmp, err := os.MkdirTemp(parent, ".fetch-")
	if err != nil {
		return "", fmt.Errorf("unpack %s: %w", what, err)
	}
	debDir := filepath.Join(tmp, "debs")
	defer func() {
		os.RemoveAll(debDir)
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	// apt drops privileges to _apt for downloads; a directory that user
	// cannot write makes apt warn, so make it writable (whatever the umask).
	if err := os.Mkdir(debDir, 0o777); err != nil {
		return "", fmt.Errorf("unpack %s: %w", what, err)
	}
	_ = os.Chmod(debDir, 0o777)
	cmd := exec.CommandContext(ctx, "apt-get", append([]string{"download", "-q"}, pkgs...)...)
	cmd.Dir = debDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %w: %s", what, err, LastLine(out))
	}
	debs, _ := filepath.Glob(filepath.Join(debDir, "*.deb"))
	if len(debs) != len(pkgs) {
		return "", fmt.Errorf("apt-get download %s: got %d .deb files, want %d", what, len(debs), len(pkgs))
	}
	root = filepath.Join(tmp, "root")
	for _, deb := range debs {
		if err := Run(ctx, "dpkg", "-x", deb, root); err != nil {
			return "", fmt.Errorf("unpack %s: %w", filepath.Base(deb), err)
		}
	}
	return root, nil
}

// Discard removes a directory Unpack returned and the temporary directory
// around it.
func Discard(root string) error {
	return os.RemoveAll(filepath.Dir(root))
}

// AptStamp identifies the state of apt's package lists, or is empty if
// they cannot be found: apt-get update renames fresh lists into
// /var/lib/apt/lists, which changes its modification time. Callers
// memoize apt's answers under it, as apt-cache takes about a second to
// load the lists.
func AptStamp() string {
	fi, err := os.Stat("/var/lib/apt/lists")
	if err != nil {
		return ""
	}
	return fmt.Sprint(fi.ModTime().UnixNano())
}

// Run runs a command, returning its last line of output with any error.
func Run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, LastLine(out))
	}
	return nil
}

// Output runs a command and returns its standard output, or an error with
// the last line of its standard error.
func Output(ctx context.Context, name string, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, LastLine(stderr.Bytes()))
	}
	return out, nil
}

// LastLine is the last non-blank line of b, trimmed.
func LastLine(b []byte) string {
	var last string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if s := strings.TrimSpace(sc.Text()); s != "" {
			last = s
		}
	}
	return last
}
