package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Create mode (-create): each version is a new file in the directory (create
// semantics), rather than a new content of the target (replace
// semantics).

// createVersion writes version v to its own new file: write it, fsync
// it, fsync the directory that now names it.
func (c config) createVersion(dir *os.File, v int) error {
	if err := c.writeSynced(filepath.Join(c.dir, versionName(v)), content(v, c.size)); err != nil {
		return err
	}
	return c.syncDir(dir)
}

// linkVersion writes version v the O_TMPFILE way: an unnamed file in the
// directory, written and fsynced, then linked in as v-V, then the
// directory fsynced. Without that last fsync (-bug no-dir-fsync) the name
// is not durable when the version is acknowledged, on every file system:
// the file's fsync came before the link existed. (A file created by name
// is different: ext4, xfs and btrfs make a new file's directory entry
// durable with the file's own fsync, so -create without -tmpfile cannot
// show the bug on them.)
func (c config) linkVersion(dir *os.File, v int) error {
	fd, err := unix.Open(c.dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("open O_TMPFILE in %s: %w", c.dir, err)
	}
	path := filepath.Join(c.dir, versionName(v))
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if _, err := f.Write(content(v, c.size)); err != nil {
		return fmt.Errorf("write %s (unnamed): %w", path, err)
	}
	if err := c.sync(f); err != nil {
		return fmt.Errorf("fsync %s (unnamed): %w", path, err)
	}
	if err := unix.Linkat(fd, "", unix.AT_FDCWD, path, unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("link %s: %w", path, err)
	}
	return c.syncDir(dir)
}

// versionName is the file -create writes version v to.
func versionName(v int) string { return "v-" + strconv.Itoa(v) }

// maxDetails bounds the per-version lines the -create checker prints.
const maxDetails = 10

// checkCreated verifies -create's files against the last acknowledged
// version c.acked and returns the exit status and the lost and extra
// versions: each of v-1 to v-V (V = c.acked) must hold its version whole,
// else it is lost; each v-N with N > V that holds its version whole is
// extra. An unacknowledged file that is not whole is no violation: its
// creation may have been cut anywhere. An I/O error is exitError: the
// check could not tell.
func checkCreated(c config, out io.Writer) (status, lost, extra int) {
	for v := 1; v <= c.acked; v++ {
		err := readVersion(c.dir, v)
		switch {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, errDamaged):
			if lost < maxDetails {
				fmt.Fprintf(out, "rename-check: LOST %v\n", err)
			}
			lost++
		case err != nil:
			fmt.Fprintf(out, "rename-check: %v\n", err)
			return exitError, 0, 0
		}
	}
	if lost > maxDetails {
		fmt.Fprintf(out, "rename-check: ... %d more lost versions not shown\n", lost-maxDetails)
	}
	extra, err := countExtra(c.dir, c.acked)
	if err != nil {
		fmt.Fprintf(out, "rename-check: %v\n", err)
		return exitError, 0, 0
	}
	fmt.Fprintf(out, "rename-check: create: acknowledged %d, lost %d, extra %d\n", c.acked, lost, extra)
	if lost > 0 {
		return exitViolation, lost, extra
	}
	return exitOK, 0, extra
}

// countExtra counts the files v-N in dir with N > acked that hold version
// N whole.
func countExtra(dir string, acked int) (int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	extra := 0
	for _, e := range entries {
		v, err := strconv.Atoi(e.Name()[min(2, len(e.Name())):])
		if err != nil || v <= acked || e.Name() != versionName(v) {
			continue
		}
		switch err := readVersion(dir, v); {
		case err == nil:
			extra++
		case !errors.Is(err, errDamaged):
			return 0, err
		}
	}
	return extra, nil
}

// readVersion checks that file v-V in dir holds version v whole: the
// error wraps fs.ErrNotExist when it is missing, errDamaged when it holds
// anything else.
func readVersion(dir string, v int) error {
	name := versionName(v)
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	got, err := parse(b)
	switch {
	case err != nil:
		return fmt.Errorf("%s: %w", name, err)
	case got != v:
		return fmt.Errorf("%s: %w: holds version %d", name, errDamaged, got)
	}
	return nil
}
