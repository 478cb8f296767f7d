package crashtest

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/internal/lines"
	"github.com/flushvm/flushvm/protocol"
)

// openModel indexes the write log at logPath over the base image; Close
// the model's files with LogModel.Close.
func openModel(logPath, base string) (*LogModel, error) {
	cl, err := blk.OpenCrashLog(logPath, base)
	if err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	m := NewLogModel(cl)
	m.closers = []io.Closer{cl}
	return m, nil
}

// Close closes the log model's files.
func (m *LogModel) Close() {
	for _, c := range m.closers {
		c.Close()
	}
}

// reproduceCommand is the command that rebuilds state id of this
// campaign's recording and checks it again.
func (c *Campaign) reproduceCommand(id string) string {
	return c.commandLine(c.seed, "--reproduce", filepath.Join(c.workDir, recordLog), id)
}

// Reproducing reports a --reproduce invocation (run Reproduce, not Run).
func (c *Campaign) Reproducing() bool { return c.reproduceLog != "" }

// Reproduction is what --reproduce found.
type Reproduction struct {
	// State is the state's verdict, with its image hash.
	State protocol.CrashtestState
	// Image is the rebuilt image.
	Image string
}

// Reproduce rebuilds the --reproduce state from its log (the base image is
// template.img beside the log), writes it beside the log, and checks it
// again in one checker boot.
func (c *Campaign) Reproduce(ctx context.Context, b Booter, prog *Progress, log io.Writer) (*Reproduction, error) {
	c.log = log
	dir := filepath.Dir(c.reproduceLog)
	c.workDir = dir
	if err := c.prepareInitrd(dir); err != nil {
		return nil, err
	}
	m, err := openModel(c.reproduceLog, filepath.Join(dir, templateFile))
	if err != nil {
		return nil, err
	}
	defer m.Close()
	cand, err := m.Lookup(c.reproduceState)
	if err != nil {
		return nil, UsageError{err}
	}
	img, err := m.Log.Image(cand.State)
	if err != nil {
		return nil, err
	}
	hash, err := img.Hash()
	if err != nil {
		return nil, err
	}
	out := filepath.Join(dir, "state-"+cand.State.ID+".img")
	if err := writeImage(img, out); err != nil {
		return nil, err
	}
	prog.note("state %s: image hash %s, written to %s", cand.State.ID, hash, out)
	st := distinctState{Candidate: cand, hash: hash}
	var got []protocol.CrashtestState
	n, dying, bout, err := c.checkBatch(ctx, b, dir, 0, m, []distinctState{st}, func(s protocol.CrashtestState) { got = append(got, s) })
	if err != nil {
		return nil, err
	}
	if n == 0 {
		why := "the checker boot ended before it"
		if dying == 0 {
			why = "the checker guest died while checking it"
		}
		return nil, fmt.Errorf("%w: %s: %s", errBootFailed, why, lines.Last(bout, 3))
	}
	return &Reproduction{State: got[0], Image: out}, nil
}

// writeImage writes img whole to path (through a temporary file).
func writeImage(img *blk.CrashImage, path string) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("crash image: %w", err)
	}
	err = img.WriteTo(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("crash image %s: %w", path, err)
	}
	return nil
}

// PrintReproduction writes the reproduction's summary.
func PrintReproduction(w io.Writer, r *Reproduction) {
	s := r.State
	fmt.Fprintf(w, "flushvm crashtest: state %s (window %d, %s)\n", s.ID, s.Window, s.Kind)
	fmt.Fprintf(w, "  image:       %s, hash %s\n", r.Image, s.Hash)
	fmt.Fprintf(w, "  acknowledged %d, lost %d; fsck status %d\n", s.Acked, s.LostAcked, s.FsckStatus)
	switch {
	case s.Error != "":
		fmt.Fprintf(w, "  result:      NOT CHECKED: %s\n", s.Error)
	case s.Violation:
		fmt.Fprintf(w, "  result:      FAIL: %s\n", s.Reason)
	default:
		fmt.Fprintln(w, "  result:      PASS: every acknowledged record survived; the file system is clean")
	}
}

// ExitStatus is crashtest's exit status for a reproduction.
func (r *Reproduction) ExitStatus() int {
	switch {
	case r.State.Violation:
		return protocol.CrashtestViolations
	case r.State.Error != "":
		return protocol.CrashtestFailed
	}
	return protocol.ExitOK
}
