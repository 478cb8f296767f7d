package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/internal/atomicfile"
	"github.com/flushvm/flushvm/internal/cli"
	"github.com/flushvm/flushvm/internal/sparse"
)

func init() {
	registerCommand(command{
		name:    "replay",
		summary: "build a crash image from a write log, a base image, a flush index and a power-cut policy",
		run:     replayCommand,
		usage:   func(w io.Writer) { newReplayFlags().usage(w) },
	})
}

// replayFlags are the flags of `flushvm replay` (a contract: crash-test
// scripts call it).
type replayFlags struct {
	fs     *pflag.FlagSet
	log    string
	base   string
	out    string
	flush  uint64
	policy string
	seed   uint64
	toEnd  bool
	report string
}

func newReplayFlags() *replayFlags {
	f := &replayFlags{fs: pflag.NewFlagSet("replay", pflag.ContinueOnError)}
	fs := f.fs
	fs.SortFlags = false
	fs.StringVar(&f.log, "log", "", "write log in dm-log-writes format (from --write-log or Linux's dm-log-writes) (required)\n  e.g. --log run.wlog")
	fs.StringVar(&f.base, "base", "", "the disk image as it was when the log started (required; not modified)\n  e.g. --base disk-before.img")
	fs.StringVar(&f.out, "out", "", "crash image to write: a copy of --base with the log applied (required; replaced)\n  e.g. --out crash.img")
	fs.Uint64Var(&f.flush, "flush", 0, "number of flushes that completed before the cut: writes logged before flush N are\n"+
		"  durable; the writes between flush N and flush N+1 are unstable (required; 0 = no flush completed)\n  e.g. --flush 12")
	fs.StringVar(&f.policy, "policy", "lose-all", "which unstable writes survive: lose-all, keep-all, random-subset,\n"+
		"  random-sectors[:512|:4k] (torn at that atomic unit) or prefix\n  e.g. --policy random-sectors:4k")
	fs.Uint64Var(&f.seed, "seed", 0, "seed of the policy's random choices (same seed, same image)\n  e.g. --seed 42")
	fs.BoolVar(&f.toEnd, "to-end", false, "make every write after flush N unstable, to the end of the log (a cut while\n"+
		"  flush N+1 was still in progress: later FLUSH entries never completed)")
	fs.StringVar(&f.report, "report", "", "write the cut's report (each unstable write: kept, torn or lost) as JSON to FILE\n  e.g. --report cut.json")
	fs.Usage = func() {}
	return f
}

func (f *replayFlags) usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: flushvm replay --log FILE --base IMAGE --out IMAGE --flush N")
	fmt.Fprintln(w, "                      [--policy POLICY] [--seed S] [--to-end] [--report FILE]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Builds the disk image a power cut could leave: --out becomes a copy of --base")
	fmt.Fprintln(w, "with every write logged before flush N applied, plus those unstable writes that")
	fmt.Fprintln(w, "--policy keeps, applied in log order. The unstable writes are the ones between")
	fmt.Fprintln(w, "flush N and flush N+1 (or the end of the log); with --to-end, all writes after")
	fmt.Fprintln(w, "flush N. Discards and zeroes are applied as holes (they read as zeroes);")
	fmt.Fprintf(w, "random-sectors tears a discard into at most %d pieces. With the same policy and\n", blk.MaxDiscardTearPieces)
	fmt.Fprintln(w, "seed it decides as flushvm's power-cut model (blk.VolatileCache) does. The log")
	fmt.Fprintln(w, "is checked whole before --out is written: a bad log or flush leaves it as it was.")
	fmt.Fprintln(w, "Prints a one-line summary of what was kept and lost.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Flags:")
	cli.FlagTable(w, f.fs)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Exit status: 0 image written, 1 the log is damaged or I/O failed,")
	fmt.Fprintln(w, "2 usage error (bad flag, missing file, no such flush).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Example:")
	fmt.Fprintln(w, "  flushvm replay --log run.wlog --base empty.img --out crash.img --flush 3 \\")
	fmt.Fprintln(w, "      --policy random-subset --seed 7 --report cut.json")
}

func replayCommand(args []string, stdout, stderr io.Writer) int {
	f := newReplayFlags()
	if status, ok := parseCommandFlags("replay", f.fs, f.usage, args, stdout, stderr); !ok {
		return status
	}
	if err := f.run(stdout); err != nil {
		return commandFailed("replay", err, stderr)
	}
	return exitOK
}

func (f *replayFlags) run(stdout io.Writer) error {
	for _, req := range []struct{ name, val string }{{"log", f.log}, {"base", f.base}, {"out", f.out}} {
		if req.val == "" {
			return userErrorf("--%s is required", req.name)
		}
	}
	if !f.fs.Changed("flush") {
		return userErrorf("--flush N is required (0: no flush completed)")
	}
	pol, err := blk.ParsePowerCutPolicy(f.policy)
	if err != nil {
		return userErrorf("--policy: %v", err)
	}
	logf, err := os.Open(f.log)
	if err != nil {
		return userErrorf("--log: %v", err)
	}
	defer logf.Close()
	lr, err := blk.NewWriteLogReader(logf)
	if err != nil {
		return fmt.Errorf("--log %s: %w", f.log, err)
	}
	opts := blk.ReplayOptions{Flush: f.flush, Policy: pol, Seed: f.seed, ToEnd: f.toEnd}
	// Check the whole log before --out is replaced: a bad log or a missing
	// flush leaves an existing --out as it was.
	bi, err := os.Stat(f.base)
	if err != nil {
		return userErrorf("--base: %v", err)
	}
	if !bi.Mode().IsRegular() {
		return userErrorf("--base %s: not a regular file", f.base)
	}
	if err := blk.CheckWriteLogReplay(lr, bi.Size(), opts); err != nil {
		return replayError(f.log, err)
	}
	for _, out := range []struct{ flag, path string }{{"out", f.out}, {"report", f.report}} {
		if err := cli.OutputDir(out.flag, out.path); err != nil {
			return userError{err}
		}
	}
	// The image is built next to --out and renamed over it at the end, so
	// a failure never leaves a half-replayed --out.
	tmp := f.out + ".replay-tmp"
	defer os.Remove(tmp)
	if err := copyImage(f.base, f.out, tmp); err != nil {
		return err
	}
	rep, err := replayInto(lr, tmp, opts)
	if err != nil {
		return replayError(f.log, err)
	}
	if f.report != "" {
		if err := atomicfile.WriteJSON(f.report, rep); err != nil {
			return fmt.Errorf("--report: %w", err)
		}
	}
	if err := os.Rename(tmp, f.out); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	fmt.Fprintf(stdout, "flushvm replay: %s at flush %d: %s\n", f.out, f.flush, rep.Summary())
	return nil
}

// replayError classifies a replay failure: asking for a flush the log does
// not have is a usage error; the rest say what is wrong with the log.
func replayError(log string, err error) error {
	if errors.Is(err, blk.ErrNoSuchFlush) {
		return userError{err}
	}
	if errors.Is(err, blk.ErrBadWriteLog) {
		return fmt.Errorf("--log %s: %w", log, err)
	}
	return err
}

// replayInto replays the log onto the image at path.
func replayInto(lr *blk.WriteLogReader, path string, opts blk.ReplayOptions) (*blk.PowerCutReport, error) {
	img, err := blk.OpenFile(path, blk.FileOptions{})
	if err != nil {
		return nil, err
	}
	rep, err := blk.ReplayWriteLog(lr, img, opts)
	if cerr := img.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return rep, err
}

// copyImage makes dst a copy of base, keeping base's holes; out is the
// file dst will replace, which must not be base itself.
func copyImage(base, out, dst string) error {
	src, err := os.Open(base)
	if err != nil {
		return userErrorf("--base: %v", err)
	}
	defer src.Close()
	si, err := src.Stat()
	if err != nil {
		return fmt.Errorf("--base: %w", err)
	}
	if !si.Mode().IsRegular() {
		return userErrorf("--base %s: not a regular file", base)
	}
	if oi, err := os.Stat(out); err == nil && os.SameFile(si, oi) {
		return userErrorf("--out %s is the --base image; the base must stay intact", out)
	}
	d, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return userErrorf("--out: %v", err)
	}
	if err := sparse.CopyData(src, d, si.Size()); err != nil {
		d.Close()
		return fmt.Errorf("copy --base to --out: %w", err)
	}
	if err := d.Close(); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	return nil
}
