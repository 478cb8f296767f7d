// Package kernel fetches Debian's generic amd64 kernel package with apt,
// unpacks it into the artifact cache (one directory per package version)
// and resolves the modules a guest needs in load order.
//
// It never installs anything on the host: `apt-get download` fetches the
// .deb into the cache and `dpkg -x` unpacks it there.
package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/flushvm/flushvm/host/debpkg"
	"github.com/flushvm/flushvm/protocol"
)

// MetaPackage is the Debian package that always depends on the current
// generic kernel image.
const MetaPackage = "linux-image-amd64"

// GuestModules are the modules every flushvm test guest loads, in load
// order (see each .ko's depends= field): virtio-blk for its disks, and
// pvpanic-mmio, which binds to the machine's ACPI pvpanic device (_HID
// QEMU0001) so that a guest kernel panic ends flushvm with
// protocol.ExitGuestCrash instead of the reboot panic= asks for. Debian
// builds pvpanic-mmio and the pvpanic core it depends on as modules.
var GuestModules = []string{"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk",
	"pvpanic", "pvpanic_mmio"}

// Ext4Modules mount an ext4 file system; Debian 6.1 builds ext4 as a module
// and its checksums need the crc32c crypto driver, which nothing would load
// on demand without modprobe.
var Ext4Modules = []string{"crc32c_generic", "crc16", "mbcache", "jbd2", "ext4"}

// FSModules are, per file system other than ext4, the modules that mount
// it (their dependencies are added by Modules); the crash-test modes load
// them on demand, so boots that do not use them do not pay for them (btrfs
// pulls in raid6_pq and xor, which time their algorithms when loaded).
var FSModules = map[string][]string{
	protocol.FSXFS:   {"libcrc32c", "xfs"},
	protocol.FSBtrfs: {"btrfs"},
}

// L1Modules are the modules the nested L1 guest loads: KVM for AMD SVM
// (QEMU TCG's -cpu max offers svm), virtio-blk for the job's disks and the
// 9p stack for the host shares.
var L1Modules = []string{
	"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk",
	"irqbypass", "ccp", "kvm", "kvm_amd",
	"netfs", "fscache", "9pnet", "9pnet_virtio", "9p",
}

// Kernel is one unpacked kernel package.
type Kernel struct {
	// Package is the Debian package name, e.g. linux-image-6.1.0-56-amd64.
	Package string
	// Version is the Debian package version, e.g. 6.1.192-2.
	Version string
	// Release is the kernel release (uname -r), e.g. 6.1.0-56-amd64.
	Release string
	// Dir is the unpacked package root.
	Dir string
	// BzImage is the path of the bzImage (boot/vmlinuz-RELEASE).
	BzImage string
	// ModulesDir is lib/modules/RELEASE inside Dir.
	ModulesDir string

	mu  sync.Mutex
	idx map[string]string // module name -> file, built on first use
}

// Module is one loadable kernel module file.
type Module struct {
	// Name is the module name with '-' folded to '_', as the kernel names it.
	Name string
	// Path is the uncompressed .ko file.
	Path string
	// Depends lists the modules Name needs loaded first.
	Depends []string
}

// ErrNoModule reports a module the kernel package does not contain.
var ErrNoModule = errors.New("module not found in kernel package")

// Fetch resolves the current generic kernel package, downloads and unpacks
// it under cacheDir/kernel unless that version is already there, and
// returns it. When apt cannot answer (no network, no Debian) an already
// unpacked kernel in the cache is used instead.
func Fetch(ctx context.Context, cacheDir string) (*Kernel, error) {
	pkg, ver, err := resolveCached(ctx, cacheDir)
	if err != nil {
		if k, cerr := newestCached(cacheDir); cerr == nil {
			return k, nil
		}
		return nil, err
	}
	return fetchVersion(ctx, cacheDir, pkg, ver)
}

// resolveCached answers like resolve, but reuses the last answer while
// apt's package lists are unchanged (debpkg.Memoized).
func resolveCached(ctx context.Context, cacheDir string) (string, string, error) {
	f, err := debpkg.Memoized(filepath.Join(cacheDir, "kernel", "resolved"), 2, func() ([]string, error) {
		pkg, ver, err := resolve(ctx)
		return []string{pkg, ver}, err
	})
	if err != nil {
		return "", "", err
	}
	return f[0], f[1], nil
}

// resolve asks apt which kernel image linux-image-amd64 points at and that
// package's candidate version, running `apt-get update` once if apt has no
// package lists yet.
func resolve(ctx context.Context) (pkg, ver string, err error) {
	pkg, err = dependsOf(ctx, MetaPackage)
	if err != nil {
		if uerr := debpkg.Run(ctx, "apt-get", "update", "-qq"); uerr != nil {
			return "", "", fmt.Errorf("resolve %s: %w (apt-get update: %v)", MetaPackage, err, uerr)
		}
		if pkg, err = dependsOf(ctx, MetaPackage); err != nil {
			return "", "", fmt.Errorf("resolve %s: %w", MetaPackage, err)
		}
	}
	out, err := debpkg.Output(ctx, "apt-cache", "policy", pkg)
	if err != nil {
		return "", "", fmt.Errorf("version of %s: %w", pkg, err)
	}
	m := regexp.MustCompile(`(?m)^\s*Candidate:\s*(\S+)`).FindSubmatch(out)
	if m == nil || string(m[1]) == "(none)" {
		return "", "", fmt.Errorf("version of %s: apt has no candidate", pkg)
	}
	return pkg, string(m[1]), nil
}

var dependsRE = regexp.MustCompile(`(?m)^\s*Depends:\s*(linux-image-[0-9]\S*)`)

func dependsOf(ctx context.Context, meta string) (string, error) {
	out, err := debpkg.Output(ctx, "apt-cache", "depends", meta)
	if err != nil {
		return "", err
	}
	m := dependsRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("apt-cache depends %s names no kernel image", meta)
	}
	return string(m[1]), nil
}

func fetchVersion(ctx context.Context, cacheDir, pkg, ver string) (*Kernel, error) {
	base := filepath.Join(cacheDir, "kernel")
	dir := filepath.Join(base, pkg+"_"+ver)
	if k, err := open(dir, pkg, ver); err == nil {
		return k, nil
	}
	root, err := debpkg.Unpack(ctx, base, pkg+"="+ver)
	if err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	defer debpkg.Discard(root)
	check := func(d string) error { _, err := open(d, pkg, ver); return err }
	if err := debpkg.Place(root, dir, check, pkg, ver); err != nil {
		return nil, err
	}
	return open(dir, pkg, ver)
}

// open describes an unpacked kernel package rooted at dir.
func open(dir, pkg, ver string) (*Kernel, error) {
	imgs, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(imgs) != 1 {
		return nil, fmt.Errorf("kernel package in %s: want one boot/vmlinuz-*, found %d", dir, len(imgs))
	}
	release := strings.TrimPrefix(filepath.Base(imgs[0]), "vmlinuz-")
	mods := filepath.Join(dir, "lib", "modules", release)
	if fi, err := os.Stat(mods); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("kernel package in %s: no lib/modules/%s", dir, release)
	}
	return &Kernel{Package: pkg, Version: ver, Release: release, Dir: dir, BzImage: imgs[0], ModulesDir: mods}, nil
}

// newestCached returns the most recently unpacked kernel in the cache.
func newestCached(cacheDir string) (*Kernel, error) {
	dir, f, err := debpkg.Newest(filepath.Join(cacheDir, "kernel"))
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	if len(f) != 2 {
		return nil, fmt.Errorf("%s: malformed", filepath.Join(dir, debpkg.Marker))
	}
	return open(dir, f[0], f[1])
}
