package disk

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/protocol"
)

// writeAt writes p at off through b.
func writeAt(t *testing.T, b blk.Backend, off int64, p []byte) {
	t.Helper()
	v := blk.NewVec(1)
	v.Append(p)
	if err := b.WriteAt(v, off); err != nil {
		t.Fatal(err)
	}
}

// readAll reads the whole of b.
func readAll(t *testing.T, b blk.Backend) []byte {
	t.Helper()
	p := make([]byte, b.Size())
	v := blk.NewVec(1)
	v.Append(p)
	if err := b.ReadAt(v, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// logEntries reads the write log at path.
func logEntries(t *testing.T, path string) []blk.WriteLogEntry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lr, err := blk.NewWriteLogReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var es []blk.WriteLogEntry
	for {
		e, err := lr.Next()
		if err == io.EOF {
			return es
		}
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
}

func newImage(t *testing.T, dir string, data []byte) string {
	t.Helper()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestConsoleLineMarksAcks: on the write-log disk, ACK lines become MARK
// entries after what the log had when they were printed; other lines do
// not.
func TestConsoleLineMarksAcks(t *testing.T) {
	dir := t.TempDir()
	sp, err := blk.ParseSpec("path=" + newImage(t, dir, make([]byte, 64<<10)))
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "run.wlog")
	d, err := Open(sp, Options{WriteLog: logPath})
	if err != nil {
		t.Fatal(err)
	}
	longest := "ACK " + strings.Repeat("y", protocol.MaxAckKey)
	tooLong := longest + "y"
	if len(longest) > blk.MaxWriteLogMark {
		t.Fatalf("an acknowledgement of %d bytes does not fit a mark (%d bytes)", len(longest), blk.MaxWriteLogMark)
	}
	writeAt(t, d.Dev.Backend(), 0, bytes.Repeat([]byte{1}, 4096))
	if err := d.Dev.Backend().Sync(); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"ACK x 1\n", "hello ACK\n", "  ACK x 2\r\n", longest, tooLong, protocol.FormatCrashCheckNext(1)} {
		d.ConsoleLine([]byte(line))
	}
	writeAt(t, d.Dev.Backend(), 4096, bytes.Repeat([]byte{2}, 512))
	if err := d.Dev.Close(); err != nil {
		t.Fatal(err)
	}
	got := entryKinds(t, logPath)
	want := []string{"write", "flush", "mark ACK x 1", "mark ACK x 2", "mark " + longest, "write"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("log entries %q, want %q", got, want)
	}
}

// crashSetup records a write log over a copy of a random base image and
// writes a set of two states: 0 up to the first flush, 1 everything.
func crashSetup(t *testing.T, dir string) (base []byte, basePath, setPath string, want [2][]byte) {
	t.Helper()
	base = make([]byte, 64<<10)
	for i := range base {
		base[i] = byte(i*31 + i>>9)
	}
	basePath = newImage(t, dir, base)
	work := filepath.Join(dir, "work.img")
	if err := os.WriteFile(work, base, 0o644); err != nil {
		t.Fatal(err)
	}
	fb, err := blk.OpenFile(work, blk.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "run.wlog")
	l, err := blk.CreateWriteLog(fb, logPath)
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, l, 4096, bytes.Repeat([]byte{0xaa}, 4096))
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	want[0] = readAll(t, l)
	writeAt(t, l, 1024, bytes.Repeat([]byte{0xbb}, 1024))
	if err := l.WriteZeroes(8192, 2048, true); err != nil {
		t.Fatal(err)
	}
	want[1] = readAll(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	setPath = filepath.Join(dir, "states.json")
	set := &blk.CrashStateSet{Log: "run.wlog", States: []blk.CrashState{{ID: "flushed", Prefix: 2}, {ID: "all", Prefix: 4}}}
	if err := blk.WriteCrashStateSet(setPath, set); err != nil {
		t.Fatal(err)
	}
	return base, basePath, setPath, want
}

// TestConsoleLineSelectsCrashStates: a crashstates= disk shows the state
// the guest asks for on its console, with its serial; the guest's writes
// last until the next state; the base image is never written.
func TestConsoleLineSelectsCrashStates(t *testing.T) {
	dir := t.TempDir()
	base, basePath, setPath, want := crashSetup(t, dir)
	sp, err := blk.ParseSpec("path=" + basePath + ",crashstates=" + setPath)
	if err != nil {
		t.Fatal(err)
	}
	var diag bytes.Buffer
	d, err := Open(sp, Options{Diag: &diag})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Dev.Close()
	b := d.Dev.Backend()
	scratch := bytes.Repeat([]byte{0xcc}, 512)
	steps := []struct {
		line, serial string
		want         []byte // nil: reads fail
		write        bool   // write scratch at 0 after checking
	}{
		{"", protocol.CrashStateNoneSerial, base, false},
		{protocol.FormatCrashCheckNext(1) + "\r\n", protocol.CrashStateSerial(1), want[1], true},
		{"ACK not a request", protocol.CrashStateSerial(1), append(bytes.Clone(scratch), want[1][512:]...), false},
		{protocol.FormatCrashCheckNext(0), protocol.CrashStateSerial(0), want[0], true},
		{protocol.FormatCrashCheckNext(7), protocol.CrashStateErrorSerial, nil, false},
		{protocol.FormatCrashCheckNext(1), protocol.CrashStateSerial(1), want[1], false},
	}
	for _, st := range steps {
		d.ConsoleLine([]byte(st.line))
		if got := d.CrashStates().Serial(); got != st.serial {
			t.Fatalf("after %q: serial %q, want %q", st.line, got, st.serial)
		}
		p := make([]byte, len(base))
		v := blk.NewVec(1)
		v.Append(p)
		err := b.ReadAt(v, 0)
		if st.want == nil && err == nil || st.want != nil && (err != nil || !bytes.Equal(p, st.want)) {
			t.Fatalf("after %q: read wrong bytes (%v)", st.line, err)
		}
		if st.write {
			writeAt(t, b, 0, scratch)
		}
	}
	if !strings.Contains(diag.String(), "crash state 7") {
		t.Errorf("diagnostics %q do not report the bad state", diag.String())
	}
	if got, err := os.ReadFile(basePath); err != nil || !bytes.Equal(got, base) {
		t.Fatalf("the base image changed (%v)", err)
	}
}

// TestOpenCrashStatesRefuses: a crashstates= disk cannot have a write log,
// nor open a set that does not exist.
func TestOpenCrashStatesRefuses(t *testing.T) {
	dir := t.TempDir()
	_, basePath, setPath, _ := crashSetup(t, dir)
	cases := []struct {
		name, set, log, msg string
	}{
		{"write log", setPath, filepath.Join(dir, "x.wlog"), "no write log"},
		{"no set", filepath.Join(dir, "missing.json"), "", "no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sp, err := blk.ParseSpec("path=" + basePath + ",crashstates=" + tc.set)
			if err != nil {
				t.Fatal(err)
			}
			d, err := Open(sp, Options{WriteLog: tc.log})
			if err == nil {
				d.Dev.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Open: %v, want an error saying %q", err, tc.msg)
			}
		})
	}
}

// TestFaultsMarkTheWriteLog: a fired fault rule is a MARK in the write
// log, in order with the writes and flushes around it, and a dropped
// write never reaches the log (nor the image).
func TestFaultsMarkTheWriteLog(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	if err := os.WriteFile(rules, []byte("write sectors=8-15 drop once\nflush nth=1 eio\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := newImage(t, dir, make([]byte, 64<<10))
	sp, err := blk.ParseSpec("path=" + img + ",faults=" + rules)
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "run.wlog")
	d, err := Open(sp, Options{WriteLog: logPath})
	if err != nil {
		t.Fatal(err)
	}
	b := d.Dev.Backend()
	writeAt(t, b, 0, bytes.Repeat([]byte{1}, 4096))
	writeAt(t, b, 4096, bytes.Repeat([]byte{2}, 4096))
	if err := b.Sync(); err == nil {
		t.Error("the first flush did not fail")
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := d.Dev.Close(); err != nil {
		t.Fatal(err)
	}
	got := entryKinds(t, logPath)
	want := []string{"write", "mark FAULT rule 0: write sectors 8-15 drop", "mark FAULT rule 1: flush eio", "flush"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("log entries %q, want %q", got, want)
	}
	if on, _ := os.ReadFile(img); on[4096] != 0 {
		t.Error("the dropped write reached the image")
	}
}

// entryKinds lists the write log's entries as "write", "flush" or "mark
// TEXT".
func entryKinds(t *testing.T, logPath string) []string {
	t.Helper()
	var got []string
	for _, e := range logEntries(t, logPath) {
		switch {
		case e.IsMark():
			got = append(got, "mark "+e.Mark)
		case e.IsFlush():
			got = append(got, "flush")
		default:
			got = append(got, "write")
		}
	}
	return got
}
