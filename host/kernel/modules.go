package kernel

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Modules returns the named modules and everything they depend on, each
// after its dependencies and otherwise in the order asked. Dependencies come
// from the depends= field of each module's .modinfo section, so the
// package needs no modules.dep (Debian generates that at install time).
// Compressed modules (.ko.xz, .ko.zst) are decompressed into the cache next
// to the package.
func (k *Kernel) Modules(names ...string) ([]Module, error) {
	index, err := k.index()
	if err != nil {
		return nil, err
	}
	var out []Module
	state := map[string]int{} // 1 = visiting, 2 = done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		name = canonical(name)
		switch state[name] {
		case 1:
			return fmt.Errorf("module %s: dependency cycle via %s", name, from)
		case 2:
			return nil
		}
		state[name] = 1
		src, ok := index[name]
		if !ok {
			if from != "" {
				return fmt.Errorf("%w: %s (needed by %s) in %s", ErrNoModule, name, from, k.Package)
			}
			return fmt.Errorf("%w: %s in %s", ErrNoModule, name, k.Package)
		}
		path, err := k.uncompressed(src)
		if err != nil {
			return err
		}
		deps, err := modinfoDepends(path)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		out = append(out, Module{Name: name, Path: path, Depends: deps})
		return nil
	}
	for _, n := range names {
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// canonical folds '-' to '_' as the kernel does for module names.
func canonical(name string) string { return strings.ReplaceAll(name, "-", "_") }

// index maps module names to their files under ModulesDir/kernel.
func (k *Kernel) index() (map[string]string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.idx != nil {
		return k.idx, nil
	}
	idx := map[string]string{}
	root := filepath.Join(k.ModulesDir, "kernel")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		base := d.Name()
		for _, ext := range []string{".ko", ".ko.xz", ".ko.zst"} {
			if strings.HasSuffix(base, ext) {
				idx[canonical(strings.TrimSuffix(base, ext))] = p
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules of %s: %w", k.Package, err)
	}
	k.idx = idx
	return idx, nil
}

// uncompressed returns a plain .ko for src, decompressing it once into
// Dir/.uncompressed if the package ships it compressed.
func (k *Kernel) uncompressed(src string) (string, error) {
	var tool string
	switch {
	case strings.HasSuffix(src, ".ko"):
		return src, nil
	case strings.HasSuffix(src, ".xz"):
		tool = "xz"
	case strings.HasSuffix(src, ".zst"):
		tool = "zstd"
	}
	rel, err := filepath.Rel(k.Dir, src)
	if err != nil {
		return "", fmt.Errorf("module %s: %w", src, err)
	}
	dst := filepath.Join(k.Dir, ".uncompressed", strings.TrimSuffix(rel, filepath.Ext(rel)))
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", fmt.Errorf("module %s: %w", src, err)
	}
	out, err := exec.Command(tool, "-dc", src).Output()
	if err != nil {
		return "", fmt.Errorf("decompress %s with %s: %w", src, tool, err)
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, out, 0o644); err != nil {
		return "", fmt.Errorf("module %s: %w", src, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return "", fmt.Errorf("module %s: %w", src, err)
	}
	return dst, nil
}

// modinfoDepends reads the depends= entry of a module's .modinfo section.
func modinfoDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: .modinfo: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		var deps []string
		for _, d := range strings.Split(string(v), ",") {
			if d != "" {
				deps = append(deps, canonical(d))
			}
		}
		return deps, nil
	}
	return nil, nil
}
