// Package atomicfile writes output documents (--stats, crashtest and replay
// reports, a campaign's record) so that a reader never sees half of one,
// and so that a crash of the machine leaves the old document or the new
// one, never an empty file: the document goes to a temporary file beside
// the target, which is synced, renamed over it, and the directory synced.
package atomicfile

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"syscall"
)

// WriteJSON writes v, indented, with a final newline, to path atomically
// and durably, as Write does.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return Write(path, append(b, '\n'))
}

// Write writes b to path atomically and durably: to a temporary file of
// its own in path's directory (so writers racing for one path never mix
// their bytes), synced, renamed over path, and the directory synced.
// Errors are the file system's, unwrapped, for the caller to name its
// flag; on failure the temporary file is removed and path is left as it
// was.
func Write(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err := writeSynced(f, b); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	// The rename is durable once the directory is: without this a crash
	// can leave the old name (or none, for a new document).
	return SyncDir(filepath.Dir(path))
}

// writeSynced writes b to f and syncs it before closing it.
func writeSynced(f *os.File, b []byte) error {
	_, err := f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// SyncDir syncs a directory, making the names created or renamed in it
// durable. A file system that cannot sync a directory (EINVAL, ENOTSUP:
// some network and FUSE file systems) is not an error: there the rename
// is as durable as the file system makes it.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOTSUP) {
		err = nil
	}
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// SyncFile syncs an existing file's data and metadata.
func SyncFile(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
