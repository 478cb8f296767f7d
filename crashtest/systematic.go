package crashtest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flushvm/flushvm/internal/atomicfile"
	"github.com/flushvm/flushvm/internal/lines"
	"github.com/flushvm/flushvm/internal/sparse"
	"github.com/flushvm/flushvm/protocol"
)

// The systematic mode's files in the work directory. A second campaign
// with the same --dir and the same configuration reuses the recording and
// skips the states the explored-state file lists: it resumes.
const (
	templateFile = "template.img"
	recordLog    = "record.wlog"
	recordMeta   = "record.json"
	exploredFile = protocol.CrashtestExploredFile
)

// recordInfo is record.json: what was recorded, to refuse a --dir that
// holds another campaign's recording.
type recordInfo struct {
	Fingerprint string                   `json:"fingerprint"`
	Record      protocol.CrashtestRecord `json:"record"`
}

// fingerprint names what a recording depends on. The kernel and initrd
// count by content, not path: the nested harness maps them to other paths
// in each L1 session, and a campaign resumes across sessions.
func (c *Campaign) fingerprint() (string, error) {
	kernel, err := fileDigest(c.kernel)
	if err != nil {
		return "", fmt.Errorf("--kernel: %w", err)
	}
	initrd, err := fileDigest(c.initrd)
	if err != nil {
		return "", fmt.Errorf("--initrd: %w", err)
	}
	return strings.Join([]string{c.workload, c.runCmd, c.checkCmd, c.workloadDir, c.fs, string(c.cache),
		strconv.FormatInt(c.diskSize, 10), "kernel sha256 " + kernel, "initrd sha256 " + initrd}, "|"), nil
}

// fileDigest is the SHA-256 of a file's content (hex, the first 128 bits).
func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// distinctState is a generated state with a new image.
type distinctState struct {
	Candidate
	index int
	hash  string
}

// runSystematic runs the systematic mode in dir: record (or reuse the
// recording), explore, check the shard's states in batches.
func (c *Campaign) runSystematic(ctx context.Context, b Booter, prog *Progress, rep *Report, dir string) error {
	model, rec, err := c.recording(ctx, b, prog, dir)
	if err != nil {
		return err
	}
	defer model.Close()
	rep.Record = rec
	prog.note("record: %d writes, %d flushes (%d windows, the largest %d writes), %d acknowledgements",
		rec.Writes, rec.Flushes, rec.Windows, rec.MaxWindow, rec.Acks)
	states, cov, err := c.explore(model)
	if err != nil {
		return err
	}
	rep.Coverage = cov
	explored, err := protocol.ReadCrashtestExplored(dir)
	if err != nil {
		return err
	}
	done := map[string]bool{}
	for _, e := range explored {
		done[e.ID] = true
	}
	todo := c.select_(states, done, cov)
	rep.resume(c.owned(states), explored, c.reproduceCommand)
	prog.note("explore: %s states in the space, %d generated, %d distinct (%d duplicates); this shard: %d to check, %d checked before",
		formatSpace(cov.Space), cov.Generated, cov.Distinct, cov.Deduplicated, len(todo), cov.Explored)
	rep.Summary.Planned += len(todo)
	prog.total = len(todo)
	return c.checkAll(ctx, b, prog, rep, dir, model, todo)
}

// recording returns the log model of the record boot, recording first
// when dir holds no recording of this campaign.
func (c *Campaign) recording(ctx context.Context, b Booter, prog *Progress, dir string) (*LogModel, *protocol.CrashtestRecord, error) {
	template, logPath := filepath.Join(dir, templateFile), filepath.Join(dir, recordLog)
	var info recordInfo
	data, err := os.ReadFile(filepath.Join(dir, recordMeta))
	switch {
	case err == nil:
		if jerr := json.Unmarshal(data, &info); jerr != nil {
			return nil, nil, fmt.Errorf("%s: %w", recordMeta, jerr)
		}
		fp, err := c.fingerprint()
		if err != nil {
			return nil, nil, err
		}
		if info.Fingerprint != fp {
			return nil, nil, usageErrorf("--dir %s holds the recording of another campaign (%s; this one is %s); use another --dir", dir, info.Fingerprint, fp)
		}
		prog.note("resuming: the recording in %s", dir)
		info.Record.Reused = true
	case errors.Is(err, os.ErrNotExist):
		prog.note("formatting a %s disk (%s, in the guest)", formatSize(c.diskSize), c.fs)
		if err := c.format(ctx, b, dir, template); err != nil {
			return nil, nil, err
		}
		prog.note("recording: the whole %s workload with a write log", c.workload)
		if info.Record, err = c.record(ctx, b, dir, template, logPath); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, err
	}
	model, err := openModel(logPath, template)
	if err != nil {
		return nil, nil, err
	}
	fillRecord(&info.Record, model, logPath, template)
	if !info.Record.Reused {
		if info.Fingerprint, err = c.fingerprint(); err != nil {
			return nil, nil, err
		}
		// record.json names a recording that must outlive a crash of the
		// machine running the campaign (the write log synced itself when
		// flushvm closed it; the template was written by the format
		// boot's flushvm, which need not have synced it).
		if err := atomicfile.SyncFile(template); err != nil {
			return nil, nil, fmt.Errorf("record: %w", err)
		}
		// Atomic: a campaign killed here must not leave a half record.json
		// that the next run refuses as another campaign's.
		if err := atomicfile.WriteJSON(filepath.Join(dir, recordMeta), info); err != nil {
			return nil, nil, fmt.Errorf("record: %w", err)
		}
	}
	return model, &info.Record, nil
}

// record runs the workload once, to its end, on a copy of the template,
// with a write log.
func (c *Campaign) record(ctx context.Context, b Booter, dir, template, logPath string) (protocol.CrashtestRecord, error) {
	img := filepath.Join(dir, "record.img")
	defer os.Remove(img)
	defer os.Remove(filepath.Join(dir, "record.job"))
	t0 := time.Now()
	job, err := c.jobDisk(dir, "record", nil, nil)
	if err != nil {
		return protocol.CrashtestRecord{}, err
	}
	args := c.bootArgs(c.cmdline("crash:"+c.label),
		"path="+esc(img)+",cache="+string(c.cache), append(job, "--write-log", logPath)...)
	r, err := c.boot(ctx, b, dir, "record", args, func() error { return sparse.Copy(template, img) })
	if err != nil {
		return protocol.CrashtestRecord{}, err
	}
	if r.status != 0 {
		return protocol.CrashtestRecord{}, fmt.Errorf("%w: the record boot (the %s workload with a write log) ended with status %d: %s",
			errBootFailed, c.workload, r.status, lines.Last(r.out, 5))
	}
	return protocol.CrashtestRecord{Seconds: time.Since(t0).Seconds()}, nil
}

func fillRecord(r *protocol.CrashtestRecord, m *LogModel, logPath, base string) {
	r.Log, r.Base = logPath, base
	r.Entries, r.Writes, r.Flushes, r.Acks = len(m.Log.Entries()), m.Writes, m.Flushes, len(m.AckKeys)
	r.Windows = len(m.Windows)
	r.MaxWindow = 0
	for _, w := range m.Windows {
		r.MaxWindow = max(r.MaxWindow, len(w.Writes))
	}
}

// explore generates the space and keeps the states with new images.
func (c *Campaign) explore(m *LogModel) ([]distinctState, *protocol.CrashtestCoverage, error) {
	o := ExploreOptions{K: c.k, Seed: c.seed, TornUnits: c.tornUnits}
	cov := &protocol.CrashtestCoverage{K: c.k, Space: m.Space(o)}
	// Identical images are checked once, against the strongest
	// expectation any of them carries: a later window's state may leave
	// the same image and expect more acknowledgements (acknowledgements
	// only accumulate, so passing the stronger check passes the weaker).
	seen := map[string]int{}
	var out []distinctState
	var err error
	m.Generate(o, func(cand Candidate) bool {
		cov.Generated++
		// Generate yields states window by window, the order StateHash
		// keeps cheap (inside a window prefixes go back and forth, and it
		// steps back through its undo records).
		var h string
		if h, err = m.Log.StateHash(cand.State); err != nil {
			return false
		}
		if i, ok := seen[h]; ok {
			if cand.Acks > out[i].Acks {
				out[i].Candidate = cand
			}
			return true
		}
		seen[h] = len(out)
		out = append(out, distinctState{Candidate: cand, index: len(out), hash: h})
		return true
	})
	if err != nil {
		return nil, nil, fmt.Errorf("explore: %w", err)
	}
	cov.Distinct = len(out)
	cov.Deduplicated = cov.Generated - cov.Distinct
	return out, cov, nil
}

// owned returns the IDs of this shard's states.
func (c *Campaign) owned(states []distinctState) map[string]bool {
	ids := map[string]bool{}
	for _, s := range states {
		if c.owns(s.index) {
			ids[s.State.ID] = true
		}
	}
	return ids
}

// select_ returns this shard's states not explored before, at most
// --max-states of them, and counts the rest in cov.
func (c *Campaign) select_(states []distinctState, done map[string]bool, cov *protocol.CrashtestCoverage) []distinctState {
	var todo []distinctState
	for _, s := range states {
		switch {
		case !c.owns(s.index):
			cov.OtherShards++
		case done[s.State.ID]:
			cov.Explored++
		default:
			todo = append(todo, s)
		}
	}
	if c.maxStates > 0 && len(todo) > c.maxStates {
		cov.Skipped = len(todo) - c.maxStates
		todo = todo[:c.maxStates]
	}
	return todo
}

// appendExplored adds judged states to the explored-state file, and syncs
// it: a campaign whose machine dies (a nested L1) resumes after the last
// state it judged.
func appendExplored(path string, states []protocol.CrashtestExplored) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("explored states: %w", err)
	}
	w := bufio.NewWriter(f)
	for _, s := range states {
		b, _ := json.Marshal(s)
		w.Write(append(b, '\n'))
	}
	err = w.Flush()
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("explored states: %w", err)
	}
	return nil
}
