// Command rename is flushvm's atomic-replace guest workload: the classic
// way to replace a file durably. For each version it writes a temporary
// file, fsyncs it, renames it over the target, fsyncs the directory, and
// only then prints an acknowledgement line on stdout (the serial console):
//
//	ACK rename <version>
//
// A crash-test campaign records the last acknowledgement it saw before the
// power cut; after the cut, the checker mode verifies that the target file
// is a whole, undamaged version not older than that acknowledgement — the
// guarantee the sequence above is meant to give on a disk that honours
// flushes. Its last line is machine-readable:
//
//	CHECK rename acked=V lost=L extra=E
//
// (L acknowledged versions the file does not reflect, E versions newer
// than the acknowledged one; see check).
//
// With -create it checks create semantics instead: version V is written
// to a new file "v-V" in the directory, which is fsynced, then the
// directory is fsynced, then "ACK rename V" is printed (the same line, so
// the host reads both modes alike). With -create -tmpfile each file is
// created unnamed (O_TMPFILE), written and fsynced, then linked in as
// "v-V" before the directory fsync. Its checker (-check -create) wants
// every acknowledged version's file, v-1 to v-V, whole (L counts those
// missing or not whole), and counts as E the unacknowledged ones found
// whole.
//
// Usage:
//
//	rename -dir /mnt/disk [-create [-tmpfile]] [-bug NAME] [-versions 200] [-size 16384]
//	rename -check -dir /mnt/disk [-create [-tmpfile]] [-acked N | -acked-file FILE]
//
// -acked-file gives the acknowledged versions as the crash-test checker
// protocol does (protocol/workload.go): a file of keys, "rename V" per
// line; the last acknowledged version is the largest V.
//
// Each version is a header line "flushvm-rename version=V size=S\n"
// followed by S bytes generated from V, so the checker can tell a torn or
// mixed file from a whole one without trusting anything on the disk.
//
// -bug NAME makes the workload break its own durability protocol on
// purpose, to prove that a crash tester notices (default "": none; other
// names are refused):
//
//	no-dir-fsync  skip the directory fsync: acknowledge right after the
//	              rename (with -create: right after the file's fsync;
//	              with -tmpfile: right after the link), so a power cut
//	              can lose an acknowledged version
//
// -check accepts and ignores -bug, -tmpfile, -versions and -size, so one
// argument list serves the workload and its checker.
//
// Exit status: 0 done (workload) or the file is a valid version at least
// as new as -acked (check; with -create: no acknowledged version lost), 1
// the check found a violation, 2 bad usage or an I/O error.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/flushvm/flushvm/guest/internal/ackfile"
	"github.com/flushvm/flushvm/protocol"
)

// target and tmpName are the file names the workload uses in -dir.
const (
	target  = "rename-target"
	tmpName = "rename-target.tmp"
	magic   = "flushvm-rename"
)

// Exit statuses.
const (
	exitOK        = 0
	exitViolation = 1
	exitError     = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout))
}

type config struct {
	dir      string
	versions int
	size     int
	check    bool
	acked    int
	// create writes each version to a new file instead of replacing the
	// target.
	create bool
	// tmpfile (with create) creates each file unnamed (O_TMPFILE) and
	// links it in after its fsync.
	tmpfile bool
	// bug is the -bug the workload commits ("": none; see bugs).
	bug string
	// sync fsyncs a file or directory; (*os.File).Sync except in tests.
	sync func(*os.File) error
}

// bugNoDirFsync skips the directory fsync before the acknowledgement.
const bugNoDirFsync = "no-dir-fsync"

// bugs are the -bug names rename knows.
var bugs = []string{bugNoDirFsync}

func run(args []string, out io.Writer) int {
	fl := flag.NewFlagSet("rename", flag.ContinueOnError)
	fl.SetOutput(out)
	c := config{sync: (*os.File).Sync}
	fl.StringVar(&c.dir, "dir", "", "directory on the file system under test")
	fl.IntVar(&c.versions, "versions", 200, "versions to write (workload)")
	fl.IntVar(&c.size, "size", 16384, "payload bytes per version (workload)")
	fl.BoolVar(&c.check, "check", false, "check the target file instead of writing")
	fl.IntVar(&c.acked, "acked", 0, "last version acknowledged before the cut (check)")
	var ackedFile string
	fl.StringVar(&ackedFile, "acked-file", "", `with -check: a file of acknowledged keys, one "rename V" per line (the crash-test checker protocol's $FLUSHVM_ACKED)`)
	fl.BoolVar(&c.create, "create", false, "write each version to a new file v-V instead of replacing the target")
	fl.BoolVar(&c.tmpfile, "tmpfile", false, "with -create: create each file unnamed (O_TMPFILE), fsync it, then link it in as v-V (the checker ignores it)")
	fl.StringVar(&c.bug, "bug", "", "break the durability protocol on purpose: no-dir-fsync (acknowledge without fsyncing the directory)")
	if err := fl.Parse(args); err != nil {
		return exitError
	}
	switch {
	case c.dir == "":
		fmt.Fprintln(out, "rename: -dir is required")
		return exitError
	case c.versions < 1 || c.size < 0 || c.size > 64<<20 || c.acked < 0:
		fmt.Fprintln(out, "rename: -versions must be at least 1, -size 0..64 MiB, -acked at least 0")
		return exitError
	case fl.NArg() > 0:
		fmt.Fprintf(out, "rename: unexpected argument %q\n", fl.Arg(0))
		return exitError
	case c.tmpfile && !c.create:
		fmt.Fprintln(out, "rename: -tmpfile needs -create")
		return exitError
	case c.bug != "" && !slices.Contains(bugs, c.bug):
		fmt.Fprintf(out, "rename: unknown -bug %q (want one of %s)\n", c.bug, strings.Join(bugs, ", "))
		return exitError
	}
	if ackedFile != "" {
		v, err := ackedFromFile(ackedFile, c.acked)
		if err != nil {
			fmt.Fprintf(out, "rename: %v\n", err)
			return exitError
		}
		c.acked = v
	}
	if c.check {
		return check(c, out)
	}
	if err := workload(c, out); err != nil {
		fmt.Fprintf(out, "rename: %v\n", err)
		return exitError
	}
	return exitOK
}

// ackedFromFile reads -acked-file and returns the last acknowledged
// version; -acked must not be given too.
func ackedFromFile(path string, acked int) (int, error) {
	if acked != 0 {
		return 0, errors.New("give one of -acked and -acked-file")
	}
	keys, err := ackfile.Read(path)
	if err != nil {
		return 0, err
	}
	v := 0
	for i, key := range keys {
		a, ok := protocol.ParseAck("ACK "+key, 0)
		if !ok || a.Workload != "rename" {
			return 0, fmt.Errorf("-acked-file %s key %d: %q is not \"rename V\"", path, i+1, key)
		}
		v = max(v, a.Version)
	}
	return v, nil
}

// content returns version v of the file.
func content(v, size int) []byte {
	b := make([]byte, 0, 64+size)
	b = fmt.Appendf(b, "%s version=%d size=%d\n", magic, v, size)
	r := rand.New(rand.NewPCG(uint64(v), 0x72656e616d65))
	for i := 0; i < size; i += 8 {
		x := r.Uint64()
		for j := 0; j < 8 && i+j < size; j++ {
			b = append(b, byte(x>>(8*j)))
		}
	}
	return b
}

// workload writes c.versions versions, acknowledging each once it is
// durable (or, with a -bug, once the workload pretends it is).
func workload(c config, out io.Writer) error {
	dir, err := os.Open(c.dir)
	if err != nil {
		return err
	}
	defer dir.Close()
	step, done := c.replace, "replaced"
	switch {
	case c.tmpfile:
		step, done = c.linkVersion, "created and linked"
	case c.create:
		step, done = c.createVersion, "created"
	}
	for v := 1; v <= c.versions; v++ {
		if err := step(dir, v); err != nil {
			return fmt.Errorf("version %d: %w", v, err)
		}
		if _, err := fmt.Fprintln(out, protocol.FormatAckRename(v)); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "rename: %d versions %s\n", c.versions, done)
	return nil
}

// replace makes version v the target: write a temporary file, fsync it,
// rename it over the target, fsync the directory. Only then is the
// replace durable.
func (c config) replace(dir *os.File, v int) error {
	tmp := filepath.Join(c.dir, tmpName)
	if err := c.writeSynced(tmp, content(v, c.size)); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, target)); err != nil {
		return err
	}
	return c.syncDir(dir)
}

// syncDir fsyncs the directory, making its new entries durable, unless
// the workload commits -bug no-dir-fsync.
func (c config) syncDir(dir *os.File) error {
	if c.bug == bugNoDirFsync {
		return nil
	}
	if err := c.sync(dir); err != nil {
		return fmt.Errorf("fsync %s: %w", c.dir, err)
	}
	return nil
}

// writeSynced creates or truncates path, writes data and fsyncs it.
func (c config) writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := c.sync(f); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}

// errDamaged reports a target file that is no whole version.
var errDamaged = errors.New("not a whole version")

// parse returns the version the file b holds, or errDamaged.
func parse(b []byte) (int, error) {
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 {
		return 0, fmt.Errorf("%w: no header line", errDamaged)
	}
	f := strings.Fields(string(b[:nl]))
	if len(f) != 3 || f[0] != magic || !strings.HasPrefix(f[1], "version=") || !strings.HasPrefix(f[2], "size=") {
		return 0, fmt.Errorf("%w: header %q", errDamaged, b[:min(nl, 80)])
	}
	v, err1 := strconv.Atoi(strings.TrimPrefix(f[1], "version="))
	size, err2 := strconv.Atoi(strings.TrimPrefix(f[2], "size="))
	if err1 != nil || err2 != nil || v < 1 || size < 0 || size > 64<<20 {
		return 0, fmt.Errorf("%w: header %q", errDamaged, b[:nl])
	}
	if !bytes.Equal(b, content(v, size)) {
		return v, fmt.Errorf("%w: version %d header, but %d bytes that are not its contents", errDamaged, v, len(b))
	}
	return v, nil
}

// check verifies the target file against the last acknowledged version
// c.acked and ends with the machine-readable line
//
//	CHECK rename acked=V lost=L extra=E
//
// L is 0 when the file is a whole version v >= V, V - v when it is an older
// whole version, V when it is missing or damaged; E is v - V when it is
// newer. A damaged file is a violation even when nothing was acknowledged
// (the replace must be atomic), so the status, not L alone, says whether
// the check passed. An I/O error prints no CHECK line.
//
// With -create, checkCreated gives the status, L and E instead.
func check(c config, out io.Writer) int {
	verify := checkTarget
	if c.create {
		verify = checkCreated
	}
	status, lost, extra := verify(c, out)
	if status == exitError {
		return status
	}
	fmt.Fprintln(out, protocol.Check{Workload: "rename", Acked: c.acked, Lost: lost, Extra: extra})
	return status
}

// checkTarget prints what the target file holds and returns the exit
// status and the lost and extra versions.
func checkTarget(c config, out io.Writer) (status, lost, extra int) {
	b, err := os.ReadFile(filepath.Join(c.dir, target))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if c.acked > 0 {
			fmt.Fprintf(out, "rename-check: VIOLATION: %s missing, but version %d was acknowledged\n", target, c.acked)
			return exitViolation, c.acked, 0
		}
		fmt.Fprintln(out, "rename-check: ok: no version yet, none acknowledged")
		return exitOK, 0, 0
	case err != nil:
		fmt.Fprintf(out, "rename-check: %v\n", err)
		return exitError, 0, 0
	}
	v, err := parse(b)
	if err != nil {
		fmt.Fprintf(out, "rename-check: VIOLATION: %s: %v\n", target, err)
		return exitViolation, c.acked, 0
	}
	if v < c.acked {
		fmt.Fprintf(out, "rename-check: VIOLATION: %s holds version %d, older than acknowledged version %d\n", target, v, c.acked)
		return exitViolation, c.acked - v, 0
	}
	fmt.Fprintf(out, "rename-check: ok: version %d (last acknowledged %d)\n", v, c.acked)
	return exitOK, 0, v - c.acked
}
