package crashtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// checker is the state of checkAll's workers.
type checker struct {
	c      *Campaign
	b      Booter
	prog   *Progress
	rep    *Report
	dir    string
	m      *LogModel
	mu     sync.Mutex
	queue  [][]distinctState // batches waiting for a worker
	deaths map[int]int       // checker deaths per state index
	// fruitless counts consecutive boots that judged nothing.
	fruitless int
	err       error
	stopped   bool
}

// checkAll checks todo in batches of --batch states per checker boot, on
// --jobs checker boots at a time, until every state is judged, the budget
// runs out or boots keep failing. Each state is recorded (report,
// progress, explored-state file) as soon as its verdict is known.
func (c *Campaign) checkAll(ctx context.Context, b Booter, prog *Progress, rep *Report, dir string, m *LogModel, todo []distinctState) error {
	k := &checker{c: c, b: b, prog: prog, rep: rep, dir: dir, m: m, deaths: map[int]int{}}
	// Small campaigns still spread over every job.
	size := min(c.batch, max(1, (len(todo)+c.jobs-1)/c.jobs))
	for len(todo) > 0 {
		n := min(size, len(todo))
		k.queue = append(k.queue, todo[:n])
		todo = todo[n:]
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for j := 0; j < c.jobs; j++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k.work(ctx, cancel, j)
		}()
	}
	wg.Wait()
	for _, q := range k.queue {
		rep.Coverage.Skipped += len(q)
	}
	if k.err == nil {
		k.err = ctx.Err()
	}
	rep.Coverage.Exhausted = rep.Coverage.Skipped == 0
	return k.err
}

// next takes the next batch, or nil when there is none or the campaign
// stops (an error, the budget).
func (k *checker) next(ctx context.Context) []distinctState {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case k.stopped || len(k.queue) == 0 || ctx.Err() != nil:
		return nil
	case k.c.budget > 0 && time.Since(k.rep.start) > k.c.budget:
		left := 0
		for _, q := range k.queue {
			left += len(q)
		}
		k.prog.note("--budget %v spent: %d states left for the next run (same --dir)", k.c.budget, left)
		k.stopped = true
		return nil
	}
	q := k.queue[0]
	k.queue = k.queue[1:]
	return q
}

// work runs checker boots until there is nothing left to take.
func (k *checker) work(ctx context.Context, cancel func(), job int) {
	for {
		batch := k.next(ctx)
		if batch == nil {
			return
		}
		n, dying, out, err := k.c.checkBatch(ctx, k.b, k.dir, job, k.m, batch, k.record)
		if err = k.settle(batch[n:], n, dying >= 0, out, err); err != nil {
			cancel()
			return
		}
	}
}

// record records a judged state.
func (k *checker) record(s protocol.CrashtestState) {
	k.mu.Lock()
	defer k.mu.Unlock()
	s.CheckerDeaths = k.deaths[s.Index]
	k.rep.addState(s)
	// Synced before the progress line: a state shown as judged is one a
	// resumed run does not check again, whenever the machine dies.
	e := protocol.CrashtestExplored{CrashtestState: s, Elapsed: k.rep.elapsed().Seconds()}
	if err := appendExplored(filepath.Join(k.dir, exploredFile), []protocol.CrashtestExplored{e}); err != nil && k.err == nil {
		k.err = err
	}
	k.prog.state(s, k.rep)
	// After the explored-state file: a resumed run never checks again a
	// state that a snapshot reports.
	if err := k.rep.snapshot(k.c.report); err != nil && k.err == nil {
		k.err = err
	}
}

// settle handles what a checker boot left: it judged n states; rest are
// those it did not, the first of them the one it died on when dying. It
// returns an error that ends the campaign.
func (k *checker) settle(rest []distinctState, n int, dying bool, out []byte, err error) error {
	k.mu.Lock()
	if err != nil || k.err != nil {
		if k.err == nil {
			k.err = err
		}
		k.queue = append([][]distinctState{rest}, k.queue...)
		k.mu.Unlock()
		return k.err
	}
	var dead []protocol.CrashtestState
	if dying {
		d := rest[0]
		k.deaths[d.index]++
		rep, _ := protocol.FindCrashReport(out)
		k.prog.note("a checker boot ended while checking state %s (death %d of %d allowed): %s%s",
			d.State.ID, k.deaths[d.index], maxDeaths, l1StateCause(rep), lines.Last(out, 3))
		if k.deaths[d.index] >= maxDeaths {
			dead, rest = append(dead, k.c.deadState(d, out)), rest[1:]
		}
	}
	if len(rest) > 0 {
		k.queue = append([][]distinctState{rest}, k.queue...)
	}
	if n > 0 || len(dead) > 0 {
		k.fruitless = 0
	} else if k.fruitless++; k.fruitless >= maxFruitless {
		k.err = fmt.Errorf("%w: %d checker boots in a row checked nothing; the last: %s", errBootFailed, k.fruitless, lines.Last(out, 5))
	}
	err = k.err
	k.mu.Unlock()
	for _, s := range dead {
		k.record(s)
	}
	return err
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
func (c *Campaign) checkBatch(ctx context.Context, b Booter, dir string, job int, m *LogModel, batch []distinctState,
	judged func(protocol.CrashtestState)) (int, int, []byte, error) {
	name := "check-" + strconv.Itoa(job)
	setPath := filepath.Join(dir, name+".states.json")
	defer os.Remove(setPath)
	defer os.Remove(filepath.Join(dir, name+".job"))
	set := &blk.CrashStateSet{Log: filepath.Join(dir, recordLog)}
	acked := make([]int, len(batch))
	for i, s := range batch {
		set.States = append(set.States, s.State)
		acked[i] = s.Acks
	}
	if err := blk.WriteCrashStateSet(setPath, set); err != nil {
		return 0, -1, nil, fmt.Errorf("checker states: %w", err)
	}
	jobArgs, jerr := c.jobDisk(dir, name, m.AckKeys, acked)
	if jerr != nil {
		return 0, -1, nil, jerr
	}
	args := c.bootArgs(c.cmdline("checkstates:"+c.label),
		"path="+esc(filepath.Join(dir, templateFile))+",crashstates="+esc(setPath)+",cache=writeback", jobArgs...)
	p := &stateParser{ended: func(i int, seg *segment) {
		if i < len(batch) {
			judged(c.stateResult(batch[i], seg))
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
	_ = os.WriteFile(filepath.Join(dir, name+".log"), out, 0o644)
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
func (c *Campaign) stateResult(s distinctState, seg *segment) protocol.CrashtestState {
	r := c.newState(s)
	judge(&r.CrashtestCheck, c.label, seg.status, seg.out)
	return r
}

// deadState is the verdict of a state its checkers died on.
func (c *Campaign) deadState(s distinctState, out []byte) protocol.CrashtestState {
	r := c.newState(s)
	r.FsckStatus = -1
	r.Error = fmt.Sprintf("the checker guest died %d times while checking it; the last: %s", maxDeaths, lines.Last(out, 3))
	return r
}

func (c *Campaign) newState(s distinctState) protocol.CrashtestState {
	return protocol.CrashtestState{ID: s.State.ID, Index: s.index, Kind: s.Kind, Window: s.Window, Hash: s.hash,
		CrashtestCheck: protocol.CrashtestCheck{Acked: s.Acks}, Repro: c.reproduceCommand(s.State.ID)}
}
