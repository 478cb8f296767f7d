package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestShrinkMaxStates(t *testing.T) {
	tests := []struct {
		args   []string
		judged int
		want   []string
	}{
		{[]string{"--seed", "1", "--max-states", "100", "--report", "r"}, 30, []string{"--seed", "1", "--report", "r", "--max-states", "70"}},
		{[]string{"--max-states=100"}, 100, []string{"--max-states", "1"}},
		{[]string{"--max-states", "100"}, 0, []string{"--max-states", "100"}},
		{[]string{"--seed", "1"}, 30, []string{"--seed", "1"}},
	}
	for _, tc := range tests {
		if got := shrinkMaxStates(tc.args, tc.judged); !slices.Equal(got, tc.want) {
			t.Errorf("shrinkMaxStates(%q, %d) = %q, want %q", tc.args, tc.judged, got, tc.want)
		}
	}
}

// l1Session is what a stand-in L1 session does: finish this many of the
// runs it is given, then (die) lose L1 under the next after it judged
// judged states there.
type l1Session struct {
	finish, judged int
	die            bool
}

// TestExecuteCampaigns runs campaigns through a stand-in L1 that dies: a
// campaign runs again as long as its sessions make progress, from its
// --dir with --max-states lowered by the states judged, and no more than
// L0Retries sessions in a row without progress.
func TestExecuteCampaigns(t *testing.T) {
	tests := []struct {
		name     string
		sessions []l1Session
		wantErr  bool
		// wantMax is each session's --max-states per run it was given.
		wantMax [][]string
	}{
		{"no death", []l1Session{{finish: 2}}, false, [][]string{{"100", "50"}}},
		{"deaths with progress", []l1Session{{judged: 30, die: true}, {judged: 60, die: true}, {finish: 2}}, false,
			[][]string{{"100", "50"}, {"70", "50"}, {"10", "50"}}},
		{"the second campaign dies", []l1Session{{finish: 1, judged: 20, die: true}, {finish: 1}}, false,
			[][]string{{"100", "50"}, {"30"}}},
		{"no progress", []l1Session{{die: true}, {die: true}, {die: true}, {die: true}, {finish: 2}}, true,
			[][]string{{"100", "50"}, {"100", "50"}, {"100", "50"}, {"100", "50"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			runs := []Run{
				{Subcommand: SubCrashtest, Args: []string{"--max-states", "100", "--dir", filepath.Join(dir, "a")}},
				{Subcommand: SubCrashtest, Args: []string{"--max-states", "50", "--dir", filepath.Join(dir, "b")}},
			}
			var got [][]string
			execute := func(_ context.Context, _ Options, given ...Run) (*Session, error) {
				sess := tc.sessions[len(got)]
				var maxes []string
				for _, r := range given {
					v, _ := FlagValue(r.Args, "max-states")
					maxes = append(maxes, v)
				}
				got = append(got, maxes)
				s := &Session{Mode: Nested}
				for range sess.finish {
					s.Results = append(s.Results, Result{})
				}
				if !sess.die {
					return s, nil
				}
				d, _ := FlagValue(given[sess.finish].Args, "dir")
				judge(t, d, sess.judged)
				return s, fmt.Errorf("run %d: %w", sess.finish, ErrNoStatus)
			}
			results, err := executeCampaigns(context.Background(), Options{}, runs, execute)
			if (err != nil) != tc.wantErr || !tc.wantErr && len(results) != 2 {
				t.Errorf("%d results, error %v; want error %v", len(results), err, tc.wantErr)
			}
			if !slices.EqualFunc(got, tc.wantMax, slices.Equal) {
				t.Errorf("sessions were given --max-states %q, want %q", got, tc.wantMax)
			}
		})
	}
}

// judge appends n judged states to a campaign's explored-state file.
func judge(t *testing.T, dir string, n int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "explored.jsonl"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range n {
		fmt.Fprintf(f, "{\"id\":\"w%d.s1\"}\n", i)
	}
}
