package crashtest

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/flushvm/flushvm/host/initramfs"
	"github.com/flushvm/flushvm/protocol"
)

// Bounds on --workload-dir: it is carried in the guest's initramfs, which
// lives in guest memory.
const (
	maxWorkloadFiles = 10000
	maxWorkloadBytes = 256 << 20
)

// prepareInitrd sets the initrd the campaign's boots use: --initrd, or
// with --workload-dir a copy of it followed by an archive holding DIR as
// protocol.WorkloadGuestDir (built in dir, cached there by content).
func (c *Campaign) prepareInitrd(dir string) error {
	c.bootInitrd = c.initrd
	if c.workloadDir == "" {
		return nil
	}
	x, err := workloadArchive(c.workloadDir)
	if err != nil {
		return err
	}
	img, err := initramfs.Append(dir, c.initrd, x)
	if err != nil {
		return fmt.Errorf("--workload-dir %s: %w", c.workloadDir, err)
	}
	c.bootInitrd = img
	return nil
}

// workloadArchive returns an archive of the host directory src as
// protocol.WorkloadGuestDir: directories, symbolic links and regular files
// with their permissions; a dynamically linked ELF program brings its
// loader and shared libraries (at the paths the guest's loader looks them
// up). Other file types are refused, as are more than maxWorkloadFiles
// entries or maxWorkloadBytes of files.
func workloadArchive(src string) (*initramfs.Builder, error) {
	x := initramfs.Extra()
	x.Dir(protocol.WorkloadGuestDir)
	var files int
	var total int64
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if files++; files > maxWorkloadFiles {
			return fmt.Errorf("more than %d entries", maxWorkloadFiles)
		}
		name := path.Join(protocol.WorkloadGuestDir, filepath.ToSlash(rel))
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			x.Dir(name)
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			x.Symlink(name, target)
		case fi.Mode().IsRegular():
			if total += fi.Size(); total > maxWorkloadBytes {
				return fmt.Errorf("more than %d MiB of files", maxWorkloadBytes>>20)
			}
			addFile(x, name, p, fi.Mode().Perm())
		default:
			return fmt.Errorf("%s: not a regular file, directory or symbolic link", rel)
		}
		return nil
	})
	if err == nil {
		err = x.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("--workload-dir %s: %w", src, err)
	}
	return x, nil
}

// addFile adds the host file p as name: an executable ELF program with
// what its loader needs, anything else as it is.
func addFile(x *initramfs.Builder, name, p string, perm fs.FileMode) {
	if perm&0o111 != 0 && isELF(p) {
		x.Dynamic(name, p)
		return
	}
	x.File(name, p, uint64(perm))
}

// isELF reports whether the file p starts with the ELF magic.
func isELF(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	var magic [4]byte
	_, err = io.ReadFull(f, magic[:])
	return err == nil && bytes.Equal(magic[:], []byte("\x7fELF"))
}
