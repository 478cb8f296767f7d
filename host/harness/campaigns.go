package harness

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/flushvm/flushvm/protocol"
)

// executor runs a session of runs: Execute (tests: a stand-in L1).
type executor func(ctx context.Context, opts Options, runs ...Run) (*Session, error)

// ExecuteCampaigns runs `flushvm crashtest` campaigns in one session. If
// L1 dies or stops making progress under a campaign (a nested guest takes
// the whole TCG L1 down with it and QEMU ends without a word, or an L1 CPU
// is lost), the campaigns that finished keep their results and the rest
// run again in a fresh session. A systematic campaign with a --dir
// resumes there after the last state it judged (the harness copies its
// directory back from the dead L1's scratch disk), its --max-states
// lowered by the states judged. Sessions run again as long as they make
// progress (a campaign finished, or more states judged), and at most
// L0Retries times in a row without. Each new session is logged, with its
// cause, to opts.Log.
func ExecuteCampaigns(ctx context.Context, opts Options, runs []Run) ([]Result, error) {
	return executeCampaigns(ctx, opts, runs, Execute)
}

func executeCampaigns(ctx context.Context, opts Options, runs []Run, execute executor) ([]Result, error) {
	log := opts.Log
	if log == nil {
		log = io.Discard
	}
	var results []Result
	runs = slices.Clone(runs)
	for fruitless := 0; ; {
		next := len(results)
		before := make([]int, len(runs))
		for i := next; i < len(runs); i++ {
			before[i] = judgedStates(log, runs[i])
		}
		s, err := execute(ctx, opts, runs[next:]...)
		if s != nil {
			results = append(results, s.Results...)
			if s.Mode == Nested {
				fmt.Fprintf(log, "flushvm-harness: %d campaigns in one L1 session: L1 reached /init after %.1f s wall; session %.1f s\n",
					len(s.Results), s.L1Boot.Seconds(), s.Wall.Seconds())
			}
		}
		if err == nil {
			return results, nil
		}
		judged := 0
		if dead := len(results); dead < len(runs) {
			judged = judgedStates(log, runs[dead]) - before[dead]
			runs[dead].Args = shrinkMaxStates(runs[dead].Args, judged)
		}
		if len(results) > next || judged > 0 {
			fruitless = 0
		} else {
			fruitless++
		}
		if !L1Failed(s, err) || fruitless > L0Retries || ctx.Err() != nil {
			return results, err
		}
		fmt.Fprintf(log, "flushvm-harness: L1 ended under campaign %d of %d (%v), which had judged %d more states; running the %d left in a new L1 session\n",
			len(results)+1, len(runs), err, judged, len(runs)-len(results))
	}
}

// judgedStates is how many states a systematic campaign's --dir lists as
// judged (0 without one).
func judgedStates(log io.Writer, r Run) int {
	dir, ok := FlagValue(r.Args, "dir")
	if mode, _ := FlagValue(r.Args, "mode"); !ok || mode == protocol.CrashtestRandom {
		return 0
	}
	e, err := protocol.ReadCrashtestExplored(dir)
	if err != nil {
		fmt.Fprintf(log, "flushvm-harness: %v\n", err)
	}
	return len(e)
}

// shrinkMaxStates lowers --max-states by judged (at least 1 stays: the
// campaign then ends at once, its report covering what was judged).
func shrinkMaxStates(args []string, judged int) []string {
	v, ok := FlagValue(args, "max-states")
	n, err := strconv.Atoi(v)
	if !ok || err != nil || judged <= 0 {
		return args
	}
	return append(withoutFlag(args, "max-states"), "--max-states", strconv.Itoa(max(1, n-judged)))
}

// withoutFlag returns args without --name, in either the "--name V" or the
// "--name=V" form.
func withoutFlag(args []string, name string) []string {
	var rest []string
	for k := 0; k < len(args); k++ {
		switch {
		case args[k] == "--"+name:
			k++
		case strings.HasPrefix(args[k], "--"+name+"="):
		default:
			rest = append(rest, args[k])
		}
	}
	return rest
}
