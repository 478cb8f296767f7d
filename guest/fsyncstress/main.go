// Command fsyncstress is flushvm's default guest workload: N writers each
// append fixed-size checksummed records to their own file (or their own
// region of a raw disk) and fdatasync after every record; then every
// record is read back and checked. It prints throughput and p50/p99
// fdatasync latency, and exits non-zero if any record is missing or
// damaged.
//
// With -ack it also acknowledges each record on stdout (the serial console
// in a test guest) as soon as its fdatasync has returned:
//
//	ACK fsyncstress W SEQ
//
// (writer W, record SEQ, both from 0; a writer's records are written and
// acknowledged in order, and concurrent writers never split a line). A
// crash-test campaign cuts the power at some point of such a run, then
// boots a checker: -check reads the files back and verifies that every
// acknowledged record survived. Its last line is machine-readable:
//
//	CHECK fsyncstress acked=A lost=L extra=E
//
// A is the number of acknowledged records (the sum of -acked), L those
// missing or damaged, E the unacknowledged records found intact. A writer
// whose file is missing or shorter than its acknowledged records has lost
// the records that are not there.
//
// Usage:
//
//	fsyncstress -dir /mnt/disk [-ack] [-bug NAME] [-writers 4] [-records 500] [-size 4096]
//	fsyncstress -dev /dev/vda  [-ack] [-bug NAME] [-writers 4] [-records 500] [-size 4096]
//	fsyncstress -check -dir /mnt/disk -acked N0:N1:...:Nw-1 [-writers 4] [-records 500] [-size 4096]
//	fsyncstress -check -dir /mnt/disk -acked-file FILE [-writers 4] [-records 500] [-size 4096]
//
// -acked gives, per writer, the number of records it acknowledged (its
// last SEQ+1, 0 if none); it needs one entry per writer. -acked-file gives
// the same as the crash-test checker protocol does (protocol/workload.go):
// a file of the acknowledged keys, "fsyncstress W SEQ" per line.
//
// -bug NAME makes the workload break its own durability protocol on
// purpose, to prove that a crash tester notices (default "": none; other
// names are refused):
//
//	ack-early   acknowledge each record before its fdatasync (which still
//	            follows), so a power cut can lose acknowledged records
//
// It has no effect without -ack, and -check accepts and ignores it, so one
// argument list serves the workload and its checker.
//
// Exit status: 0 all records intact (workload) or no acknowledged record
// lost (check), 1 a record failed verification or an acknowledged record
// was lost, 2 bad usage or an I/O error.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flushvm/flushvm/guest/internal/ackfile"
	"github.com/flushvm/flushvm/protocol"
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
	dir     string
	dev     string
	writers int
	records int
	size    int
	// ack prints an acknowledgement line after each record's fdatasync.
	ack bool
	// checkMode checks an earlier run's records against acked instead of
	// writing.
	checkMode bool
	// acked is, per writer, the number of records it acknowledged
	// (checkMode).
	acked []int
	// bug is the -bug the workload commits ("": none; see bugs).
	bug string
	// sync makes a written record durable; fdatasync except in tests.
	sync func(*os.File) error
}

// bugAckEarly acknowledges a record before its fdatasync.
const bugAckEarly = "ack-early"

// bugs are the -bug names fsyncstress knows.
var bugs = []string{bugAckEarly}

func run(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("fsyncstress", flag.ContinueOnError)
	fs.SetOutput(out)
	c := config{sync: fdatasync}
	var acked, ackedFile string
	fs.StringVar(&c.dir, "dir", "", "directory on the file system under test (one file per writer)")
	fs.StringVar(&c.dev, "dev", "", "raw block device under test (one region per writer); overwrites it")
	fs.IntVar(&c.writers, "writers", 4, "concurrent writers")
	fs.IntVar(&c.records, "records", 500, "records each writer appends")
	fs.IntVar(&c.size, "size", 4096, "record size in bytes (multiple of 512, at least 512)")
	fs.BoolVar(&c.ack, "ack", false, `print "ACK fsyncstress W SEQ" on stdout after each record's fdatasync returns`)
	fs.BoolVar(&c.checkMode, "check", false, "check the records an earlier (interrupted) run left instead of writing")
	fs.StringVar(&acked, "acked", "", "with -check: records each writer acknowledged, N0:N1:... (one entry per writer)")
	fs.StringVar(&ackedFile, "acked-file", "", "with -check: a file of acknowledged keys, one \"fsyncstress W SEQ\" per line (the crash-test checker protocol's $FLUSHVM_ACKED)")
	fs.StringVar(&c.bug, "bug", "", "break the durability protocol on purpose: ack-early (acknowledge before fdatasync)")
	if err := fs.Parse(args); err != nil {
		return exitError
	}
	err := c.validate()
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err == nil && ackedFile != "" {
		acked, err = ackedFromFile(ackedFile, acked, c)
	}
	if err == nil {
		c.acked, err = parseAcked(acked, c)
	}
	if err != nil {
		fmt.Fprintf(out, "fsyncstress: %v\n", err)
		return exitError
	}
	if c.checkMode {
		return checkRun(c, out)
	}
	rep, err := stress(c, out)
	if err != nil {
		fmt.Fprintf(out, "fsyncstress: %v\n", err)
		return exitError
	}
	fmt.Fprintln(out, rep.summary(c))
	bad := verify(c, out)
	if bad != 0 {
		fmt.Fprintf(out, "fsyncstress: verify: %d of %d records damaged or missing\n", bad, c.writers*c.records)
		return exitViolation
	}
	fmt.Fprintf(out, "fsyncstress: verify: %d of %d records intact\n", c.writers*c.records, c.writers*c.records)
	return exitOK
}

func (c config) validate() error {
	switch {
	case (c.dir == "") == (c.dev == ""):
		return errors.New("give exactly one of -dir and -dev")
	case c.writers < 1 || c.writers > 1024:
		return errors.New("-writers must be 1..1024")
	case c.records < 1:
		return errors.New("-records must be at least 1")
	case c.size < 512 || c.size%512 != 0 || c.size > 1<<20:
		return errors.New("-size must be a multiple of 512 between 512 and 1 MiB")
	case c.ack && c.checkMode:
		return errors.New("-ack is for the workload, not -check")
	case c.bug != "" && !slices.Contains(bugs, c.bug):
		return fmt.Errorf("unknown -bug %q (want one of %s)", c.bug, strings.Join(bugs, ", "))
	}
	return nil
}

// parseAcked parses -acked "N0:N1:...": it is required with -check and
// meaningless without, needs one entry per writer, and no writer can have
// acknowledged more records than it writes.
func parseAcked(s string, c config) ([]int, error) {
	switch {
	case !c.checkMode && s != "":
		return nil, errors.New("-acked needs -check")
	case !c.checkMode:
		return nil, nil
	case s == "":
		return nil, errors.New("-check needs -acked N0:N1:... (one entry per writer, 0 for none)")
	}
	parts := strings.Split(s, ":")
	if len(parts) != c.writers {
		return nil, fmt.Errorf("-acked %q has %d entries, -writers is %d", s, len(parts), c.writers)
	}
	acked := make([]int, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > c.records {
			return nil, fmt.Errorf("-acked %q: entry %d (%q) must be a number 0..%d (-records)", s, i, p, c.records)
		}
		acked[i] = n
	}
	return acked, nil
}

// ackedFromFile reads -acked-file (one key per line, as the workload
// acknowledged them) into the -acked form; -acked must not be given too.
func ackedFromFile(path, acked string, c config) (string, error) {
	if acked != "" {
		return "", errors.New("give one of -acked and -acked-file")
	}
	keys, err := ackfile.Read(path)
	if err != nil {
		return "", err
	}
	n := make([]int, c.writers)
	for i, key := range keys {
		a, ok := protocol.ParseAck("ACK "+key, c.writers)
		if !ok || a.Workload != "fsyncstress" {
			return "", fmt.Errorf("-acked-file %s key %d: %q is not \"fsyncstress W SEQ\" with W below -writers", path, i+1, key)
		}
		n[a.Writer] = max(n[a.Writer], a.Seq+1)
	}
	per := make([]string, c.writers)
	for w := range per {
		per[w] = strconv.Itoa(n[w])
	}
	return strings.Join(per, ":"), nil
}

// target opens writer w's file or region for writing or reading and
// returns the byte offset its records start at.
func (c config) target(w int, write bool) (*os.File, int64, error) {
	if c.dev != "" {
		flag := os.O_RDONLY
		if write {
			flag = os.O_WRONLY
		}
		f, err := os.OpenFile(c.dev, flag, 0)
		if err != nil {
			return nil, 0, err
		}
		region := int64(c.records) * int64(c.size)
		end, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, 0, err
		}
		if need := region * int64(c.writers); end < need {
			f.Close()
			return nil, 0, fmt.Errorf("%s holds %d bytes, the run needs %d", c.dev, end, need)
		}
		return f, int64(w) * region, nil
	}
	p := filepath.Join(c.dir, fmt.Sprintf("fsyncstress-%d.dat", w))
	if write {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		return f, 0, err
	}
	f, err := os.Open(p)
	return f, 0, err
}

type report struct {
	elapsed time.Duration
	lat     []time.Duration
}

func (r report) summary(c config) string {
	sort.Slice(r.lat, func(i, j int) bool { return r.lat[i] < r.lat[j] })
	n := len(r.lat)
	secs := r.elapsed.Seconds()
	return fmt.Sprintf("fsyncstress: %d writers x %d records x %d B: %d fdatasyncs in %.2f s, %.0f records/s, %.2f MiB/s; fdatasync p50 %v p99 %v",
		c.writers, c.records, c.size, n, secs, float64(n)/secs, float64(n)*float64(c.size)/secs/(1<<20),
		percentile(r.lat, 50), percentile(r.lat, 99))
}

// percentile returns the p-th percentile of sorted latencies (nearest
// rank), rounded for printing.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return sorted[i-1].Round(time.Microsecond)
}

// lineWriter puts whole lines from concurrent writers on one stream: each
// line is one Write call, made under a lock, so no two interleave.
type lineWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineWriter) writeLine(b []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, err := l.w.Write(b)
	return err
}

// stress runs the writers; with c.ack they acknowledge records on out.
func stress(c config, out io.Writer) (report, error) {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		lat  = make([]time.Duration, 0, c.writers*c.records)
		errs = make([]error, c.writers)
		acks *lineWriter
	)
	if c.ack {
		acks = &lineWriter{w: out}
	}
	start := time.Now()
	for w := 0; w < c.writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			l, err := writer(c, w, acks)
			errs[w] = err
			mu.Lock()
			lat = append(lat, l...)
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	rep := report{elapsed: time.Since(start), lat: lat}
	return rep, errors.Join(errs...)
}

// writer appends writer w's records, each made durable before the next is
// written and, when acks is not nil, acknowledged once it is durable
// (before, with -bug ack-early).
func writer(c config, w int, acks *lineWriter) ([]time.Duration, error) {
	f, base, err := c.target(w, true)
	if err != nil {
		return nil, fmt.Errorf("writer %d: %w", w, err)
	}
	defer f.Close()
	lat := make([]time.Duration, 0, c.records)
	buf := make([]byte, c.size)
	var line []byte
	ack := func(seq int) error {
		if acks == nil {
			return nil
		}
		line = protocol.AppendAckFsyncstress(line[:0], w, seq)
		if err := acks.writeLine(line); err != nil {
			return fmt.Errorf("writer %d record %d: acknowledge: %w", w, seq, err)
		}
		return nil
	}
	early := c.bug == bugAckEarly
	for seq := 0; seq < c.records; seq++ {
		encode(buf, uint32(w), uint64(seq))
		if _, err := f.WriteAt(buf, base+int64(seq)*int64(c.size)); err != nil {
			return lat, fmt.Errorf("writer %d record %d: %w", w, seq, err)
		}
		if early {
			// The bug: the record is not durable yet.
			if err := ack(seq); err != nil {
				return lat, err
			}
		}
		t := time.Now()
		if err := c.sync(f); err != nil {
			return lat, fmt.Errorf("writer %d record %d: fdatasync: %w", w, seq, err)
		}
		lat = append(lat, time.Since(t))
		if !early {
			// Only now is the record durable: acknowledge it.
			if err := ack(seq); err != nil {
				return lat, err
			}
		}
	}
	return lat, nil
}

// verify reads every record back from the device (after dropping the
// page cache, so the reads reach the disk) and returns how many are bad.
func verify(c config, out io.Writer) int {
	dropCaches()
	bad := 0
	buf := make([]byte, c.size)
	for w := 0; w < c.writers; w++ {
		f, base, err := c.target(w, false)
		if err != nil {
			fmt.Fprintf(out, "fsyncstress: verify writer %d: %v\n", w, err)
			bad += c.records
			continue
		}
		for seq := 0; seq < c.records; seq++ {
			_, err := f.ReadAt(buf, base+int64(seq)*int64(c.size))
			if err == nil {
				err = check(buf, uint32(w), uint64(seq))
			}
			if err != nil {
				if bad < 10 {
					fmt.Fprintf(out, "fsyncstress: writer %d record %d: %v\n", w, seq, err)
				}
				bad++
			}
		}
		f.Close()
	}
	return bad
}

func dropCaches() {
	// Best effort: without root the reads may come from the page cache.
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}
