package protocol

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// CrashtestExploredFile is the explored-state file of a systematic
// campaign's work directory (--dir): one JSON line (CrashtestExplored)
// per judged state, appended and synced as each verdict comes. A run with
// the same --dir skips the states it lists and reports them again; the
// nested harness counts them to tell whether a campaign whose L1 died
// made progress.
const CrashtestExploredFile = "explored.jsonl"

// CrashtestExplored is one line of the explored-state file: a judged
// state's whole verdict and Elapsed, the campaign's seconds (over all its
// runs) when it was judged. Files of older flushvm builds hold only id,
// hash and violation.
type CrashtestExplored struct {
	CrashtestState
	Elapsed float64 `json:"elapsed"`
}

// ReadCrashtestExplored reads dir's explored-state file in the order it
// was written (none when it does not exist). A torn last line (a campaign
// killed while appending) is ignored.
func ReadCrashtestExplored(dir string) ([]CrashtestExplored, error) {
	path := filepath.Join(dir, CrashtestExploredFile)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("explored states: %w", err)
	}
	defer f.Close()
	var done []CrashtestExplored
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e CrashtestExplored
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.ID != "" {
			done = append(done, e)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("explored states %s: %w", path, err)
	}
	return done, nil
}
