package slurm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/host"
)

// Campaign is a systematic crash-test campaign split into shards, one
// Slurm task each. Shard 1 formats the disk, records the workload and
// checks its states; the tasks of shards 2..N start after it, each from a
// copy of its recording (the shards of a systematic campaign must share
// one), and check theirs. Each writes SHARED/report-I.json.
type Campaign struct {
	// Shards is N.
	Shards int
	// Shared is the directory every task reads and writes (on a real
	// cluster: a shared file system).
	Shared string
	// Command runs one shard: it is given the crashtest flags plus
	// --shard I/N --dir DIR --report FILE (e.g. ["flushvm-harness",
	// "crashtest", "--kernel", ...] or ["flushvm", "crashtest", ...]).
	Command []string
	// SbatchArgs are extra sbatch options for every job (partition,
	// time limit, ...).
	SbatchArgs []string
}

// recordingFiles are what a systematic campaign's --dir holds that other
// shards need: the template image, the write log and its description.
var recordingFiles = []string{"template.img", "record.wlog", "record.json"}

// ReportPath is shard i's report in the shared directory.
func (c Campaign) ReportPath(i int) string {
	return filepath.Join(c.Shared, "report-"+strconv.Itoa(i)+".json")
}

// command is the shell command of shard I (I a shell expression).
func (c Campaign) command(i string) string {
	var b strings.Builder
	for _, a := range c.Command {
		b.WriteString(host.ShellQuote(a) + " ")
	}
	n := strconv.Itoa(c.Shards)
	fmt.Fprintf(&b, "--shard %s/%s --dir %s/shard-%s --report %s/report-%s.json", i, n, host.ShellQuote(c.Shared), i, host.ShellQuote(c.Shared), i)
	return b.String()
}

// Scripts returns the two batch scripts: the first shard's (it records),
// and the array of the others (each copies the recording first). A
// crashtest's own exit status (1: violations) must not stop the array, so
// the array depends on the first job with afterany; the merged table
// judges.
func (c Campaign) Scripts() (first, rest string) {
	first = "#!/bin/sh\n# flushvm crash-test campaign, shard 1 of " + strconv.Itoa(c.Shards) +
		": formats, records, checks its states.\nexec " + c.command("1") + "\n"
	var b strings.Builder
	fmt.Fprintf(&b, "#!/bin/sh\n# flushvm crash-test campaign, shards 2..%d: each from a copy of shard 1's recording.\n", c.Shards)
	b.WriteString("set -e\ni=$SLURM_ARRAY_TASK_ID\n")
	fmt.Fprintf(&b, "mkdir -p %s/shard-$i\n", host.ShellQuote(c.Shared))
	for _, f := range recordingFiles {
		fmt.Fprintf(&b, "cp --sparse=always %s/shard-1/%s %s/shard-$i/%s\n", host.ShellQuote(c.Shared), f, host.ShellQuote(c.Shared), f)
	}
	b.WriteString("exec " + c.command("$i") + "\n")
	return first, b.String()
}

// Run writes the scripts to the shared directory, submits them to the
// cluster whose client environment is env (SLURM_CONF and the like), and
// waits until every task ended. It returns the reports' paths; a shard
// whose report is missing is named in the error.
func (c Campaign) Run(ctx context.Context, env []string, log io.Writer) ([]string, error) {
	if c.Shards < 1 {
		return nil, fmt.Errorf("slurm campaign: %d shards", c.Shards)
	}
	if err := os.MkdirAll(c.Shared, 0o755); err != nil {
		return nil, fmt.Errorf("slurm campaign: %w", err)
	}
	first, rest := c.Scripts()
	firstPath, restPath := filepath.Join(c.Shared, "shard-1.sbatch"), filepath.Join(c.Shared, "shards.sbatch")
	for p, s := range map[string]string{firstPath: first, restPath: rest} {
		if err := os.WriteFile(p, []byte(s), 0o755); err != nil {
			return nil, fmt.Errorf("slurm campaign: %w", err)
		}
	}
	out := filepath.Join(c.Shared, "slurm-%A_%a.out")
	args := append([]string{"--parsable", "--job-name=flushvm-crashtest", "--output=" + out}, c.SbatchArgs...)
	wait := len(args)
	if c.Shards == 1 {
		args = append(args, "--wait")
	}
	id, err := sbatch(ctx, env, append(args, firstPath))
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "slurm: shard 1 of %d is job %s\n", c.Shards, id)
	if c.Shards > 1 {
		args = append(args[:wait], "--wait", "--dependency=afterany:"+id, "--array=2-"+strconv.Itoa(c.Shards), restPath)
		id2, err := sbatch(ctx, env, args)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(log, "slurm: shards 2..%d are array job %s (after job %s)\n", c.Shards, id2, id)
	}
	return c.reports()
}

// reports returns the shards' report paths, or an error naming the
// missing ones.
func (c Campaign) reports() ([]string, error) {
	var paths, missing []string
	for i := 1; i <= c.Shards; i++ {
		p := c.ReportPath(i)
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, fmt.Sprintf("shard %d (see %s)", i, filepath.Join(c.Shared, "slurm-*.out")))
			continue
		}
		paths = append(paths, p)
	}
	if len(missing) > 0 {
		return paths, fmt.Errorf("slurm campaign: no report from %s", strings.Join(missing, ", "))
	}
	return paths, nil
}

// sbatch submits a job and returns its id; with --wait it returns when
// the job (every task of an array) ended, whatever their exit statuses.
func sbatch(ctx context.Context, env, args []string) (string, error) {
	p, err := lookPath("sbatch")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoSlurm, err)
	}
	cmd := exec.CommandContext(ctx, p, args...)
	cmd.Env = env
	out, err := cmd.Output()
	id := strings.TrimSpace(strings.Split(strings.TrimSpace(string(out)), ";")[0])
	var ee *exec.ExitError
	// sbatch --wait exits with the job's highest exit status: a shard
	// with violations (1) or an incomplete one (3) is still done.
	if errors.As(err, &ee) && id != "" && ctx.Err() == nil {
		return id, nil
	}
	if err != nil || id == "" {
		stderr := ""
		if ee != nil {
			stderr = strings.TrimSpace(string(ee.Stderr))
		}
		return "", fmt.Errorf("sbatch %s: %v: %s", strings.Join(args, " "), err, stderr)
	}
	return id, nil
}

// stopPid sends SIGTERM to the process in a pid file and waits up to
// 10 s for it to end; a missing file or process is no error.
func stopPid(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("%s: bad pid %q", path, b)
	}
	if err := unix.Kill(pid, syscall.SIGTERM); errors.Is(err, unix.ESRCH) {
		return nil
	}
	for range 100 {
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s: process %d still runs 10 s after SIGTERM", path, pid)
}
