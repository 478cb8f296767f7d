package harness

import (
	"context"
	"fmt"

	"github.com/flushvm/flushvm/guest"
	"github.com/flushvm/flushvm/guest/initramfs"
	"github.com/flushvm/flushvm/guest/kernel"
)

// Artifacts are the cached guest images every run needs.
type Artifacts struct {
	// Cache is the artifact cache directory.
	Cache string
	// Kernel is the unpacked Debian kernel package (L1 and L2 boot it).
	Kernel *kernel.Kernel
	// Initramfs is the L2 test guest's image: guest/cmd/init as /init,
	// busybox, guest/fsyncstress as /bin/fsyncstress, the virtio-blk and
	// ext4 modules.
	Initramfs string
}

// Prepare fetches the kernel and builds the L2 initramfs (each only when
// its inputs changed).
func Prepare(ctx context.Context) (*Artifacts, error) {
	cache, err := guest.CacheDir()
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
	return &Artifacts{Cache: cache, Kernel: k, Initramfs: img}, nil
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
	b.Modules(mods)
	img, err := b.Build(cache)
	if err != nil {
		return "", fmt.Errorf("guest initramfs: %w", err)
	}
	return img, nil
}

// L1Initramfs builds the nested L1 guest's image: guest/cmd/l1init as
// /init, busybox for debugging, and KVM, virtio and 9p modules.
func L1Initramfs(ctx context.Context, cache string, k *kernel.Kernel) (string, error) {
	mods, err := k.Modules(kernel.L1Modules...)
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
