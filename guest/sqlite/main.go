// Command sqlitework is flushvm's SQLite guest workload: Debian's sqlite3
// command-line shell, carried in the guest image with its libraries, runs
// one transaction per record, each inserting a known row, and the workload
// acknowledges a record once its COMMIT returned:
//
//	ACK sqlite N
//
// One sqlite3 process reads the statements on its standard input. After
// each COMMIT the workload asks sqlite3 to print a marker and waits for
// it: sqlite3 runs statements in order, so the marker comes after COMMIT
// returned (with synchronous=FULL, after its fsyncs).
//
// The checker (-check) opens the crashed database with sqlite3 (which
// rolls back a hot journal or recovers the WAL, as the application would
// after a reboot), requires PRAGMA integrity_check to say "ok", and wants
// every acknowledged row present and whole. It prints "LOST sqlite N" for
// each acknowledged row missing (protocol/workload.go) and ends with
//
//	CHECK sqlite acked=A lost=L extra=E
//
// E counts unacknowledged rows found whole.
//
// Usage:
//
//	sqlitework -dir /mnt -ack [-records 50] [-journal delete|wal] [-sync full|normal|off]
//	sqlitework -check -dir /mnt -acked-file FILE
//
// -sync off is the classic durability bug: COMMIT returns before anything
// reached the disk, so a power cut loses acknowledged rows (or, with a
// rollback journal, damages the database).
//
// Exit status: 0 done (workload) or every acknowledged row intact and the
// database sound (check), 1 the check found a violation, 2 bad usage, an
// I/O error, or sqlite3 failed.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/flushvm/flushvm/guest/internal/ackfile"
	"github.com/flushvm/flushvm/protocol"
)

// Exit statuses.
const (
	exitOK        = 0
	exitViolation = 1
	exitError     = 2
)

// dbName is the database file in -dir; sqlite3Path the shell.
const dbName = "work.sqlite"

// sqlite3Path is where the guest image carries Debian's sqlite3.
var sqlite3Path = "/usr/bin/sqlite3"

// payloadSQL is the SQL expression of row id's payload: the checker
// recomputes it, so a torn or mixed row is not whole.
const payloadSQL = "'rec-' || %s || '-' || hex(zeroblob(2048))"

type config struct {
	dir, journal, sync, ackedFile string
	records                       int
	ack, check                    bool
}

func main() { os.Exit(run(os.Args[1:], os.Stdout)) }

func run(args []string, out io.Writer) int {
	fl := flag.NewFlagSet("sqlitework", flag.ContinueOnError)
	fl.SetOutput(out)
	var c config
	fl.StringVar(&c.dir, "dir", "", "directory on the file system under test")
	fl.IntVar(&c.records, "records", 50, "transactions to commit, one row each (workload)")
	fl.StringVar(&c.journal, "journal", "delete", "journal_mode: delete (rollback journal) or wal")
	fl.StringVar(&c.sync, "sync", "full", "synchronous: full, normal or off (off acknowledges before data is durable)")
	fl.BoolVar(&c.ack, "ack", false, `print "ACK sqlite N" after row N's COMMIT returned`)
	fl.BoolVar(&c.check, "check", false, "check the database an earlier (interrupted) run left")
	fl.StringVar(&c.ackedFile, "acked-file", "", "with -check: the acknowledged keys, one \"sqlite N\" per line")
	if err := fl.Parse(args); err != nil {
		return exitError
	}
	if err := c.validate(fl.NArg()); err != nil {
		fmt.Fprintf(out, "sqlitework: %v\n", err)
		return exitError
	}
	if c.check {
		return check(c, out)
	}
	if err := workload(c, out); err != nil {
		fmt.Fprintf(out, "sqlitework: %v\n", err)
		return exitError
	}
	return exitOK
}

func (c config) validate(extra int) error {
	switch {
	case c.dir == "":
		return errors.New("-dir is required")
	case extra > 0:
		return errors.New("unexpected arguments")
	case c.records < 1 || c.records > 1000000:
		return errors.New("-records must be 1..1000000")
	case !slices.Contains([]string{"delete", "wal"}, c.journal):
		return fmt.Errorf("-journal %q: want delete or wal", c.journal)
	case !slices.Contains([]string{"full", "normal", "off"}, c.sync):
		return fmt.Errorf("-sync %q: want full, normal or off", c.sync)
	case c.check && c.ackedFile == "":
		return errors.New("-check needs -acked-file")
	case c.check && c.ack:
		return errors.New("-ack is for the workload, not -check")
	}
	return nil
}

// shell is a running sqlite3 with its standard input and output.
type shell struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startShell starts sqlite3 on the database in dir; it stops at the first
// failing statement (.bail on), its errors going to stderr.
func startShell(dir string) (*shell, error) {
	cmd := exec.Command(sqlite3Path, "-batch", "-bail", filepath.Join(dir, dbName))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("sqlite3: %w", err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("sqlite3: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("sqlite3: %w", err)
	}
	return &shell{cmd: cmd, in: in, out: bufio.NewScanner(outp)}, nil
}

// do sends statements and waits until sqlite3 printed marker, after
// every one of them ran.
func (s *shell) do(stmts, marker string) error {
	if _, err := fmt.Fprintf(s.in, "%s\nSELECT '%s';\n", stmts, marker); err != nil {
		return fmt.Errorf("sqlite3: %w", err)
	}
	for s.out.Scan() {
		if s.out.Text() == marker {
			return nil
		}
	}
	return fmt.Errorf("sqlite3 ended before %q (%v)", marker, s.wait())
}

// wait closes sqlite3's input and waits for it to end.
func (s *shell) wait() error {
	s.in.Close()
	if err := s.cmd.Wait(); err != nil {
		return fmt.Errorf("sqlite3: %w", err)
	}
	return nil
}

// workload commits c.records transactions of one row each.
func workload(c config, out io.Writer) error {
	sh, err := startShell(c.dir)
	if err != nil {
		return err
	}
	setup := fmt.Sprintf("PRAGMA journal_mode=%s;\nPRAGMA synchronous=%s;\n"+
		"CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload TEXT NOT NULL);", c.journal, c.sync)
	if err := sh.do(setup, "ready"); err != nil {
		return err
	}
	for n := 1; n <= c.records; n++ {
		stmt := fmt.Sprintf("BEGIN;\nINSERT INTO t VALUES(%d, "+payloadSQL+");\nCOMMIT;", n, strconv.Itoa(n))
		if err := sh.do(stmt, "committed "+strconv.Itoa(n)); err != nil {
			return err
		}
		if c.ack {
			if _, err := fmt.Fprintf(out, "ACK sqlite %d\n", n); err != nil {
				return err
			}
		}
	}
	return sh.wait()
}

// check verifies the acknowledged rows and the database's integrity.
func check(c config, out io.Writer) int {
	acked, err := readAcked(c.ackedFile)
	if err != nil {
		fmt.Fprintf(out, "sqlitework: %v\n", err)
		return exitError
	}
	whole, sound, err := readDB(c.dir, out)
	if err != nil {
		fmt.Fprintf(out, "sqlitework: %v\n", err)
		return exitError
	}
	lost := 0
	for _, n := range acked {
		if !whole[n] {
			fmt.Fprintln(out, protocol.FormatLost("sqlite "+strconv.Itoa(n)))
			lost++
		}
	}
	extra := len(whole)
	for _, n := range acked {
		if whole[n] {
			extra--
		}
	}
	fmt.Fprintln(out, protocol.Check{Workload: "sqlite", Acked: len(acked), Lost: lost, Extra: extra})
	if lost > 0 || !sound {
		return exitViolation
	}
	return exitOK
}

// readDB opens the crashed database and returns the ids of its whole rows
// and whether integrity_check passed. A missing database, or one without
// the table yet, has no rows and is sound (nothing was committed yet).
func readDB(dir string, out io.Writer) (map[int]bool, bool, error) {
	whole := map[int]bool{}
	if _, err := os.Stat(filepath.Join(dir, dbName)); errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintln(out, "sqlitework-check: no database")
		return whole, true, nil
	}
	lines, err := query(dir, out, "PRAGMA integrity_check;",
		"SELECT 'tables ' || count(*) FROM sqlite_master WHERE type = 'table' AND name = 't';")
	if err != nil {
		return whole, false, nil
	}
	sound, table := false, false
	for _, line := range lines {
		switch {
		case line == "ok":
			sound = true
		case line == "tables 1":
			table = true
		case line == "tables 0":
		default:
			fmt.Fprintf(out, "sqlitework-check: integrity_check: %s\n", line)
		}
	}
	if !table {
		fmt.Fprintln(out, "sqlitework-check: no table t")
		return whole, sound, nil
	}
	rows, err := query(dir, out, "SELECT id FROM t WHERE payload = "+fmt.Sprintf(payloadSQL, "id")+";")
	if err != nil {
		return whole, false, nil
	}
	for _, line := range rows {
		if n, err := strconv.Atoi(line); err == nil {
			whole[n] = true
		}
	}
	return whole, sound, nil
}

// query runs SQL statements on the database in dir and returns the
// non-empty lines sqlite3 printed. sqlite3 refusing the database (not a
// database, malformed) is reported on out and returned as an error: the
// check counts it as damage.
func query(dir string, out io.Writer, sql ...string) ([]string, error) {
	cmd := exec.Command(sqlite3Path, append([]string{"-batch", filepath.Join(dir, dbName)}, sql...)...)
	cmd.Stderr = out
	b, err := cmd.Output()
	if err != nil {
		fmt.Fprintf(out, "sqlitework-check: sqlite3: %v\n", err)
		return nil, err
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines, nil
}

// readAcked reads -acked-file's "sqlite N" keys.
func readAcked(path string) ([]int, error) {
	keys, err := ackfile.Read(path)
	if err != nil {
		return nil, err
	}
	acked := make([]int, 0, len(keys))
	for i, key := range keys {
		rest, ok := strings.CutPrefix(key, "sqlite ")
		n, err := strconv.Atoi(rest)
		if !ok || err != nil || n < 1 {
			return nil, fmt.Errorf("-acked-file %s key %d: %q is not \"sqlite N\"", path, i+1, key)
		}
		acked = append(acked, n)
	}
	return acked, nil
}
