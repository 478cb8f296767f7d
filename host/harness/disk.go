package harness

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// FsyncstressScript is the /run.sh the demo boots with a disk: it mounts
// the fresh ext4 disk vda and runs fsyncstress on it.
const FsyncstressScript = `set -e
mkdir -p /mnt/disk
mount -t ext4 /dev/vda /mnt/disk
echo "write cache: $(cat /sys/block/vda/queue/write_cache)"
/bin/fsyncstress -dir /mnt/disk -writers 4 -records 100
umount /mnt/disk
`

// FreshExt4 creates a sparse file of the given size (e.g. "1G") holding an
// empty ext4 file system. It formats on the host with mkfs.ext4 rather than
// in the guest: the host tool is the full e2fsprogs (busybox's mke2fs
// cannot make ext4 with journal and extents), the guest workload then
// starts from a known file system, and formatting a sparse file on the
// host costs milliseconds where the emulated guest would take seconds.
func FreshExt4(ctx context.Context, path, size string) error {
	return freshExt4From(ctx, path, size, "")
}

// freshExt4From is FreshExt4 with the file system populated from the host
// directory root (mke2fs -d; none when root is empty).
func freshExt4From(ctx context.Context, path, size, root string) error {
	if out, err := exec.CommandContext(ctx, "truncate", "-s", size, path).CombinedOutput(); err != nil {
		return fmt.Errorf("create %s: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	// mke2fs discards (punches) a regular file first and then knows the
	// inode tables read as zeroes, so the image stays sparse and the guest
	// kernel has no lazy initialisation left to do.
	args := []string{"-q", "-F", path}
	if root != "" {
		args = append([]string{"-d", root}, args...)
	}
	out, err := exec.CommandContext(ctx, "mkfs.ext4", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	return nil
}
