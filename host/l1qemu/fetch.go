package l1qemu

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/flushvm/flushvm/host/debpkg"
)

// fetch returns Suite's QEMU from cacheDir/l1qemu, downloading and
// unpacking it first when the version apt offers is not there yet. When
// apt cannot answer, the newest QEMU already in the cache is used.
func fetch(ctx context.Context, cacheDir string) (*QEMU, error) {
	base := filepath.Join(cacheDir, "l1qemu")
	ver, err := candidate(ctx, base)
	if err != nil {
		if q, cerr := newestCached(ctx, base); cerr == nil {
			return q, nil
		}
		return nil, err
	}
	dir := filepath.Join(base, strings.ReplaceAll(ver, ":", "_"))
	if q, err := open(ctx, dir); err == nil {
		return q, nil
	}
	pkgs := make([]string, len(Packages))
	for i, p := range Packages {
		pkgs[i] = p + "=" + ver
	}
	root, err := debpkg.Unpack(ctx, base, pkgs...)
	if err != nil {
		return nil, err
	}
	defer debpkg.Discard(root)
	check := func(d string) error { _, err := open(ctx, d); return err }
	if err := debpkg.Place(root, dir, check, ver); err != nil {
		return nil, err
	}
	return open(ctx, dir)
}

// open describes the QEMU unpacked in dir, checking that it runs.
func open(ctx context.Context, dir string) (*QEMU, error) {
	b, err := os.ReadFile(filepath.Join(dir, debpkg.Marker))
	if err != nil {
		return nil, fmt.Errorf("L1 QEMU cache %s: incomplete: %w", dir, err)
	}
	bin := filepath.Join(dir, "usr", "bin", "qemu-system-x86_64")
	data := filepath.Join(dir, "usr", "share", "qemu")
	v, err := version(ctx, bin, "-L", data)
	if err != nil {
		return nil, fmt.Errorf("L1 QEMU cache %s: %w", dir, err)
	}
	return &QEMU{Exec: []string{bin, "-L", data}, DataDir: data, Version: v,
		Source: Suite + " package " + strings.TrimSpace(string(b)) + ", unpacked in " + dir}, nil
}

// candidate returns the version of qemu-system-x86 that apt offers from
// Suite, memoized under apt's list stamp in base/resolved.
func candidate(ctx context.Context, base string) (string, error) {
	f, err := debpkg.Memoized(filepath.Join(base, "resolved"), 1, func() ([]string, error) {
		out, err := debpkg.Output(ctx, "apt-cache", "madison", Packages[0])
		if err != nil {
			return nil, err
		}
		ver := suiteVersion(out, Suite)
		if ver == "" {
			return nil, fmt.Errorf("apt offers no %s from %s (scripts/deps.sh adds that suite to apt's sources; or set %s=system)",
				Packages[0], Suite, Env)
		}
		return []string{ver}, nil
	})
	if err != nil {
		return "", err
	}
	return f[0], nil
}

// suiteVersion picks, from `apt-cache madison` output, the first version
// that suite offers ("" if none).
func suiteVersion(madison []byte, suite string) string {
	sc := bufio.NewScanner(bytes.NewReader(madison))
	for sc.Scan() {
		f := strings.Split(sc.Text(), "|")
		if len(f) != 3 {
			continue
		}
		for _, w := range strings.Fields(f[2]) {
			if w == suite || strings.HasPrefix(w, suite+"/") {
				return strings.TrimSpace(f[1])
			}
		}
	}
	return ""
}

// newestCached returns the most recently unpacked QEMU under base.
func newestCached(ctx context.Context, base string) (*QEMU, error) {
	dir, _, err := debpkg.Newest(base)
	if err != nil {
		return nil, fmt.Errorf("L1 QEMU: %w", err)
	}
	return open(ctx, dir)
}
