package protocol

import "fmt"

// The file systems a crash-test campaign formats and checks (`flushvm
// crashtest --fs`, the guest's kernel command line flushvm.fs=NAME).
const (
	FSExt4  = "ext4"
	FSXFS   = "xfs"
	FSBtrfs = "btrfs"
)

// FileSystems are the names --fs takes, the default first.
var FileSystems = []string{FSExt4, FSXFS, FSBtrfs}

// minFSSize is the smallest disk each file system's mkfs accepts:
// mkfs.xfs refuses file systems under 300 MB, mkfs.btrfs devices under
// 109 MiB (114294784 bytes in btrfs-progs 6.2).
var minFSSize = map[string]int64{FSExt4: 16 << 20, FSXFS: 300 << 20, FSBtrfs: 128 << 20}

// CheckFileSystem checks a --fs name and that a disk of size bytes can hold
// it.
func CheckFileSystem(name string, size int64) error {
	min, ok := minFSSize[name]
	if !ok {
		return fmt.Errorf("file system %q: want one of %v", name, FileSystems)
	}
	if size < min {
		return fmt.Errorf("%s needs a disk of at least %dM (its mkfs refuses smaller ones), not %d bytes", name, min>>20, size)
	}
	return nil
}
