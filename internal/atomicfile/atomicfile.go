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
// and durably. Errors are the encoder's or the file system's, unwrapped,
// for the caller to name its flag; on failure the temporary file is
// removed and path is left as it was.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := writeSynced(tmp, append(b, '\n')); err != nil {
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

// writeSynced writes b to a new file at path and syncs it before closing.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
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
