package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/flushvm/flushvm/internal/lines"
	"github.com/flushvm/flushvm/protocol"
)

// Subcommands of flushvm a Run can name.
const (
	// SubRun is `flushvm run` (the default).
	SubRun = "run"
	// SubCrashtest is `flushvm crashtest`: a whole campaign as one run.
	SubCrashtest = "crashtest"
)

// ScratchMount is where L1 mounts the scratch disk of a nested session.
const ScratchMount = "/scratch"

// scratchSlack is the scratch disk's room beyond the campaigns' images
// (file system metadata, boot logs, the journal).
const scratchSlack = 256 << 20

// crashtestValueFlags are the flushvm crashtest flags that take a value.
// --kernel and --initrd are inputs, --report an output copied back, --dir
// a directory on the scratch disk; the others pass through untouched.
var crashtestValueFlags = flagSet(protocol.CrashtestValueFlags)

// FlagValue returns the value of --name in args (the last one given), in
// either the "--name V" or the "--name=V" form.
func FlagValue(args []string, name string) (string, bool) {
	val, found := "", false
	for k := 0; k < len(args); k++ {
		v, ok := strings.CutPrefix(args[k], "--"+name)
		switch {
		case !ok:
		case v == "" && k+1 < len(args):
			k++
			val, found = args[k], true
		case strings.HasPrefix(v, "="):
			val, found = v[1:], true
		}
	}
	return val, found
}

// ScratchSize is how large the scratch disk of a session must be for its
// crashtest runs: each needs room for the template image, a calibration or
// cut image and a spare (3 x --disk-size), plus every cut's image when
// --dir asks to keep failing cuts; the file is sparse, so room costs
// nothing until used. It is 0 when no run is a crashtest.
func ScratchSize(runs []Run) (int64, error) {
	var total int64
	for _, r := range runs {
		if r.Subcommand != SubCrashtest {
			continue
		}
		sz, ok := FlagValue(r.Args, "disk-size")
		if !ok {
			// flushvm crashtest rejects the run; a little room lets it
			// say so in its own words.
			total += 64 << 20
			continue
		}
		size, err := protocol.ParseSize(sz)
		disk := int64(size)
		if err != nil {
			return 0, fmt.Errorf("crashtest --disk-size: %w", err)
		}
		images := int64(3)
		if d, ok := FlagValue(r.Args, "dir"); ok {
			total += keptBytes(d)
		}
		if l, ok := FlagValue(r.Args, "reproduce"); ok {
			total += keptBytes(filepath.Dir(l))
		}
		if _, keep := FlagValue(r.Args, "dir"); keep {
			cuts, _ := FlagValue(r.Args, "cuts")
			n, err := strconv.ParseInt(cuts, 10, 64)
			if err != nil || n < 0 {
				n = 0
			}
			images += n
		}
		total += images * disk
	}
	if total == 0 {
		return 0, nil
	}
	return total + scratchSlack, nil
}

// scratchDir is run i's --dir on the scratch disk (nested).
func scratchDir(i int) string { return ScratchMount + "/run-" + strconv.Itoa(i) }

// keptDir is a crashtest --dir the caller gave: run i kept its failing
// cuts' files there on the scratch disk, and the harness copies them to
// host afterwards.
type keptDir struct {
	run  int
	host string
}

// seedKeptDirs lays out, under root, what the scratch disk starts with:
// each kept directory's files as run-N (hard links, or copies), so a
// campaign resumes from its --dir and --reproduce finds its log. It
// returns "" when no kept directory has files yet.
func seedKeptDirs(root string, dirs []keptDir) (string, error) {
	seeded := false
	for _, d := range dirs {
		entries, err := os.ReadDir(d.host)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("crashtest --dir: %w", err)
		}
		dst := filepath.Join(root, filepath.Base(scratchDir(d.run)))
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return "", fmt.Errorf("crashtest --dir: %w", err)
			}
			if err := linkOrCopy(filepath.Join(d.host, e.Name()), filepath.Join(dst, e.Name())); err != nil {
				return "", fmt.Errorf("crashtest --dir %s: %w", d.host, err)
			}
			seeded = true
		}
	}
	if !seeded {
		return "", nil
	}
	return root, nil
}

// keptBytes is the apparent size of the regular files in a host
// directory a run keeps (0 when it does not exist).
func keptBytes(dir string) int64 {
	entries, _ := os.ReadDir(dir)
	var n int64
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// errNoKeptDir marks a kept directory the scratch disk does not hold: its
// campaign never made it.
var errNoKeptDir = errors.New("no such directory")

// copyKeptDirs copies each run's --dir out of the (unmounted) scratch
// image with debugfs, which reads ext4 without mounting it.
func copyKeptDirs(ctx context.Context, scratch string, dirs []keptDir) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d.host, 0o755); err != nil {
			return fmt.Errorf("crashtest --dir: %w", err)
		}
		tmp, err := os.MkdirTemp(d.host, ".scratch-")
		if err != nil {
			return fmt.Errorf("crashtest --dir: %w", err)
		}
		src := scratchDir(d.run)
		rel := strings.TrimPrefix(src, ScratchMount)
		out, err := exec.CommandContext(ctx, "debugfs", "-R", "rdump "+rel+" "+tmp, scratch).CombinedOutput()
		if err != nil {
			os.RemoveAll(tmp)
			return fmt.Errorf("copy %s out of the scratch disk: debugfs: %w: %s", src, err, strings.TrimSpace(string(out)))
		}
		got := filepath.Join(tmp, filepath.Base(rel))
		entries, err := os.ReadDir(got)
		if err != nil {
			os.RemoveAll(tmp)
			// debugfs says "File not found" and still exits 0: the
			// campaign never created its directory.
			return fmt.Errorf("copy %s out of the scratch disk: %w: %w (debugfs: %s)", src, errNoKeptDir, err, strings.TrimSpace(string(out)))
		}
		for _, e := range entries {
			if err := os.Rename(filepath.Join(got, e.Name()), filepath.Join(d.host, e.Name())); err != nil {
				os.RemoveAll(tmp)
				return fmt.Errorf("crashtest --dir: %w", err)
			}
		}
		if err := os.RemoveAll(tmp); err != nil {
			return fmt.Errorf("crashtest --dir: %w", err)
		}
	}
	return nil
}

// recoverKeptDirs copies the kept directories out of the scratch disk of
// an L1 that died with it mounted, so that the campaigns resume from what
// they had made durable (crashtest syncs its recording and each judged
// state): e2fsck first replays the disk's journal, which is safe because
// the image is the harness's own and QEMU has exited. It logs what it did,
// or why it could not; the campaigns then start afresh.
func recoverKeptDirs(ctx context.Context, log io.Writer, scratch string, dirs []keptDir) {
	copied, err := replayAndCopy(ctx, scratch, dirs)
	if err != nil {
		fmt.Fprintf(log, "flushvm-harness: L1 failed with the scratch disk mounted, and the kept directories could not be copied back: %v\n", err)
		return
	}
	fmt.Fprintf(log, "flushvm-harness: L1 failed with the scratch disk mounted: replayed its journal and copied back the kept directories its campaigns had made (%s)\n",
		strings.Join(copied, ", "))
}

// replayAndCopy replays the scratch disk's journal and copies out each
// kept directory the disk holds, returning their host paths.
func replayAndCopy(ctx context.Context, scratch string, dirs []keptDir) ([]string, error) {
	out, err := exec.CommandContext(ctx, "e2fsck", "-y", scratch).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() < 4 {
		err = nil // 1, 2: errors corrected
	}
	if err != nil {
		return nil, fmt.Errorf("e2fsck: %w: %s", err, lines.Last(out, 3))
	}
	var copied []string
	for _, d := range dirs {
		// The campaigns after the one L1 died under never started.
		if err := copyKeptDirs(ctx, scratch, []keptDir{d}); errors.Is(err, errNoKeptDir) {
			continue
		} else if err != nil {
			return copied, err
		}
		copied = append(copied, d.host)
	}
	return copied, nil
}

// hostLine rewrites the L1 paths of the session's inputs and kept --dirs
// in a console line to host paths.
func (m *mapper) hostLine(line string) string {
	return m.toHost(line, -1, func(p string) string { return p })
}

// hostPaths rewrites the L1 paths in an output document of run i back to
// host paths: the session's inputs (a crashtest report names its kernel
// and initrd) and the run's kept --dir (the images of failing cuts), each
// as a JSON string body so the document stays valid.
func (m *mapper) hostPaths(i int, b []byte) []byte {
	jsonBody := func(p string) string {
		enc, err := json.Marshal(p)
		if err != nil {
			return p
		}
		return string(enc[1 : len(enc)-1])
	}
	return []byte(m.toHost(string(b), i, jsonBody))
}

// toHost replaces, in s, the L1 paths of the session's inputs and of run's
// kept --dir (every run's when run < 0) with their host paths, as quote
// writes them.
func (m *mapper) toHost(s string, run int, quote func(string) string) string {
	for host, l1 := range m.inputs {
		if strings.HasPrefix(l1, protocol.L1JobMount+"/in/") {
			s = strings.ReplaceAll(s, l1, quote(host))
		}
	}
	for _, d := range m.kept {
		if run < 0 || d.run == run {
			s = strings.ReplaceAll(s, scratchDir(d.run)+"/", quote(d.host+"/"))
		}
	}
	return s
}
