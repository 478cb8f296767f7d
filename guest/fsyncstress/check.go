package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/flushvm/flushvm/protocol"
)

// tally counts what the checker found.
type tally struct {
	// acked is the number of records acknowledged before the cut.
	acked int
	// lost is the acknowledged records missing or damaged.
	lost int
	// extra is the unacknowledged records found intact.
	extra int
}

// maxDetails bounds the per-record lines the checker prints.
const maxDetails = 10

// checkRun is -check: it reports each writer, then the CHECK line, and
// returns the exit status.
func checkRun(c config, out io.Writer) int {
	t, err := checkRecords(c, out)
	if err != nil {
		fmt.Fprintf(out, "fsyncstress-check: %v\n", err)
		return exitError
	}
	fmt.Fprintln(out, protocol.Check{Workload: "fsyncstress", Acked: t.acked, Lost: t.lost, Extra: t.extra})
	if t.lost > 0 {
		return exitViolation
	}
	return exitOK
}

// checkRecords reads every writer's records back and checks the first
// c.acked[w] of writer w. Records past the end of a writer's file are
// absent (a file system may lose an unsynced append, or the file's size,
// but not an acknowledged record). An I/O error is an error, not a loss:
// the check could not tell.
func checkRecords(c config, out io.Writer) (tally, error) {
	// A checker boots a fresh guest, so its page cache is cold; drop it
	// anyway so a run in a live system reads the disk too.
	dropCaches()
	var t tally
	buf := make([]byte, c.size)
	details := 0
	detail := func(format string, args ...any) {
		if details < maxDetails {
			fmt.Fprintf(out, "fsyncstress-check: "+format+"\n", args...)
		}
		details++
	}
	for w := 0; w < c.writers; w++ {
		acked := c.acked[w]
		t.acked += acked
		f, base, err := c.target(w, false)
		if errors.Is(err, fs.ErrNotExist) && c.dir != "" {
			if acked > 0 {
				detail("LOST writer %d: file missing, %d acknowledged records lost", w, acked)
			}
			t.lost += acked
			fmt.Fprintf(out, "fsyncstress-check: writer %d: no file; acknowledged %d, lost %d, extra 0\n", w, acked, acked)
			continue
		}
		if err != nil {
			return t, fmt.Errorf("writer %d: %w", w, err)
		}
		end := base + int64(c.records)*int64(c.size)
		if c.dir != "" {
			st, err := f.Stat()
			if err != nil {
				f.Close()
				return t, fmt.Errorf("writer %d: %w", w, err)
			}
			end = st.Size()
		}
		lost, extra := 0, 0
		for seq := 0; seq < c.records; seq++ {
			off := base + int64(seq)*int64(c.size)
			var bad error
			if off+int64(c.size) > end {
				bad = fmt.Errorf("beyond the end of the file (%d B)", end)
			} else if _, err := f.ReadAt(buf, off); err != nil {
				f.Close()
				return t, fmt.Errorf("writer %d record %d: %w", w, seq, err)
			} else {
				bad = check(buf, uint32(w), uint64(seq))
			}
			switch {
			case seq < acked && bad != nil:
				lost++
				detail("LOST writer %d record %d: %v", w, seq, bad)
			case seq >= acked && bad == nil:
				extra++
			}
		}
		f.Close()
		t.lost += lost
		t.extra += extra
		fmt.Fprintf(out, "fsyncstress-check: writer %d: acknowledged %d, lost %d, extra %d (%d B)\n", w, acked, lost, extra, end-base)
	}
	if details > maxDetails {
		fmt.Fprintf(out, "fsyncstress-check: ... %d more lost records not shown\n", details-maxDetails)
	}
	return t, nil
}
