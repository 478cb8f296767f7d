package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/flushvm/flushvm/host"
	"github.com/flushvm/flushvm/host/initramfs"
	"github.com/flushvm/flushvm/host/kernel"
	"github.com/flushvm/flushvm/protocol"
)

// Artifacts are the cached guest images every run needs.
type Artifacts struct {
	// Cache is the artifact cache directory.
	Cache string
	// Kernel is the unpacked Debian kernel package (L1 and L2 boot it).
	Kernel *kernel.Kernel
	// Vmlinux is the ELF kernel inside Kernel's bzImage (Kernel.Vmlinux).
	// Nested tests boot it: it skips the bzImage's self-decompression,
	// seconds of every L2 boot under TCG.
	Vmlinux string
	// Initramfs is the L2 test guest's image: guest/cmd/init as /init,
	// busybox, guest/fsyncstress as /bin/fsyncstress, guest/rename as
	// /bin/rename, xfsprogs' and btrfs-progs' mkfs and check programs in
	// /sbin with the xfs and btrfs modules as on-demand sets
	// (protocol.ModuleSetList), guest/sqlite as /bin/sqlitework with the host's sqlite3
	// (/usr/bin/sqlite3, its loader and libraries), the host's e2fsprogs (/sbin/mke2fs and /sbin/e2fsck with
	// their loader and shared libraries, and /etc/mke2fs.conf when the host
	// has one) for the crash-test modes, and the virtio-blk, pvpanic and
	// ext4 modules.
	Initramfs string
}

// Prepare fetches the kernel and builds the L2 initramfs (each only when
// its inputs changed).
func Prepare(ctx context.Context) (*Artifacts, error) {
	cache, err := host.CacheDir()
	if err != nil {
		return nil, err
	}
	k, err := kernel.Fetch(ctx, cache)
	if err != nil {
		return nil, err
	}
	img, err := GuestInitramfs(ctx, cache, k)
	if err != nil {
		return nil, err
	}
	vmlinux, err := k.Vmlinux(ctx)
	if err != nil {
		return nil, err
	}
	return &Artifacts{Cache: cache, Kernel: k, Vmlinux: vmlinux, Initramfs: img}, nil
}

// GuestInitramfs builds the L2 test guest's image.
func GuestInitramfs(ctx context.Context, cache string, k *kernel.Kernel) (string, error) {
	mods, err := k.Modules(append(append([]string{}, kernel.GuestModules...), kernel.Ext4Modules...)...)
	if err != nil {
		return "", err
	}
	b := initramfs.New()
	b.Busybox()
	b.GoProgram(ctx, "/init", "./guest/cmd/init")
	b.GoProgram(ctx, "/bin/fsyncstress", "./guest/fsyncstress")
	b.GoProgram(ctx, "/bin/rename", "./guest/rename")
	b.GoProgram(ctx, "/bin/sqlitework", "./guest/sqlite")
	// The crash-test modes format, mount and check xfs and btrfs too, with
	// their modules loaded on demand.
	for _, fs := range []string{protocol.FSXFS, protocol.FSBtrfs} {
		mods, err := k.Modules(kernel.FSModules[fs]...)
		if err != nil {
			return "", fmt.Errorf("guest initramfs: %w", err)
		}
		b.ModuleSet(fs, mods)
	}
	for _, tool := range fsTools {
		src, err := hostTool(tool.name)
		if err != nil {
			return "", fmt.Errorf("guest initramfs: %w (install %s)", err, tool.pkg)
		}
		b.Dynamic("/sbin/"+tool.name, src)
	}
	// The SQLite workloads run Debian's sqlite3 shell.
	sqlite3, err := hostTool("sqlite3")
	if err != nil {
		return "", fmt.Errorf("guest initramfs: %w (install sqlite3)", err)
	}
	b.Dynamic("/usr/bin/sqlite3", sqlite3)
	// Without it mke2fs uses its built-in profile (the same ext4 features
	// in e2fsprogs 1.47); with it the guest formats as the host would.
	if _, err := os.Stat(mke2fsConf); err == nil {
		b.File(mke2fsConf, mke2fsConf, 0o644)
	}
	b.Modules(mods)
	img, err := b.Build(cache)
	if err != nil {
		return "", fmt.Errorf("guest initramfs: %w", err)
	}
	return img, nil
}

// fsTools are the programs /init's crash-test modes run from /sbin to
// format and check each file system, with their Debian packages. mke2fs
// replaces busybox's applet, which cannot make ext4.
var fsTools = []struct{ name, pkg string }{
	{"mke2fs", "e2fsprogs"}, {"e2fsck", "e2fsprogs"},
	{"mkfs.xfs", "xfsprogs"}, {"xfs_repair", "xfsprogs"}, {"mkfs.btrfs", "btrfs-progs"}, {"btrfs", "btrfs-progs"},
}

// mke2fsConf is e2fsprogs' mke2fs configuration, on the host and in the
// guest.
const mke2fsConf = "/etc/mke2fs.conf"

// hostTool finds a system program of the host (e2fsprogs lives in /sbin,
// which a non-root PATH may lack).
func hostTool(name string) (string, error) {
	for _, dir := range []string{"/sbin", "/usr/sbin", "/bin", "/usr/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in /sbin, /usr/sbin, /bin, /usr/bin or $PATH", name)
}

// L1Initramfs builds the nested L1 guest's image: guest/cmd/l1init as
// /init, busybox for debugging, and KVM, virtio, 9p and ext4 (the scratch
// disk) modules.
func L1Initramfs(ctx context.Context, cache string, k *kernel.Kernel) (string, error) {
	mods, err := k.Modules(append(append([]string{}, kernel.L1Modules...), kernel.Ext4Modules...)...)
	if err != nil {
		return "", err
	}
	b := initramfs.New()
	b.Busybox()
	b.GoProgram(ctx, "/init", "./guest/cmd/l1init")
	b.Modules(mods)
	img, err := b.Build(cache)
	if err != nil {
		return "", fmt.Errorf("L1 initramfs: %w", err)
	}
	return img, nil
}

// WithScript returns the L2 image base with script appended as /run.sh;
// boot it with flushvm.run=script.
func WithScript(cache, base, script string) (string, error) {
	x := initramfs.Extra()
	x.Bytes("/run.sh", []byte(script), 0o755)
	return initramfs.Append(cache, base, x)
}
