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
// of its batch (a nested check takes 1-3 s); a boot whose output streams
// (LineBooter) also ends when no state ended for --boot-timeout.
const perStateTimeout = 30 * time.Second

// maxDeaths is how many checker boots may die on one state before it is
// reported unchecked: a state that kills its checker twice is not the
// machine's flakiness.
const maxDeaths = 2

// maxFruitless bounds consecutive checker boots that check nothing.
const maxFruitless = 3

// checkAll checks todo in batches of --batch states per checker boot,
// until every state is judged, the budget runs out or boots keep failing.
// Each state is recorded (report, progress, explored-state file) as soon
// as its verdict is known.
func (c *Campaign) checkAll(ctx context.Context, b Booter, prog *Progress, rep *Report, dir string, m *LogModel, todo []distinctState) error {
	deaths := map[int]int{}
	fruitless := 0
	var werr error
	record := func(s protocol.CrashtestState) {
		s.CheckerDeaths = deaths[s.Index]
		rep.addState(s)
		prog.state(s, rep)
		if err := appendExplored(filepath.Join(dir, exploredFile), []protocol.CrashtestState{s}); err != nil && werr == nil {
			werr = err
		}
	}
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
		n, dying, out, err := c.checkBatch(ctx, b, dir, m, batch, record)
		todo = todo[n:]
		if err == nil {
			err = werr
		}
		if err != nil {
			rep.Coverage.Skipped += len(todo)
			return err
		}
		if dying >= 0 {
			d := todo[0]
			deaths[d.index]++
			prog.note("a checker boot ended while checking state %s (death %d of %d allowed): %s",
				d.State.ID, deaths[d.index], maxDeaths, lines.Last(out, 3))
			if deaths[d.index] >= maxDeaths {
				record(c.deadState(d, m, out))
				todo, n = todo[1:], n+1
			}
		}
		if n > 0 {
			fruitless = 0
		} else if fruitless++; fruitless >= maxFruitless {
			rep.Coverage.Skipped += len(todo)
			return fmt.Errorf("%w: %d checker boots in a row checked nothing; the last: %s", errBootFailed, fruitless, lines.Last(out, 5))
		}
	}
	rep.Coverage.Exhausted = rep.Coverage.Skipped == 0
	return nil
}

// LineBooter is a Booter that can also hand over the boot's output line by
// line as it comes (the checker's verdicts then show as they are made).
type LineBooter interface {
	Booter
	BootLines(ctx context.Context, args []string, line func(string)) (status int, out []byte, err error)
}

// checkBatch boots one checker over batch, passing each state's verdict to
// judged as soon as its end line comes (in batch order). It returns how
// many states were judged, the index in batch of the state whose check
// the boot did not finish (-1: none), and the console output.
func (c *Campaign) checkBatch(ctx context.Context, b Booter, dir string, m *LogModel, batch []distinctState,
	judged func(protocol.CrashtestState)) (int, int, []byte, error) {
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
		return 0, -1, nil, fmt.Errorf("checker states: %w", err)
	}
	if err := os.WriteFile(manPath, protocol.FormatManifest(acked), 0o644); err != nil {
		return 0, -1, nil, fmt.Errorf("checker manifest: %w", err)
	}
	args := c.bootArgs(guestCmdline("checkstates:"+c.program, c.workloadArgs),
		"path="+filepath.Join(dir, templateFile)+",crashstates="+setPath+",cache=writeback",
		"--disk", "path="+manPath+",readonly=on")
	p := &stateParser{ended: func(i int, seg *segment) {
		if i < len(batch) {
			judged(c.stateResult(batch[i], m, seg))
		}
	}}
	bctx, cancel := context.WithTimeout(ctx, c.bootTimeout+time.Duration(len(batch))*perStateTimeout)
	var out []byte
	var err error
	if lb, ok := b.(LineBooter); ok {
		// A checker stuck on one state (a hung mount or fsck) ends the
		// boot when no state has ended for --boot-timeout: the states
		// judged so far keep their verdicts.
		stall := time.AfterFunc(c.bootTimeout, cancel)
		defer stall.Stop()
		ended := p.ended
		p.ended = func(i int, seg *segment) {
			stall.Reset(c.bootTimeout)
			ended(i, seg)
		}
		_, out, err = lb.BootLines(bctx, args, p.feed)
	} else {
		_, out, err = b.Boot(bctx, args)
		for _, l := range strings.Split(string(out), "\n") {
			p.feed(l)
		}
	}
	cancel()
	_ = os.WriteFile(filepath.Join(dir, "check.log"), out, 0o644)
	if err != nil && ctx.Err() != nil {
		return p.next, -1, out, err
	}
	// A state begun and not ended lost its checker; one not begun was
	// never tried (the boot failed before it).
	dying := -1
	if p.cur != nil && p.curIndex == p.next && p.next < len(batch) {
		dying = p.next
	}
	return p.next, dying, out, nil
}

// segment is one state's lines in a checker boot's output.
type segment struct {
	out    []byte
	status int
}

// stateParser follows a checker boot's output line by line and calls
// ended for each state whose end line comes, in order: a state's verdict
// counts only when it is the next one expected.
type stateParser struct {
	ended    func(i int, seg *segment)
	next     int // the next state expected to end
	cur      *segment
	curIndex int
}

// feed takes one line of output.
func (p *stateParser) feed(line string) {
	line = strings.TrimRight(line, "\r")
	sl, ok := protocol.ParseStateLine(line)
	switch {
	case ok && !sl.End:
		p.cur, p.curIndex = &segment{}, sl.Index
	case ok && p.cur != nil && sl.Index == p.curIndex:
		if sl.Index == p.next {
			p.cur.status = sl.Status
			p.ended(sl.Index, p.cur)
			p.next++
		}
		p.cur = nil
	case ok:
	case p.cur != nil:
		p.cur.out = append(append(p.cur.out, line...), '\n')
	}
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
