// Package initramfs builds gzip-compressed newc cpio images for flushvm's
// test guests with github.com/u-root/u-root/pkg/cpio: directories, files,
// device nodes, kernel modules, static Go programs, busybox, and
// dynamically linked host programs with their loader and libraries.
//
// Images are cached by a hash of everything that goes into them, so a
// rebuild happens only when an input changes. A small per-test archive can
// be appended to a cached image: Linux unpacks concatenated archives in
// order, later files replacing earlier ones.
package initramfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/flushvm/flushvm/host"
	"github.com/flushvm/flushvm/host/kernel"
	"github.com/flushvm/flushvm/protocol"
)

// ModuleListPath is where an image lists its kernel modules, one path per
// line in load order; guest init programs load them from there.
const ModuleListPath = protocol.ModuleList

// BusyboxPath is the static busybox binary on a Debian host
// (package busybox-static).
const BusyboxPath = "/bin/busybox"

// ErrNotStatic reports a binary that would need a dynamic loader the guest
// does not have.
var ErrNotStatic = errors.New("binary is not statically linked")

type entry struct {
	mode   uint64 // cpio mode bits including the type
	data   []byte // file contents or symlink target
	rmajor uint64
	rminor uint64
}

// Builder collects the contents of one image. Methods record the first
// error and make Build return it, so a sequence of adds needs one check.
type Builder struct {
	entries map[string]entry
	modules []string
	err     error
}

// New returns a builder holding the skeleton every guest needs: /dev with
// a console node (the kernel opens /dev/console for init before devtmpfs is
// mounted), /proc, /sys, /tmp, /etc, /bin, /mnt and /lib/modules.
func New() *Builder {
	b := &Builder{entries: map[string]entry{}}
	for _, d := range []string{"dev", "proc", "sys", "tmp", "etc", "etc/flushvm", "bin", "sbin", "usr", "usr/bin", "usr/sbin", "mnt", "lib", "lib/modules", "run", "root"} {
		b.Dir(d)
	}
	b.entries["dev/console"] = entry{mode: cpio.S_IFCHR | 0o600, rmajor: 5, rminor: 1}
	b.entries["dev/null"] = entry{mode: cpio.S_IFCHR | 0o666, rmajor: 1, rminor: 3}
	return b
}

// Err returns the first error recorded by an add.
func (b *Builder) Err() error { return b.err }

func (b *Builder) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

func clean(name string) string { return strings.TrimPrefix(path.Clean("/"+name), "/") }

// Dir adds a directory and its parents.
func (b *Builder) Dir(name string) {
	name = clean(name)
	for d := name; d != "" && d != "."; d = path.Dir(d) {
		if _, ok := b.entries[d]; !ok {
			b.entries[d] = entry{mode: cpio.S_IFDIR | 0o755}
		}
	}
}

// Bytes adds a regular file with the given contents and permissions.
func (b *Builder) Bytes(name string, data []byte, perm uint64) {
	name = clean(name)
	b.Dir(path.Dir(name))
	b.entries[name] = entry{mode: cpio.S_IFREG | perm&0o7777, data: data}
}

// File adds the host file src as name.
func (b *Builder) File(name, src string, perm uint64) {
	data, err := os.ReadFile(src)
	if err != nil {
		b.fail(fmt.Errorf("initramfs %s: %w", name, err))
		return
	}
	b.Bytes(name, data, perm)
}

// Symlink adds a symbolic link name pointing at target.
func (b *Builder) Symlink(name, target string) {
	name = clean(name)
	b.Dir(path.Dir(name))
	b.entries[name] = entry{mode: cpio.S_IFLNK | 0o777, data: []byte(target)}
}

// Modules adds kernel modules as /lib/modules/NAME.ko and appends them to
// the load-order list at ModuleListPath.
func (b *Builder) Modules(mods []kernel.Module) {
	for _, m := range mods {
		if dst, added := b.module(m); added {
			b.modules = append(b.modules, dst)
		}
	}
	b.Bytes(ModuleListPath, []byte(strings.Join(b.modules, "\n")+"\n"), 0o644)
}

// module adds module m as /lib/modules/NAME.ko unless the image has it, and
// returns that path and whether it was added now.
func (b *Builder) module(m kernel.Module) (string, bool) {
	dst := "/lib/modules/" + m.Name + ".ko"
	if _, ok := b.entries[clean(dst)]; ok {
		return dst, false
	}
	b.File(dst, m.Path, 0o644)
	return dst, true
}

// ModuleSet adds kernel modules (dependencies first) that the guest loads
// only on demand: those not already in the image go in as
// /lib/modules/NAME.ko, and all of them, in order, are listed at
// protocol.ModuleSetList(name).
func (b *Builder) ModuleSet(name string, mods []kernel.Module) {
	var list []string
	for _, m := range mods {
		dst, _ := b.module(m)
		list = append(list, dst)
	}
	b.Bytes(protocol.ModuleSetList(name), []byte(strings.Join(list, "\n")+"\n"), 0o644)
}

// Static adds a statically linked host binary; a dynamically linked one is
// an error (Dynamic adds one with its loader and libraries).
func (b *Builder) Static(name, src string) {
	if err := CheckStatic(src); err != nil {
		b.fail(fmt.Errorf("initramfs %s: %w", name, err))
		return
	}
	b.File(name, src, 0o755)
}

// CheckStatic reports whether the ELF binary at p has no program
// interpreter.
func CheckStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: %w", p, ErrNotStatic)
		}
	}
	return nil
}

// Busybox adds the host's static busybox as /bin/busybox and a symlink
// for each applet it offers, without replacing anything already added.
func (b *Builder) Busybox() {
	if err := CheckStatic(BusyboxPath); err != nil {
		b.fail(fmt.Errorf("busybox (install busybox-static): %w", err))
		return
	}
	out, err := exec.Command(BusyboxPath, "--list-full").Output()
	if err != nil {
		b.fail(fmt.Errorf("busybox --list-full: %w", err))
		return
	}
	b.File("/bin/busybox", BusyboxPath, 0o755)
	for _, applet := range strings.Fields(string(out)) {
		name := clean(applet)
		if _, ok := b.entries[name]; ok || name == "bin/busybox" {
			continue
		}
		b.Symlink(name, "/bin/busybox")
	}
}

// GoProgram builds the Go package pkg (an import path inside flushvm, e.g.
// "./guest/cmd/init") as a static binary (CGO_ENABLED=0) and adds it as
// name.
func (b *Builder) GoProgram(ctx context.Context, name, pkg string) {
	bin, err := BuildGo(ctx, pkg)
	if err != nil {
		b.fail(fmt.Errorf("initramfs %s: %w", name, err))
		return
	}
	b.Static(name, bin)
}

// BuildGo builds the flushvm package pkg as a static linux/amd64 binary in
// the cache and returns its path. Go's build cache makes repeat builds
// cheap.
func BuildGo(ctx context.Context, pkg string) (string, error) {
	root, err := host.RepoRoot()
	if err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	cache, err := host.CacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	// Named after the whole package path: two packages may share a base
	// name (cmd/init, guest/cmd/init).
	out := filepath.Join(dir, strings.ReplaceAll(strings.TrimLeft(path.Clean(pkg), "./"), "/", "_"))
	tmp, err := os.CreateTemp(dir, ".build-")
	if err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	tmp.Close()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", tmp.Name(), pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if msg, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, strings.TrimSpace(string(msg)))
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	return out, nil
}

// names returns the entry names sorted so parents precede children.
func (b *Builder) names() []string {
	names := make([]string, 0, len(b.entries))
	for n := range b.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Hash identifies the image's contents.
func (b *Builder) Hash() string {
	h := sha256.New()
	for _, n := range b.names() {
		e := b.entries[n]
		sum := sha256.Sum256(e.data)
		fmt.Fprintf(h, "%s\x00%o\x00%d:%d\x00%x\n", n, e.mode, e.rmajor, e.rminor, sum)
	}
	return hex.EncodeToString(h.Sum(nil))[:24]
}

// Build writes the image into cacheDir/initramfs (unless an image with the
// same contents is there already) and returns its path.
func (b *Builder) Build(cacheDir string) (string, error) {
	if b.err != nil {
		return "", b.err
	}
	dir := filepath.Join(cacheDir, "initramfs")
	out := filepath.Join(dir, b.Hash()+".cpio.gz")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	var buf bytes.Buffer
	if err := b.Encode(&buf); err != nil {
		return "", err
	}
	return out, writeAtomic(out, buf.Bytes())
}

// Encode writes the image as a gzip-compressed newc archive to w.
func (b *Builder) Encode(w io.Writer) error {
	if b.err != nil {
		return b.err
	}
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	rw := cpio.Newc.Writer(zw)
	for _, n := range b.names() {
		e := b.entries[n]
		rec := cpio.StaticRecord(e.data, cpio.Info{Name: n, Mode: e.mode, NLink: 1, Rmajor: e.rmajor, Rminor: e.rminor})
		if e.mode&cpio.S_IFMT == cpio.S_IFDIR {
			rec.NLink = 2
		}
		if err := rw.WriteRecord(rec); err != nil {
			return fmt.Errorf("initramfs %s: %w", n, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return fmt.Errorf("initramfs trailer: %w", err)
	}
	return zw.Close()
}

// Append returns a cached image that is base followed by a second archive
// holding extra (for example a per-test /run.sh). base must be a file whose
// name identifies its contents (as Build's output does).
func Append(cacheDir, base string, extra *Builder) (string, error) {
	if extra.err != nil {
		return "", extra.err
	}
	baseData, err := os.ReadFile(base)
	if err != nil {
		return "", fmt.Errorf("initramfs append: %w", err)
	}
	var tail bytes.Buffer
	if err := extra.Encode(&tail); err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write(baseData)
	h.Write(tail.Bytes())
	out := filepath.Join(cacheDir, "initramfs", "x-"+hex.EncodeToString(h.Sum(nil)[:12])+".cpio.gz")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	return out, writeAtomic(out, append(baseData, tail.Bytes()...))
}

// Extra returns an empty builder for an archive appended with Append: it
// carries no skeleton, only what is added to it.
func Extra() *Builder { return &Builder{entries: map[string]entry{}} }

func writeAtomic(dst string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	f, err := os.CreateTemp(filepath.Dir(dst), ".tmp-")
	if err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return nil
}
