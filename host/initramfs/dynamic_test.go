package initramfs

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeELF describes a minimal ELF64 object for the resolver: just the
// program interpreter and the dynamic section's strings.
type fakeELF struct {
	machine elf.Machine
	interp  string
	needed  []string
	runpath string
	rpath   string
	soname  string
}

// write writes the object to p (creating its directory): ELF header,
// PT_INTERP and PT_DYNAMIC program headers, and .interp, .dynstr,
// .dynamic and .shstrtab sections, which is what debug/elf (and the
// resolver) read.
func (e fakeELF) write(t *testing.T, p string) {
	t.Helper()
	machine := e.machine
	if machine == 0 {
		machine = elf.EM_X86_64
	}
	dynstr := []byte{0}
	str := func(s string) uint64 {
		off := len(dynstr)
		dynstr = append(append(dynstr, s...), 0)
		return uint64(off)
	}
	var dyn []elf.Dyn64
	for _, n := range e.needed {
		dyn = append(dyn, elf.Dyn64{Tag: int64(elf.DT_NEEDED), Val: str(n)})
	}
	for tag, v := range map[elf.DynTag]string{elf.DT_RUNPATH: e.runpath, elf.DT_RPATH: e.rpath, elf.DT_SONAME: e.soname} {
		if v != "" {
			dyn = append(dyn, elf.Dyn64{Tag: int64(tag), Val: str(v)})
		}
	}
	dyn = append(dyn, elf.Dyn64{Tag: int64(elf.DT_NULL)})
	var dynBytes bytes.Buffer
	binary.Write(&dynBytes, binary.LittleEndian, dyn)
	interp := []byte{}
	if e.interp != "" {
		interp = append([]byte(e.interp), 0)
	}
	shstr := []byte("\x00.interp\x00.dynstr\x00.dynamic\x00.shstrtab\x00")

	const ehdr, phent, shent = 64, 56, 64
	nph := 1
	if e.interp != "" {
		nph = 2
	}
	offInterp := uint64(ehdr + nph*phent)
	offDynstr := offInterp + uint64(len(interp))
	offDyn := (offDynstr + uint64(len(dynstr)) + 7) &^ 7
	offShstr := offDyn + uint64(dynBytes.Len())
	offSh := (offShstr + uint64(len(shstr)) + 7) &^ 7

	var b bytes.Buffer
	le := binary.LittleEndian
	h := elf.Header64{
		Type: uint16(elf.ET_DYN), Machine: uint16(machine), Version: uint32(elf.EV_CURRENT),
		Phoff: ehdr, Shoff: offSh, Ehsize: ehdr, Phentsize: phent, Phnum: uint16(nph),
		Shentsize: shent, Shnum: 5, Shstrndx: 4,
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS], h.Ident[elf.EI_DATA], h.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	binary.Write(&b, le, h)
	if e.interp != "" {
		binary.Write(&b, le, elf.Prog64{Type: uint32(elf.PT_INTERP), Flags: uint32(elf.PF_R), Off: offInterp, Filesz: uint64(len(interp)), Memsz: uint64(len(interp)), Align: 1})
	}
	binary.Write(&b, le, elf.Prog64{Type: uint32(elf.PT_DYNAMIC), Flags: uint32(elf.PF_R), Off: offDyn, Filesz: uint64(dynBytes.Len()), Memsz: uint64(dynBytes.Len()), Align: 8})
	b.Write(interp)
	b.Write(dynstr)
	b.Write(make([]byte, offDyn-uint64(b.Len())))
	b.Write(dynBytes.Bytes())
	b.Write(shstr)
	b.Write(make([]byte, offSh-uint64(b.Len())))
	for _, s := range []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Off: offInterp, Size: uint64(len(interp)), Addralign: 1},
		{Name: 9, Type: uint32(elf.SHT_STRTAB), Off: offDynstr, Size: uint64(len(dynstr)), Addralign: 1},
		{Name: 17, Type: uint32(elf.SHT_DYNAMIC), Off: offDyn, Size: uint64(dynBytes.Len()), Link: 2, Addralign: 8, Entsize: 16},
		{Name: 26, Type: uint32(elf.SHT_STRTAB), Off: offShstr, Size: uint64(len(shstr)), Addralign: 1},
	} {
		binary.Write(&b, le, s)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestFakeELFParses(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x")
	fakeELF{interp: "/ld.so", needed: []string{"liba.so.1", "libb.so.2"}, runpath: "$ORIGIN/lib", soname: "x.so"}.write(t, p)
	f, err := elf.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	needed, _ := f.ImportedLibraries()
	rp, _ := f.DynString(elf.DT_RUNPATH)
	in, err := interpreter(f)
	if err != nil || in != "/ld.so" || !slices.Equal(needed, []string{"liba.so.1", "libb.so.2"}) || !slices.Equal(rp, []string{"$ORIGIN/lib"}) {
		t.Fatalf("interp %q (%v), needed %q, runpath %q", in, err, needed, rp)
	}
}

func TestSharedObjects(t *testing.T) {
	type file struct {
		path string // relative to the test root
		elf  fakeELF
		link string // a symlink to this instead
	}
	// Every case has a binary at bin/prog (installed as /opt/app/bin/prog),
	// a loader at ld/ld.so and library directories d1 and d2.
	tests := []struct {
		name    string
		files   []file
		want    []SharedObject // relative to the root, except /opt paths
		wantErr string
	}{
		{
			name: "recursive, in load order, loader's soname satisfies libc",
			files: []file{
				{path: "bin/prog", elf: fakeELF{interp: "ROOT/ld/ld.so", needed: []string{"liba.so.1", "libc.so"}}},
				{path: "ld/ld.so", elf: fakeELF{soname: "ld.so.2"}},
				{path: "d1/liba.so.1", elf: fakeELF{needed: []string{"libb.so.2", "libc.so"}}},
				{path: "d2/libb.so.2", elf: fakeELF{needed: []string{"liba.so.1"}}},
				{path: "d2/libc.so", elf: fakeELF{needed: []string{"ld.so.2"}}},
			},
			want: []SharedObject{{"ROOT/ld/ld.so", "ROOT/ld/ld.so"}, {"ROOT/d1/liba.so.1", "ROOT/d1/liba.so.1"}, {"ROOT/d2/libc.so", "ROOT/d2/libc.so"}, {"ROOT/d2/libb.so.2", "ROOT/d2/libb.so.2"}},
		},
		{
			name: "symlinks: content of the target at the looked-up path",
			files: []file{
				{path: "bin/prog", elf: fakeELF{interp: "ROOT/ld64/ld.so", needed: []string{"liba.so.1"}}},
				{path: "ld/ld-2.36.so", elf: fakeELF{}},
				{path: "ld64/ld.so", link: "../ld/ld-2.36.so"},
				{path: "d1/liba.so.1.2.3", elf: fakeELF{}},
				{path: "d1/liba.so.1", link: "liba.so.1.2.3"},
			},
			want: []SharedObject{{"ROOT/ld64/ld.so", "ROOT/ld/ld-2.36.so"}, {"ROOT/d1/liba.so.1", "ROOT/d1/liba.so.1.2.3"}},
		},
		{
			name: "RUNPATH $ORIGIN is the image directory in the image",
			files: []file{
				{path: "bin/prog", elf: fakeELF{interp: "ROOT/ld/ld.so", needed: []string{"libr.so"}, runpath: "${ORIGIN}/../lib:ROOT/nowhere"}},
				{path: "ld/ld.so", elf: fakeELF{}},
				{path: "lib/libr.so", elf: fakeELF{needed: []string{"liba.so.1"}}},
				{path: "d1/libr.so", elf: fakeELF{}},
				{path: "d1/liba.so.1", elf: fakeELF{}},
			},
			want: []SharedObject{{"ROOT/ld/ld.so", "ROOT/ld/ld.so"}, {"/opt/app/lib/libr.so", "ROOT/lib/libr.so"}, {"ROOT/d1/liba.so.1", "ROOT/d1/liba.so.1"}},
		},
		{
			name: "RPATH counts when there is no RUNPATH",
			files: []file{
				{path: "bin/prog", elf: fakeELF{interp: "ROOT/ld/ld.so", needed: []string{"libr.so"}, rpath: "ROOT/private"}},
				{path: "ld/ld.so", elf: fakeELF{}},
				{path: "private/libr.so", elf: fakeELF{}},
				{path: "d1/libr.so", elf: fakeELF{}},
			},
			want: []SharedObject{{"ROOT/ld/ld.so", "ROOT/ld/ld.so"}, {"ROOT/private/libr.so", "ROOT/private/libr.so"}},
		},
		{
			name: "libraries of another machine and non-ELF files are skipped",
			files: []file{
				{path: "bin/prog", elf: fakeELF{interp: "ROOT/ld/ld.so", needed: []string{"liba.so.1", "libb.so"}}},
				{path: "ld/ld.so", elf: fakeELF{}},
				{path: "d1/liba.so.1", elf: fakeELF{machine: elf.EM_AARCH64}},
				{path: "d2/liba.so.1", elf: fakeELF{}},
				{path: "d1/libb.so", link: "/dev/null"},
				{path: "d2/libb.so", elf: fakeELF{}},
			},
			want: []SharedObject{{"ROOT/ld/ld.so", "ROOT/ld/ld.so"}, {"ROOT/d2/liba.so.1", "ROOT/d2/liba.so.1"}, {"ROOT/d2/libb.so", "ROOT/d2/libb.so"}},
		},
		{
			name:  "static binary needs nothing",
			files: []file{{path: "bin/prog", elf: fakeELF{}}},
		},
		{
			name: "missing library named",
			files: []file{
				{path: "bin/prog", elf: fakeELF{interp: "ROOT/ld/ld.so", needed: []string{"liba.so.1"}}},
				{path: "ld/ld.so", elf: fakeELF{}},
				{path: "d1/liba.so.1", elf: fakeELF{needed: []string{"libgone.so.7"}}},
			},
			wantErr: "libgone.so.7 (needed by ROOT/d1/liba.so.1) is not in ROOT/d1:ROOT/d2",
		},
		{
			name: "missing interpreter named",
			files: []file{
				{path: "bin/prog", elf: fakeELF{interp: "ROOT/ld/missing.so", needed: []string{"liba.so.1"}}},
			},
			wantErr: "interpreter ROOT/ld/missing.so",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			fix := func(s string) string { return strings.ReplaceAll(s, "ROOT", root) }
			for _, f := range tt.files {
				p := filepath.Join(root, f.path)
				if f.link != "" {
					os.MkdirAll(filepath.Dir(p), 0o755)
					if err := os.Symlink(f.link, p); err != nil {
						t.Fatal(err)
					}
					continue
				}
				e := f.elf
				e.interp, e.runpath, e.rpath = fix(e.interp), fix(e.runpath), fix(e.rpath)
				e.write(t, p)
			}
			got, err := SharedObjects(filepath.Join(root, "bin/prog"), "/opt/app/bin/prog", []string{filepath.Join(root, "d1"), filepath.Join(root, "d2")})
			if tt.wantErr != "" {
				if !errors.Is(err, ErrLibraryNotFound) || !strings.Contains(err.Error(), fix(tt.wantErr)) {
					t.Fatalf("err = %v, want ErrLibraryNotFound with %q", err, fix(tt.wantErr))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want []SharedObject
			for _, o := range tt.want {
				want = append(want, SharedObject{Path: fix(o.Path), Source: fix(o.Source)})
			}
			if !slices.Equal(got, want) {
				t.Errorf("got  %v\nwant %v", got, want)
			}
		})
	}
}

// TestSharedObjectsE2fsck lists what a real dynamic binary of the host
// needs; the guest images carry e2fsprogs this way.
func TestSharedObjectsE2fsck(t *testing.T) {
	const bin = "/sbin/e2fsck"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s: %v (install e2fsprogs)", bin, err)
	}
	objs, err := SharedObjects(bin, bin, LibraryDirs)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, o := range objs {
		t.Logf("%s <- %s", o.Path, o.Source)
		paths = append(paths, o.Path)
		st, err := os.Lstat(o.Source)
		if err != nil || !st.Mode().IsRegular() {
			t.Errorf("%s: source %s is not a regular file (%v)", o.Path, o.Source, err)
		}
	}
	for _, want := range []string{"/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libext2fs.so.2", "/lib/x86_64-linux-gnu/libcom_err.so.2"} {
		if !slices.Contains(paths, want) {
			t.Errorf("%s missing from %q", want, paths)
		}
	}
	if paths[0] != "/lib64/ld-linux-x86-64.so.2" {
		t.Errorf("first object %s, want the interpreter", paths[0])
	}
	if slices.Contains(paths, "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2") {
		t.Errorf("the loader is listed twice (libc's DT_NEEDED is satisfied by its soname): %q", paths)
	}

	// The same binary with a search path holding none of its libraries.
	_, err = SharedObjects(bin, bin, []string{t.TempDir()})
	if !errors.Is(err, ErrLibraryNotFound) || !strings.Contains(err.Error(), "libext2fs.so.2 (needed by /sbin/e2fsck)") {
		t.Errorf("empty search path: %v, want ErrLibraryNotFound naming libext2fs.so.2", err)
	}
}

func TestDynamicImage(t *testing.T) {
	root := t.TempDir()
	lib := filepath.Join(root, "lib", "liba.so.1")
	ld := filepath.Join(root, "ld.so")
	fakeELF{}.write(t, ld)
	fakeELF{soname: "liba.so.1"}.write(t, lib)
	bin := filepath.Join(root, "prog")
	fakeELF{interp: ld, needed: []string{"liba.so.1"}, runpath: filepath.Dir(lib)}.write(t, bin)

	image := func() (*Builder, map[string]string) {
		b := New()
		b.Dynamic("/bin/prog", bin)
		var buf bytes.Buffer
		if err := b.Encode(&buf); err != nil {
			t.Fatal(err)
		}
		files := map[string]string{}
		for n, r := range records(t, buf.Bytes()) {
			if r.Mode&0o170000 == 0o100000 {
				files[n] = content(t, r)
			}
		}
		return b, files
	}
	b1, files := image()
	for _, p := range []string{"bin/prog", strings.TrimPrefix(ld, "/"), strings.TrimPrefix(lib, "/")} {
		if _, ok := files[p]; !ok {
			t.Errorf("%s missing from the image (has %d files)", p, len(files))
		}
	}
	// A library that changes must change the image's cache key.
	fakeELF{soname: "liba.so.1", needed: []string{"liba.so.1"}}.write(t, lib)
	b2, _ := image()
	if b1.Hash() == b2.Hash() {
		t.Error("image hash unchanged after a library changed")
	}

	b := New()
	os.Remove(lib)
	b.Dynamic("/bin/prog", bin)
	if _, err := b.Build(t.TempDir()); !errors.Is(err, ErrLibraryNotFound) || !strings.Contains(err.Error(), "liba.so.1") {
		t.Errorf("Build after the library vanished: %v, want ErrLibraryNotFound naming liba.so.1", err)
	}
}

func TestExpandOrigin(t *testing.T) {
	tests := []struct{ dir, origin, want string }{
		{"$ORIGIN/../lib", "/opt/app/bin", "/opt/app/bin/../lib"},
		{"${ORIGIN}/lib", "/x", "/x/lib"},
		{"/usr/local/lib", "/x", "/usr/local/lib"},
		{"$ORIGIN/lib", "/tmp/$ORIGIN", "/tmp/$ORIGIN/lib"},
	}
	for _, tt := range tests {
		if got := expandOrigin(tt.dir, tt.origin); got != tt.want {
			t.Errorf("expandOrigin(%q, %q) = %q, want %q", tt.dir, tt.origin, got, tt.want)
		}
	}
}
