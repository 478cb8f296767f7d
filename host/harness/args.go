package harness

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/flushvm/flushvm/protocol"
)

// ErrTooManyDisks reports more distinct disks than L1 has virtio-blk names
// for.
var ErrTooManyDisks = errors.New("too many disks for the nested harness")

// valueFlags are flushvm run flags that take a value; the harness maps the
// ones naming host files and passes the others through untouched.
var valueFlags = flagSet(protocol.RunValueFlags)

// flagSet is names as a set.
func flagSet(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// disk is one host file or device attached to L1 as a virtio-blk drive.
type disk struct {
	host     string
	readonly bool
	l1       string // /dev/vdX
}

// statsCopy is an output file (--stats, --write-log) L1 writes into the job
// directory and the harness copies back to the host path the caller asked
// for.
type statsCopy struct {
	l1   string // path inside the job directory (host view)
	host string
	// stats marks a --stats document, whose disk paths are mapped back to
	// host files; report marks a crashtest report, whose input paths are;
	// other outputs are copied as they are.
	stats, report bool
}

// mapper rewrites flushvm run arguments from host paths to L1 paths for
// one nested session.
type mapper struct {
	jobDir string
	inputs map[string]string // host path -> L1 path
	disks  []*disk
	stats  map[int][]statsCopy
	n      int
	// kept are the crashtest --dir directories to copy back from the
	// scratch disk.
	kept []keptDir
}

func newMapper(jobDir string) *mapper {
	return &mapper{jobDir: jobDir, inputs: map[string]string{}, stats: map[int][]statsCopy{}}
}

// rewrite maps the arguments of run i, a flushvm subcommand (SubRun or
// SubCrashtest).
func (m *mapper) rewrite(i int, sub string, args []string) ([]string, error) {
	flags := valueFlags
	if sub == SubCrashtest {
		flags = crashtestValueFlags
	}
	out := make([]string, 0, len(args))
	for k := 0; k < len(args); k++ {
		a := args[k]
		name, val, hasVal := "", "", false
		if strings.HasPrefix(a, "--") {
			name, val, hasVal = strings.Cut(a[2:], "=")
		}
		if !flags[name] {
			out = append(out, a)
			continue
		}
		if !hasVal {
			if k+1 >= len(args) {
				out = append(out, a) // flushvm reports the missing value
				continue
			}
			k++
			val = args[k]
		}
		var err error
		switch name {
		case "kernel", "initrd":
			val, err = m.input(val)
		case "workload-dir":
			val, err = m.inputDir(val)
		case "disk":
			val, err = m.disk(val)
		case "report":
			val = m.outFile(i, val, "report", ".json")
		case "dir":
			abs, aerr := filepath.Abs(val)
			if aerr != nil {
				return nil, fmt.Errorf("map --dir %s: %w", val, aerr)
			}
			m.kept = append(m.kept, keptDir{run: i, host: abs})
			val = scratchDir(i)
		case "reproduce":
			// crashtest --reproduce LOG: LOG's directory (the record log,
			// its base image) goes to the scratch disk and comes back
			// with the rebuilt image.
			abs, aerr := filepath.Abs(val)
			if aerr != nil {
				return nil, fmt.Errorf("map --reproduce %s: %w", val, aerr)
			}
			m.kept = append(m.kept, keptDir{run: i, host: filepath.Dir(abs)})
			val = scratchDir(i) + "/" + filepath.Base(abs)
		case "stats":
			val = m.outFile(i, val, "stats", ".json")
		case "write-log":
			val = m.outFile(i, val, "write-log", ".wlog")
		}
		if err != nil {
			return nil, err
		}
		out = append(out, "--"+name+"="+val)
	}
	return out, nil
}

// input makes a host file visible in the job directory (hard link, or copy
// across file systems) and returns its L1 path. A missing file maps to a
// missing L1 path so flushvm reports it in its own words.
func (m *mapper) input(host string) (string, error) {
	return m.mapInput(host, func(fi os.FileInfo) bool { return fi.Mode().IsRegular() }, linkOrCopy)
}

// inputDir makes a host directory visible in the job directory (a tree
// of hard links, or copies across file systems, symbolic links kept) and
// returns its L1 path, as input does for a file.
func (m *mapper) inputDir(host string) (string, error) {
	return m.mapInput(host, os.FileInfo.IsDir, copyTree)
}

// mapInput maps host into the job directory's in/ with put when ok
// accepts it, once per host path.
func (m *mapper) mapInput(host string, ok func(os.FileInfo) bool, put func(src, dst string) error) (string, error) {
	abs, err := filepath.Abs(host)
	if err != nil {
		return "", fmt.Errorf("map %s: %w", host, err)
	}
	if p, ok := m.inputs[abs]; ok {
		return p, nil
	}
	m.n++
	name := strconv.Itoa(m.n) + "-" + filepath.Base(abs)
	l1 := protocol.L1JobMount + "/in/" + name
	if fi, err := os.Stat(abs); err != nil || !ok(fi) {
		l1 = protocol.L1JobMount + "/missing/" + filepath.Base(abs)
	} else if err := put(abs, filepath.Join(m.jobDir, "in", name)); err != nil {
		return "", fmt.Errorf("map %s into L1: %w", host, err)
	}
	m.inputs[abs] = l1
	return l1, nil
}

// copyTree recreates the directory src as dst: directories, symbolic
// links, and regular files (hard links, or copies).
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(to, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case d.Type().IsRegular():
			return linkOrCopy(p, to)
		}
		return fmt.Errorf("%s: not a regular file, directory or symbolic link", p)
	})
}

// diskSpecPath returns a --disk SPEC's path= (empty without one) and
// whether it says readonly=on.
func diskSpecPath(spec string) (path string, readonly bool) {
	kvs, err := protocol.SplitDiskSpec(spec)
	if err != nil {
		return "", false
	}
	return specPath(kvs)
}

// specPath returns a split SPEC's path and whether the disk is read-only
// (readonly= in any of the SPEC's boolean spellings).
func specPath(kvs []protocol.DiskSpecKey) (path string, readonly bool) {
	path, _ = protocol.DiskSpecValue(kvs, "path")
	ro, _ := protocol.DiskSpecValue(kvs, "readonly")
	readonly, _ = protocol.ParseOnOff(ro)
	return path, readonly
}

// disk maps a --disk SPEC's path= to the L1 virtio-blk device that carries
// the host file and its faults= rules file into the job directory, leaving
// every other key as given.
func (m *mapper) disk(spec string) (string, error) {
	kvs, err := protocol.SplitDiskSpec(spec)
	if err != nil {
		return spec, nil // flushvm reports it
	}
	host, readonly := specPath(kvs)
	l1, err := m.attach(host, readonly)
	if err != nil {
		return "", err
	}
	for i := range kvs {
		switch kvs[i].Key {
		case "path":
			kvs[i].Value = l1
		case "faults":
			if kvs[i].Value, err = m.input(kvs[i].Value); err != nil {
				return "", err
			}
		}
	}
	return protocol.JoinDiskSpec(kvs), nil
}

// attach returns the L1 path of the host file or device: a virtio-blk
// drive of L1 (one per distinct file, writable if any SPEC writes it), or a
// path under the job directory that does not exist, for flushvm to report.
func (m *mapper) attach(host string, readonly bool) (string, error) {
	abs, err := filepath.Abs(host)
	if err != nil {
		return "", fmt.Errorf("map disk %s: %w", host, err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	if _, err := os.Stat(abs); err != nil {
		return protocol.L1JobMount + "/missing/" + filepath.Base(abs), nil
	}
	var d *disk
	for _, e := range m.disks {
		if e.host == abs {
			d = e
		}
	}
	if d == nil {
		if len(m.disks) >= 26 {
			return "", ErrTooManyDisks
		}
		d = &disk{host: abs, readonly: readonly, l1: "/dev/vd" + string(rune('a'+len(m.disks)))}
		m.disks = append(m.disks, d)
	}
	if !readonly {
		d.readonly = false
	}
	return d.l1, nil
}

// outFile maps an output file of run i to the job directory.
func (m *mapper) outFile(i int, host, kind, ext string) string {
	name := fmt.Sprintf("%s-%d-%d%s", kind, i, len(m.stats[i]), ext)
	m.stats[i] = append(m.stats[i], statsCopy{l1: filepath.Join(m.jobDir, protocol.L1JobOutDir, name), host: host,
		stats: kind == "stats", report: kind == "report"})
	return protocol.L1JobMount + "/" + protocol.L1JobOutDir + "/" + name
}

// hostPath maps an L1 disk path back to the host file.
func (m *mapper) hostPath(l1 string) (string, bool) {
	for _, d := range m.disks {
		if d.l1 == l1 {
			return d.host, true
		}
	}
	return "", false
}

func linkOrCopy(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
