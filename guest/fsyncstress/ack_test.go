package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// consoleWriter stands for the serial console: it fails the test if two
// Write calls overlap or a call is not exactly one whole line, and checks
// each acknowledgement against the syncs made so far.
type consoleWriter struct {
	t        *testing.T
	inflight atomic.Int32
	mu       sync.Mutex
	lines    []string
	synced   func(w int) int // records writer w has synced
}

func (c *consoleWriter) Write(p []byte) (int, error) {
	if c.inflight.Add(1) != 1 {
		c.t.Errorf("concurrent Write calls")
	}
	defer c.inflight.Add(-1)
	s := string(p)
	if strings.HasPrefix(s, "ACK ") {
		if strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") {
			c.t.Errorf("acknowledgement not one whole line: %q", s)
		}
		var w, seq int
		if _, err := fmt.Sscanf(s, "ACK fsyncstress %d %d\n", &w, &seq); err != nil {
			c.t.Errorf("bad acknowledgement %q: %v", s, err)
		} else if c.synced != nil && c.synced(w) != seq+1 {
			c.t.Errorf("%q printed after %d syncs of writer %d's file, want %d", strings.TrimSpace(s), c.synced(w), w, seq+1)
		}
	}
	c.mu.Lock()
	c.lines = append(c.lines, strings.Split(strings.TrimSuffix(s, "\n"), "\n")...)
	c.mu.Unlock()
	return len(p), nil
}

func TestAckAfterSyncInOrder(t *testing.T) {
	const writers, records = 4, 30
	dir := t.TempDir()
	var mu sync.Mutex
	syncs := map[int]int{}
	con := &consoleWriter{t: t, synced: func(w int) int {
		mu.Lock()
		defer mu.Unlock()
		return syncs[w]
	}}
	c := config{dir: dir, writers: writers, records: records, size: 512, ack: true,
		sync: func(f *os.File) error {
			var w int
			if _, err := fmt.Sscanf(filepath.Base(f.Name()), "fsyncstress-%d.dat", &w); err != nil {
				return err
			}
			if err := fdatasync(f); err != nil {
				return err
			}
			mu.Lock()
			syncs[w]++
			mu.Unlock()
			return nil
		}}
	if _, err := stress(c, con); err != nil {
		t.Fatal(err)
	}
	next := make([]int, writers)
	for _, l := range con.lines {
		var w, seq int
		if _, err := fmt.Sscanf(l, "ACK fsyncstress %d %d", &w, &seq); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if w < 0 || w >= writers || seq != next[w] {
			t.Fatalf("line %q: want writer 0..%d, next record %v", l, writers-1, next)
		}
		next[w]++
	}
	for w, n := range next {
		if n != records {
			t.Errorf("writer %d acknowledged %d records, want %d", w, n, records)
		}
	}
}

// eventLog records syncs and console lines in the order they happen.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(e string) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

// Write records each console line as an event.
func (l *eventLog) Write(p []byte) (int, error) {
	l.add(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func TestAckOrderAndBug(t *testing.T) {
	tests := []struct {
		bug  string
		want []string
	}{
		{"", []string{"sync", "ACK fsyncstress 0 0", "sync", "ACK fsyncstress 0 1", "sync", "ACK fsyncstress 0 2"}},
		{bugAckEarly, []string{"ACK fsyncstress 0 0", "sync", "ACK fsyncstress 0 1", "sync", "ACK fsyncstress 0 2", "sync"}},
	}
	for _, tt := range tests {
		t.Run("bug="+tt.bug, func(t *testing.T) {
			log := &eventLog{}
			c := config{dir: t.TempDir(), writers: 1, records: 3, size: 512, ack: true, bug: tt.bug,
				sync: func(f *os.File) error { log.add("sync"); return fdatasync(f) }}
			if _, err := stress(c, log); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(log.events, tt.want) {
				t.Errorf("events %q\nwant   %q", log.events, tt.want)
			}
		})
	}
}

func TestBugFlag(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		status int
		acks   int
	}{
		{"ack-early still writes and syncs every record", []string{"-ack", "-bug", "ack-early"}, exitOK, 8},
		{"ack-early without -ack", []string{"-bug", "ack-early"}, exitOK, 0},
		{"unknown bug", []string{"-ack", "-bug", "ack-late"}, exitError, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			st := run(append([]string{"-dir", t.TempDir(), "-writers", "2", "-records", "4", "-size", "512"}, tt.args...), &out)
			if st != tt.status || strings.Count(out.String(), "ACK fsyncstress ") != tt.acks {
				t.Errorf("status %d (want %d), output:\n%s", st, tt.status, out.String())
			}
		})
	}
	// The checker takes the workload's argument list, -bug included.
	dir := written(t, 1, 4, 512)
	var out strings.Builder
	if st := run([]string{"-check", "-dir", dir, "-writers", "1", "-records", "4", "-size", "512", "-acked", "4", "-bug", "ack-early"}, &out); st != exitOK {
		t.Errorf("-check -bug ack-early: status %d\n%s", st, out.String())
	}
}

func TestAckFlagKeepsWorkload(t *testing.T) {
	tests := []struct {
		name string
		args []string
		acks int
	}{
		{"without -ack", []string{"-writers", "2", "-records", "10", "-size", "512"}, 0},
		{"with -ack", []string{"-ack", "-writers", "2", "-records", "10", "-size", "512"}, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			st := run(append([]string{"-dir", t.TempDir()}, tt.args...), &out)
			acks := strings.Count(out.String(), "ACK fsyncstress ")
			if st != exitOK || acks != tt.acks || !strings.Contains(out.String(), "20 of 20 records intact") {
				t.Errorf("status %d, %d acks (want %d); output:\n%s", st, acks, tt.acks, out.String())
			}
		})
	}
}

// written runs the workload with acknowledgements into a fresh directory
// and returns it.
func written(t *testing.T, writers, records, size int) string {
	t.Helper()
	dir := t.TempDir()
	var out strings.Builder
	args := []string{"-ack", "-dir", dir, "-writers", strconv.Itoa(writers), "-records", strconv.Itoa(records), "-size", strconv.Itoa(size)}
	if st := run(args, &out); st != exitOK {
		t.Fatalf("workload: status %d\n%s", st, out.String())
	}
	return dir
}

func TestCheck(t *testing.T) {
	const size = 1024
	recs := func(n int) int64 { return int64(n) * size }
	damage := func(w int, off int64) func(*testing.T, string) {
		return func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("fsyncstress-%d.dat", w)), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{0xff, 0xee}, off); err != nil {
				t.Fatal(err)
			}
		}
	}
	truncate := func(w int, size int64) func(*testing.T, string) {
		return func(t *testing.T, dir string) {
			if err := os.Truncate(filepath.Join(dir, fmt.Sprintf("fsyncstress-%d.dat", w)), size); err != nil {
				t.Fatal(err)
			}
		}
	}
	remove := func(w int) func(*testing.T, string) {
		return func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, fmt.Sprintf("fsyncstress-%d.dat", w))); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name   string
		acked  string
		mutate func(*testing.T, string)
		status int
		last   string
		detail string
	}{
		{"all acknowledged, all there", "10:10", nil, exitOK, "CHECK fsyncstress acked=20 lost=0 extra=0", "writer 1: acknowledged 10, lost 0, extra 0"},
		{"cut early: unacknowledged records are extra", "3:0", nil, exitOK, "CHECK fsyncstress acked=3 lost=0 extra=17", "writer 0: acknowledged 3, lost 0, extra 7"},
		{"nothing acknowledged, files missing", "0:0", func(t *testing.T, d string) { remove(0)(t, d); remove(1)(t, d) }, exitOK, "CHECK fsyncstress acked=0 lost=0 extra=0", "writer 0: no file"},
		{"acknowledged file missing", "4:10", remove(0), exitViolation, "CHECK fsyncstress acked=14 lost=4 extra=0", "LOST writer 0: file missing"},
		{"file shorter than acknowledged", "10:10", truncate(1, recs(6)), exitViolation, "CHECK fsyncstress acked=20 lost=4 extra=0", "LOST writer 1 record 6: beyond the end of the file"},
		{"torn tail of an unacknowledged record", "10:5", truncate(1, recs(7)+512), exitOK, "CHECK fsyncstress acked=15 lost=0 extra=2", "writer 1: acknowledged 5, lost 0, extra 2 (7680 B)"},
		{"acknowledged record damaged", "10:10", damage(0, recs(2)+100), exitViolation, "CHECK fsyncstress acked=20 lost=1 extra=0", "LOST writer 0 record 2: checksum mismatch"},
		{"unacknowledged record damaged", "2:10", damage(0, recs(5)+100), exitOK, "CHECK fsyncstress acked=12 lost=0 extra=7", "writer 0: acknowledged 2, lost 0, extra 7"},
		{"record header damaged", "10:10", damage(1, recs(9)), exitViolation, "CHECK fsyncstress acked=20 lost=1 extra=0", "LOST writer 1 record 9: no record"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := written(t, 2, 10, size)
			if tt.mutate != nil {
				tt.mutate(t, dir)
			}
			var out strings.Builder
			st := run([]string{"-check", "-dir", dir, "-writers", "2", "-records", "10", "-size", strconv.Itoa(size), "-acked", tt.acked}, &out)
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if st != tt.status || lines[len(lines)-1] != tt.last || !strings.Contains(out.String(), tt.detail) {
				t.Errorf("status %d, want %d, last line %q and a line with %q; output:\n%s", st, tt.status, tt.last, tt.detail, out.String())
			}
		})
	}
}

func TestCheckDetailsBounded(t *testing.T) {
	dir := written(t, 1, 40, 512)
	if err := os.Truncate(filepath.Join(dir, "fsyncstress-0.dat"), 0); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	st := run([]string{"-check", "-dir", dir, "-writers", "1", "-records", "40", "-size", "512", "-acked", "40"}, &out)
	if st != exitViolation || strings.Count(out.String(), "LOST ") != maxDetails || !strings.Contains(out.String(), "30 more lost records") {
		t.Errorf("status %d; output:\n%s", st, out.String())
	}
}

func TestCheckDev(t *testing.T) {
	dev := devFile(t, 1<<20)
	var out strings.Builder
	if st := run([]string{"-ack", "-dev", dev, "-writers", "2", "-records", "8", "-size", "512"}, &out); st != exitOK {
		t.Fatalf("workload: %d\n%s", st, out.String())
	}
	out.Reset()
	st := run([]string{"-check", "-dev", dev, "-writers", "2", "-records", "8", "-size", "512", "-acked", "8:5"}, &out)
	if st != exitOK || !strings.HasSuffix(out.String(), "CHECK fsyncstress acked=13 lost=0 extra=3\n") {
		t.Errorf("status %d; output:\n%s", st, out.String())
	}
}

func TestCheckErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "fsyncstress-0.dat"), 0o755); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	st := run([]string{"-check", "-dir", dir, "-writers", "1", "-records", "2", "-acked", "1"}, &out)
	if st != exitError || strings.Contains(out.String(), "CHECK ") {
		t.Errorf("unreadable record: status %d, want %d and no CHECK line; output:\n%s", st, exitError, out.String())
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"acked too few", []string{"-check", "-dir", "d", "-writers", "3", "-acked", "1:2"}, "has 2 entries, -writers is 3"},
		{"acked too many", []string{"-check", "-dir", "d", "-acked", "1:2:3:4:5"}, "has 5 entries, -writers is 4"},
		{"acked default writers", []string{"-check", "-dir", "d", "-acked", "1"}, "has 1 entries, -writers is 4"},
		{"acked not a number", []string{"-check", "-dir", "d", "-writers", "2", "-acked", "1:x"}, `entry 1 ("x")`},
		{"acked negative", []string{"-check", "-dir", "d", "-writers", "2", "-acked", "1:-1"}, "entry 1"},
		{"acked beyond records", []string{"-check", "-dir", "d", "-writers", "1", "-records", "5", "-acked", "6"}, "0..5"},
		{"acked empty entry", []string{"-check", "-dir", "d", "-writers", "2", "-acked", "1:"}, "entry 1"},
		{"check without acked", []string{"-check", "-dir", "d"}, "-check needs -acked"},
		{"acked without check", []string{"-dir", "d", "-acked", "1:1:1:1"}, "-acked needs -check"},
		{"ack with check", []string{"-ack", "-check", "-dir", "d", "-acked", "1:1:1:1"}, "-ack is for the workload"},
		{"stray argument", []string{"-dir", "d", "extra"}, `unexpected argument "extra"`},
		{"unknown flag", []string{"-bogus"}, "flag provided but not defined"},
		{"unknown bug", []string{"-dir", "d", "-bug", "nope"}, `unknown -bug "nope" (want one of ack-early)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			if st := run(tt.args, &out); st != exitError || !strings.Contains(out.String(), tt.msg) {
				t.Errorf("status %d, want %d and %q; output:\n%s", st, exitError, tt.msg, out.String())
			}
		})
	}
}

func TestAckedFile(t *testing.T) {
	tests := []struct {
		name, keys string
		writers    int
		want       string
		err        string
	}{
		{"in order", "fsyncstress 0 0\nfsyncstress 1 0\nfsyncstress 0 1\n", 2, "2:1", ""},
		{"none", "", 3, "0:0:0", ""},
		{"blank lines", "\nfsyncstress 1 4\n\n", 2, "0:5", ""},
		{"another workload's key", "rename 3\n", 2, "", "key 1"},
		{"writer past -writers", "fsyncstress 2 0\n", 2, "", "below -writers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "acked")
			if err := os.WriteFile(p, []byte(tt.keys), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := ackedFromFile(p, "", config{writers: tt.writers, records: 10})
			if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
				t.Errorf("ackedFromFile = %q, %v; want %q, %q", got, err, tt.want, tt.err)
			}
		})
	}
	if _, err := ackedFromFile("x", "1:2", config{writers: 2}); err == nil {
		t.Error("-acked and -acked-file together accepted")
	}
}
