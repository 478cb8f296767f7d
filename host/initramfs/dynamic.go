package initramfs

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// LibraryDirs are the directories Debian's amd64 loader searches for a
// shared library when neither the object's RUNPATH/RPATH nor
// /etc/ld.so.cache (which guest images do not have) names one: the
// system search path `ld.so --help` prints. A library found in a
// directory the loader does not search by default would be of no use in
// the guest, so /lib64 (which holds only the loader itself, found through
// PT_INTERP) is not among them.
var LibraryDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"}

// ErrLibraryNotFound reports a program interpreter or shared library a
// dynamically linked binary needs that is nowhere the loader would look.
var ErrLibraryNotFound = errors.New("shared library not found")

// SharedObject is one file a dynamically linked binary needs at run time.
type SharedObject struct {
	// Path is where the guest's loader looks it up: the image path.
	Path string
	// Source is the host file holding its contents, symlinks resolved.
	Source string
}

// Dynamic adds the host binary src as name together with everything the
// loader needs to run it: its ELF interpreter and its DT_NEEDED shared
// libraries, recursively, each as a regular file at the path the loader
// looks it up (see SharedObjects). A static binary is added alone.
func (b *Builder) Dynamic(name, src string) {
	objs, err := SharedObjects(src, "/"+clean(name), LibraryDirs)
	if err != nil {
		b.fail(fmt.Errorf("initramfs %s: %w", name, err))
		return
	}
	b.File(name, src, 0o755)
	for _, o := range objs {
		st, err := os.Stat(o.Source)
		if err != nil {
			b.fail(fmt.Errorf("initramfs %s: %w", name, err))
			return
		}
		b.File(o.Path, o.Source, uint64(st.Mode().Perm()))
	}
}

// elfObject is an ELF file being resolved: where it is on the host and
// where it will be in the image ($ORIGIN differs between the two).
type elfObject struct {
	host, image string
}

// SharedObjects lists what the loader needs to run the host binary src
// once it is installed at image path name: the program interpreter (at
// its PT_INTERP path), then the shared libraries in breadth-first load
// order. Like ld.so, it looks each DT_NEEDED name up in the needing
// object's DT_RUNPATH (or, without one, DT_RPATH; $ORIGIN expanded) and
// then in dirs, skips files that are not ELF objects of the binary's class
// and machine, and treats a name as loaded once an object with that name
// or DT_SONAME is (libc needs the interpreter by its soname). Paths are
// the ones looked up, so a symlink on the host becomes a file with the
// target's contents. A static binary needs nothing.
func SharedObjects(src, name string, dirs []string) ([]SharedObject, error) {
	f, err := elf.Open(src)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	defer f.Close()
	interp, err := interpreter(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	if interp == "" {
		return nil, nil
	}
	class, machine := f.Class, f.Machine
	var out []SharedObject
	loaded := map[string]bool{}
	add := func(o elfObject) error {
		real, err := filepath.EvalSymlinks(o.host)
		if err != nil {
			return err
		}
		out = append(out, SharedObject{Path: o.image, Source: real})
		loaded[o.image] = true
		return nil
	}
	ld, ok := compatible(interp, class, machine)
	if !ok {
		return nil, fmt.Errorf("%w: %s: interpreter %s", ErrLibraryNotFound, src, interp)
	}
	if err := add(elfObject{host: interp, image: path.Clean(interp)}); err != nil {
		return nil, fmt.Errorf("%s: interpreter: %w", src, err)
	}
	if soname, _ := ld.DynString(elf.DT_SONAME); len(soname) > 0 {
		loaded[soname[0]] = true
	}
	ld.Close()

	queue := []elfObject{{host: src, image: name}}
	for len(queue) > 0 {
		obj := queue[0]
		queue = queue[1:]
		needed, search, err := dynamicInfo(obj)
		if err != nil {
			return nil, err
		}
		for _, lib := range needed {
			if loaded[lib] {
				continue
			}
			found, soname, ok := lookup(lib, search, dirs, class, machine)
			if !ok {
				return nil, fmt.Errorf("%w: %s (needed by %s) is not in %s", ErrLibraryNotFound, lib, obj.host, strings.Join(searchList(search, dirs), ":"))
			}
			if loaded[found.image] {
				loaded[lib] = true
				continue
			}
			if err := add(found); err != nil {
				return nil, fmt.Errorf("%s (needed by %s): %w", lib, obj.host, err)
			}
			loaded[lib] = true
			if soname != "" {
				loaded[soname] = true
			}
			queue = append(queue, found)
		}
	}
	return out, nil
}

// interpreter returns f's PT_INTERP path, "" for a static binary.
func interpreter(f *elf.File) (string, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(p.Open(), 4096))
		if err != nil {
			return "", fmt.Errorf("PT_INTERP: %w", err)
		}
		s := strings.TrimRight(string(b), "\x00")
		if !path.IsAbs(s) {
			return "", fmt.Errorf("PT_INTERP %q is not an absolute path", s)
		}
		return s, nil
	}
	return "", nil
}

// dynamicInfo returns obj's DT_NEEDED names and the directories its
// DT_RUNPATH (or DT_RPATH) adds, as host/image pairs.
func dynamicInfo(obj elfObject) ([]string, []elfObject, error) {
	f, err := elf.Open(obj.host)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", obj.host, err)
	}
	defer f.Close()
	if f.SectionByType(elf.SHT_DYNAMIC) == nil {
		for _, p := range f.Progs {
			if p.Type == elf.PT_DYNAMIC {
				return nil, nil, fmt.Errorf("%s: no section headers for its dynamic segment: cannot list its libraries", obj.host)
			}
		}
		return nil, nil, nil
	}
	needed, err := f.DynString(elf.DT_NEEDED)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: DT_NEEDED: %w", obj.host, err)
	}
	rpath, err := f.DynString(elf.DT_RUNPATH)
	if err == nil && len(rpath) == 0 {
		rpath, err = f.DynString(elf.DT_RPATH)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: RUNPATH: %w", obj.host, err)
	}
	var search []elfObject
	for _, list := range rpath {
		for _, d := range strings.Split(list, ":") {
			if d == "" {
				continue
			}
			search = append(search, elfObject{
				host:  expandOrigin(d, filepath.Dir(obj.host)),
				image: expandOrigin(d, path.Dir(obj.image)),
			})
		}
	}
	return needed, search, nil
}

// expandOrigin replaces $ORIGIN (or ${ORIGIN}) in a RUNPATH entry by the
// directory of the object that carries it.
func expandOrigin(d, origin string) string {
	// One pass: origin itself may contain "$ORIGIN".
	return strings.NewReplacer("${ORIGIN}", origin, "$ORIGIN", origin).Replace(d)
}

// lookup finds the library lib: a name with a slash is a path; otherwise
// the first compatible file named lib in search, then in dirs. It returns
// the object and its DT_SONAME.
func lookup(lib string, search []elfObject, dirs []string, class elf.Class, machine elf.Machine) (elfObject, string, bool) {
	var cands []elfObject
	if strings.Contains(lib, "/") {
		cands = []elfObject{{host: lib, image: path.Clean(lib)}}
	} else {
		for _, d := range search {
			cands = append(cands, elfObject{host: filepath.Join(d.host, lib), image: path.Join(d.image, lib)})
		}
		for _, d := range dirs {
			cands = append(cands, elfObject{host: filepath.Join(d, lib), image: path.Join(d, lib)})
		}
	}
	for _, c := range cands {
		if !path.IsAbs(c.image) {
			continue
		}
		f, ok := compatible(c.host, class, machine)
		if !ok {
			continue
		}
		soname, _ := f.DynString(elf.DT_SONAME)
		f.Close()
		if len(soname) > 0 {
			return c, soname[0], true
		}
		return c, "", true
	}
	return elfObject{}, "", false
}

// compatible opens p if it is an ELF object the loader of a class/machine
// binary could load; the caller closes it.
func compatible(p string, class elf.Class, machine elf.Machine) (*elf.File, bool) {
	f, err := elf.Open(p)
	if err != nil {
		return nil, false
	}
	if f.Class != class || f.Machine != machine {
		f.Close()
		return nil, false
	}
	return f, true
}

// searchList is the directories a failed lookup tried, for its error.
func searchList(search []elfObject, dirs []string) []string {
	out := make([]string, 0, len(search)+len(dirs))
	for _, d := range search {
		out = append(out, d.host)
	}
	return append(out, dirs...)
}
