package crashtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/internal/lines"
	"github.com/flushvm/flushvm/protocol"
)

// perStateTimeout is what a checker boot's time bound grows by per state
// of its batch (a nested check takes 1-3 s).
const perStateTimeout = 30 * time.Second

// maxDeaths is how many checker boots may die on one state before it is
// reported unchecked: a state that kills its checker twice is not the
// machine's flakiness.
const maxDeaths = 2

// maxFruitless bounds consecutive checker boots that check nothing.
const maxFruitless = 3

// checkAll checks todo in batches of --batch states per checker boot,
// until every state is judged, the budget runs out or boots keep failing.
func (c *Campaign) checkAll(ctx context.Context, b Booter, prog *Progress, rep *Report, dir string, m *LogModel, todo []distinctState) error {
	deaths := map[int]int{}
	fruitless := 0
	for len(todo) > 0 {
		if err := ctx.Err(); err != nil {
			rep.Coverage.Skipped += len(todo)
			return err
		}
		if c.budget > 0 && time.Since(rep.start) > c.budget {
			prog.note("--budget %v spent: %d states left for the next run (same --dir)", c.budget, len(todo))
			rep.Coverage.Skipped += len(todo)
			return nil
		}
		batch := todo[:min(len(todo), c.batch)]
		done, dying, out, err := c.checkBatch(ctx, b, dir, m, batch)
		if err != nil {
			rep.Coverage.Skipped += len(todo)
			return err
		}
		judged := done
		if dying >= 0 {
			d := batch[dying]
			deaths[d.index]++
			prog.note("a checker boot ended while checking state %s (death %d of %d allowed): %s",
				d.State.ID, deaths[d.index], maxDeaths, lines.Last(out, 3))
			if deaths[d.index] >= maxDeaths {
				judged = append(judged, c.deadState(d, m, out))
			}
		}
		for _, s := range judged {
			s.CheckerDeaths = deaths[s.Index]
			rep.addState(s)
			prog.state(s, rep)
		}
		if err := appendExplored(filepath.Join(dir, exploredFile), judged); err != nil {
			return err
		}
		todo = todo[len(judged):]
		if len(judged) == 0 {
			if fruitless++; fruitless >= maxFruitless {
				rep.Coverage.Skipped += len(todo)
				return fmt.Errorf("%w: %d checker boots in a row checked nothing; the last: %s", errBootFailed, fruitless, lines.Last(out, 5))
			}
		} else {
			fruitless = 0
		}
	}
	rep.Coverage.Exhausted = rep.Coverage.Skipped == 0
	return nil
}

// checkBatch boots one checker over batch and returns the states it
// judged, in order (a prefix of batch), the index in batch of the state
// whose check the boot did not finish (-1: none), and the console output.
func (c *Campaign) checkBatch(ctx context.Context, b Booter, dir string, m *LogModel, batch []distinctState) ([]protocol.CrashtestState, int, []byte, error) {
	setPath, manPath := filepath.Join(dir, "batch.json"), filepath.Join(dir, "manifest.txt")
	defer os.Remove(setPath)
	defer os.Remove(manPath)
	set := &blk.CrashStateSet{Log: filepath.Join(dir, recordLog)}
	acked := make([]string, len(batch))
	for i, s := range batch {
		set.States = append(set.States, s.State)
		acked[i], _ = c.ackedFor(m, s.Acks)
	}
	if err := blk.WriteCrashStateSet(setPath, set); err != nil {
		return nil, -1, nil, fmt.Errorf("checker states: %w", err)
	}
	if err := os.WriteFile(manPath, protocol.FormatManifest(acked), 0o644); err != nil {
		return nil, -1, nil, fmt.Errorf("checker manifest: %w", err)
	}
	args := c.bootArgs(guestCmdline("checkstates:"+c.program, c.workloadArgs),
		"path="+filepath.Join(dir, templateFile)+",crashstates="+setPath+",cache=writeback",
		"--disk", "path="+manPath+",readonly=on")
	bctx, cancel := context.WithTimeout(ctx, c.bootTimeout+time.Duration(len(batch))*perStateTimeout)
	_, out, err := b.Boot(bctx, args)
	cancel()
	_ = os.WriteFile(filepath.Join(dir, "check.log"), out, 0o644)
	if err != nil && ctx.Err() != nil {
		return nil, -1, out, err
	}
	segs := splitStates(out)
	var judged []protocol.CrashtestState
	for i, s := range batch {
		seg, ok := segs[i]
		if !ok || !seg.ended {
			// A state begun and not ended lost its checker; one not
			// begun was never tried (the boot failed before it).
			dying := -1
			if ok {
				dying = i
			}
			return judged, dying, out, nil
		}
		judged = append(judged, c.stateResult(s, m, seg))
	}
	return judged, -1, out, nil
}

// segment is one state's lines in a checker boot's output.
type segment struct {
	out    []byte
	ended  bool
	status int
}

// splitStates cuts a checker boot's output into its states' segments.
func splitStates(out []byte) map[int]*segment {
	segs := map[int]*segment{}
	var cur *segment
	for _, line := range strings.Split(string(out), "\n") {
		if sl, ok := protocol.ParseStateLine(line); ok {
			if !sl.End {
				cur = &segment{}
				segs[sl.Index] = cur
				continue
			}
			if s := segs[sl.Index]; s != nil {
				s.ended, s.status = true, sl.Status
			}
			cur = nil
			continue
		}
		if cur != nil {
			cur.out = append(append(cur.out, line...), '\n')
		}
	}
	return segs
}

// stateResult judges a state from its segment.
func (c *Campaign) stateResult(s distinctState, m *LogModel, seg *segment) protocol.CrashtestState {
	r := c.newState(s, m)
	judge(&r.CrashtestCheck, c.program, seg.status, seg.out)
	return r
}

// deadState is the verdict of a state its checkers died on.
func (c *Campaign) deadState(s distinctState, m *LogModel, out []byte) protocol.CrashtestState {
	r := c.newState(s, m)
	r.FsckStatus = -1
	r.Error = fmt.Sprintf("the checker guest died %d times while checking it; the last: %s", maxDeaths, lines.Last(out, 3))
	return r
}

func (c *Campaign) newState(s distinctState, m *LogModel) protocol.CrashtestState {
	_, n := c.ackedFor(m, s.Acks)
	return protocol.CrashtestState{ID: s.State.ID, Index: s.index, Kind: s.Kind, Window: s.Window, Hash: s.hash,
		CrashtestCheck: protocol.CrashtestCheck{Acked: n}, Repro: c.reproduceCommand(s.State.ID)}
}
