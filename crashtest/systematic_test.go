package crashtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/internal/jsonschema"
	"github.com/flushvm/flushvm/protocol"
)

// sysGuest stands in for `flushvm run` in the systematic mode: its record
// boot writes fsyncstress-like records through a real write log (with the
// ACK marks flushvm run adds), and its checker boot builds each crash
// state with blk's crash images and checks the records the manifest says
// were acknowledged. Everything but the VM is the real path.
type sysGuest struct {
	mu sync.Mutex
	// dieAt makes the first checker boot that reaches state dieAt of its
	// batch crash in the middle of it (once).
	dieAt int
	died  bool
	boots []string
}

const sysWriters = 4

func (g *sysGuest) Boot(ctx context.Context, args []string) (int, []byte, error) {
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	appendLine := fs.String("append", "", "")
	disks := fs.StringArray("disk", nil, "")
	wlog := fs.String("write-log", "", "")
	for _, f := range []string{"kernel", "initrd", "mem", "cpus", "watchdog"} {
		fs.String(f, "", "")
	}
	if err := fs.Parse(args); err != nil {
		return 2, nil, nil
	}
	var mode string
	for _, f := range strings.Fields(*appendLine) {
		if v, ok := strings.CutPrefix(f, "flushvm.run="); ok {
			mode = v
		}
	}
	g.mu.Lock()
	g.boots = append(g.boots, mode)
	g.mu.Unlock()
	spec := func(i int) map[string]string { return specKeys((*disks)[i]) }
	var out bytes.Buffer
	status := 0
	var err error
	var job protocol.Job
	if len(*disks) > 1 {
		b, _ := os.ReadFile(spec(1)["path"])
		if job, err = protocol.ParseJob(b); err != nil {
			return 0, nil, err
		}
	}
	switch {
	case mode == "mkfs":
		out.WriteString(protocol.FormatMkfsOK("/dev/vda") + "\n")
	case mode == "crash:fsyncstress":
		err = g.record(spec(0)["path"], *wlog, strings.Fields(job.Workload), &out)
	case mode == "checkstates:fsyncstress":
		if g.check(spec(0), job, &out) {
			return protocol.ExitGuestCrash, out.Bytes(), nil
		}
	default:
		status = 124
	}
	fmt.Fprintln(&out, protocol.FormatInitExit(status))
	return status, out.Bytes(), err
}

// argInt returns -name's value in the workload's arguments.
func argInt(args []string, name string) int {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == name {
			n, _ := strconv.Atoi(args[i+1])
			return n
		}
	}
	return 0
}

// recordOffset is where record seq of writer w lives; its bytes are
// recordByte(w, seq).
func recordOffset(w, seq, records int) int64 { return int64(w*records+seq+1) * 4096 }
func recordByte(w, seq int) byte             { return byte(w*50 + seq + 1) }

// record plays the workload: each writer's record, then a flush, then its
// ACK (with -bug ack-early the ACK comes first).
func (g *sysGuest) record(img, logPath string, args []string, out *bytes.Buffer) error {
	fb, err := blk.OpenFile(img, blk.FileOptions{})
	if err != nil {
		return err
	}
	l, err := blk.CreateWriteLog(fb, logPath)
	if err != nil {
		return err
	}
	early := strings.Contains(strings.Join(args, " "), "ack-early")
	records := argInt(args, "-records")
	for seq := 0; seq < records; seq++ {
		for w := 0; w < sysWriters; w++ {
			line := fmt.Sprintf("ACK fsyncstress %d %d", w, seq)
			v := blk.NewVec(1)
			v.Append(bytes.Repeat([]byte{recordByte(w, seq)}, 4096))
			if err := l.WriteAt(v, recordOffset(w, seq, records)); err != nil {
				return err
			}
			steps := []func() error{l.Sync, func() error { return l.Mark(line) }}
			if early {
				steps[0], steps[1] = steps[1], steps[0]
			}
			for _, s := range steps {
				if err := s(); err != nil {
					return err
				}
			}
			out.WriteString(line + "\n")
		}
	}
	return l.Close()
}

// check plays the checker boot; it reports whether the guest "crashed".
func (g *sysGuest) check(crash map[string]string, job protocol.Job, out *bytes.Buffer) bool {
	set, err := blk.ReadCrashStateSet(crash["crashstates"])
	if err != nil {
		out.WriteString(err.Error())
		return false
	}
	cl, err := blk.OpenCrashLog(set.Log, crash["path"])
	if err != nil {
		out.WriteString(err.Error())
		return false
	}
	defer cl.Close()
	records := argInt(strings.Fields(job.Checker), "-records")
	for i, st := range set.States {
		fmt.Fprintln(out, protocol.FormatCrashCheckNext(i))
		fmt.Fprintln(out, protocol.FormatStateBegin(i))
		g.mu.Lock()
		die := i == g.dieAt && !g.died
		g.died = g.died || die
		g.mu.Unlock()
		if die {
			out.WriteString("flushvm: guest crashed (exit status 101): vCPU 0 triple fault\n")
			return true
		}
		img, err := cl.Image(st)
		if err != nil {
			out.WriteString(err.Error())
			return false
		}
		acked, lost := 0, 0
		for _, key := range job.Acks[:job.States[i]] {
			a, _ := protocol.ParseAck("ACK "+key, sysWriters)
			acked++
			p := make([]byte, 512)
			if img.ReadAt(p, recordOffset(a.Writer, a.Seq, records)) != nil || p[0] != recordByte(a.Writer, a.Seq) {
				fmt.Fprintln(out, protocol.FormatLost(key))
				lost++
			}
		}
		fmt.Fprintln(out, protocol.Check{Workload: "fsyncstress", Acked: acked, Lost: lost})
		st := 0
		if lost > 0 {
			st = 1
		}
		fmt.Fprintln(out, protocol.FormatCheckStatus("fsyncstress", st))
		fmt.Fprintln(out, protocol.FormatFsckStatus(0))
		fmt.Fprintln(out, protocol.FormatStateEnd(i, st))
	}
	return false
}

// sysCampaign returns a systematic campaign over fake kernel and initrd
// files working in dir.
func sysCampaign(t *testing.T, dir string, extra ...string) *Campaign {
	t.Helper()
	k := filepath.Join(dir, "vmlinuz")
	os.WriteFile(k, []byte("k"), 0o644)
	f := NewFlags()
	args := append([]string{"--kernel", k, "--initrd", k, "--disk-size", "16M", "--workload", "fsyncstress",
		"--records", "3", "--seed", "1", "--dir", filepath.Join(dir, "work"), "--batch", "4", "--jobs", "1"}, extra...)
	if err := f.FS.Parse(args); err != nil {
		t.Fatal(err)
	}
	c, err := f.Campaign()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSystematicCampaign(t *testing.T) {
	tests := []struct {
		name       string
		workload   string
		dieAt      int
		violations bool
	}{
		{"correct workload", "fsyncstress", -1, false},
		{"a checker crash is retried", "fsyncstress", 2, false},
		{"ACK before fdatasync is caught", "fsyncstress-ack-early", -1, true},
	}
	for _, jobs := range []string{"1", "3"} {
		t.Run("jobs "+jobs, func(t *testing.T) { systematicCases(t, tests, jobs) })
	}
}

func systematicCases(t *testing.T, tests []struct {
	name       string
	workload   string
	dieAt      int
	violations bool
}, jobs string) {
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := sysCampaign(t, dir, "--workload", tc.workload, "--jobs", jobs)
			g := &sysGuest{dieAt: tc.dieAt}
			var log bytes.Buffer
			rep, err := c.Run(context.Background(), g, NewProgress(&log, nil), nil)
			if err != nil {
				t.Fatalf("Run: %v\n%s", err, log.String())
			}
			cov, s := rep.Coverage, rep.Summary
			if cov.Distinct == 0 || cov.Checked != cov.Distinct || s.Checked != cov.Distinct || !cov.Exhausted || s.Errors != 0 {
				t.Fatalf("coverage %+v, summary %+v: want every distinct state checked", cov, s)
			}
			if (s.Violations > 0) != tc.violations || (rep.Status == protocol.CrashtestViolated) != tc.violations {
				t.Fatalf("status %s, %d violations; want violations %v\n%s", rep.Status, s.Violations, tc.violations, log.String())
			}
			if tc.dieAt >= 0 && !strings.Contains(log.String(), "death 1 of 2") {
				t.Errorf("the checker's death was not reported:\n%s", log.String())
			}
			if tc.violations {
				reproduce(t, dir, rep, g)
			}
		})
	}
}

// reproduce runs the first violation's reproduce command and checks it
// rebuilds the same image (hash) and finds the violation again.
func reproduce(t *testing.T, dir string, rep *Report, g *sysGuest) {
	t.Helper()
	f := rep.Summary.FirstViolation
	args := strings.Fields(f.Repro)
	if len(args) < 2 || args[0] != "flushvm" || args[1] != "crashtest" {
		t.Fatalf("reproduce command %q", f.Repro)
	}
	fl := NewFlags()
	if err := fl.FS.Parse(args[2:]); err != nil {
		t.Fatal(err)
	}
	c, err := fl.Campaign()
	if err != nil || !c.Reproducing() {
		t.Fatalf("reproduce command %q: %v", f.Repro, err)
	}
	r, err := c.Reproduce(context.Background(), g, NewProgress(io.Discard, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.State.Hash != f.Hash || !r.State.Violation || r.State.LostAcked != f.LostAcked {
		t.Fatalf("reproduced %+v, want the hash %s and the violation of %+v", r.State, f.Hash, f)
	}
	b, err := os.ReadFile(r.Image)
	if err != nil || int64(len(b)) != 16<<20 {
		t.Fatalf("rebuilt image %s: %d bytes, %v", r.Image, len(b), err)
	}
	if r.ExitStatus() != protocol.CrashtestViolations {
		t.Errorf("exit status %d", r.ExitStatus())
	}
}

func TestSystematicResume(t *testing.T) {
	dir := t.TempDir()
	g := &sysGuest{dieAt: -1}
	first, err := sysCampaign(t, dir, "--max-states", "5").Run(context.Background(), g, NewProgress(io.Discard, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := first.Coverage; c.Checked != 5 || c.Skipped != c.Distinct-5 || c.Exhausted || first.Status != protocol.CrashtestPassed {
		t.Fatalf("first run: coverage %+v, status %s", c, first.Status)
	}
	boots := len(g.boots)
	second, err := sysCampaign(t, dir).Run(context.Background(), g, NewProgress(io.Discard, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := second.Coverage
	if !second.Record.Reused || c.Explored != 5 || c.Checked != c.Distinct-5 || !c.Exhausted {
		t.Fatalf("second run: record %+v, coverage %+v: want the recording reused and the other states checked", second.Record, c)
	}
	for _, m := range g.boots[boots:] {
		if m != "checkstates:fsyncstress" {
			t.Errorf("the resumed run booted %q: want checker boots only", g.boots[boots:])
			break
		}
	}
	// A resumed run reports the campaign so far: the first run's states
	// (in their order, verdicts kept) and its own, and both runs' time.
	if len(second.States) != c.Distinct || second.Summary.Planned != c.Distinct || second.Status != protocol.CrashtestPassed ||
		second.States[0].ID != first.States[0].ID || second.Summary.Seconds < first.Summary.Seconds {
		t.Errorf("second run's report: %d states, summary %+v, status %s: want the campaign's %d states",
			len(second.States), second.Summary, second.Status, c.Distinct)
	}
	third, _ := sysCampaign(t, dir).Run(context.Background(), g, NewProgress(io.Discard, nil), nil)
	if tc := third.Coverage; tc.Explored != c.Distinct || tc.Checked != 0 || !tc.Exhausted || third.Status != protocol.CrashtestPassed ||
		len(third.States) != c.Distinct {
		t.Errorf("an exhausted space: coverage %+v, %d states, status %s", tc, len(third.States), third.Status)
	}
	// Another campaign's recording is refused.
	if _, err := sysCampaign(t, dir, "--records", "4").Run(context.Background(), g, NewProgress(io.Discard, nil), nil); err == nil ||
		!strings.Contains(err.Error(), "another campaign") {
		t.Errorf("a --dir of another campaign: %v", err)
	}
}

// TestSystematicResumeMovedInputs: the recording belongs to the kernel
// and initrd by content, so a campaign resumes when they are at other
// paths (the nested harness maps them anew in each L1 session), and
// refuses a --dir recorded with another initrd.
func TestSystematicResumeMovedInputs(t *testing.T) {
	dir := t.TempDir()
	g := &sysGuest{dieAt: -1}
	if _, err := sysCampaign(t, dir, "--max-states", "2").Run(context.Background(), g, NewProgress(io.Discard, nil), nil); err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(dir, "moved")
	os.MkdirAll(moved, 0o755)
	same, other := filepath.Join(moved, "same"), filepath.Join(moved, "other")
	os.WriteFile(same, []byte("k"), 0o644)
	os.WriteFile(other, []byte("another initrd"), 0o644)
	tests := []struct {
		name, initrd string
		resumes      bool
	}{
		{"same content elsewhere", same, true},
		{"other content", other, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := sysCampaign(t, dir, "--max-states", "2", "--kernel", same, "--initrd", tc.initrd).
				Run(context.Background(), g, NewProgress(io.Discard, nil), nil)
			resumed := err == nil && rep.Record != nil && rep.Record.Reused
			if resumed != tc.resumes || !tc.resumes && (err == nil || !strings.Contains(err.Error(), "another campaign")) {
				t.Errorf("resumed %v (error %v), want %v", resumed, err, tc.resumes)
			}
		})
	}
}

// TestSystematicResumeMovedDir: a campaign resumed from its --dir at
// another path (a nested campaign resumed in a new L1 session, on another
// scratch directory) reports every state's reproduce command with the
// path it runs on now, the earlier run's states included.
func TestSystematicResumeMovedDir(t *testing.T) {
	dir := t.TempDir()
	g := &sysGuest{dieAt: -1}
	if _, err := sysCampaign(t, dir, "--max-states", "3").Run(context.Background(), g, NewProgress(io.Discard, nil), nil); err != nil {
		t.Fatal(err)
	}
	old, moved := filepath.Join(dir, "work"), filepath.Join(dir, "moved")
	if err := os.Rename(old, moved); err != nil {
		t.Fatal(err)
	}
	rep, err := sysCampaign(t, dir, "--max-states", "3", "--dir", moved).Run(context.Background(), g, NewProgress(io.Discard, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.States) != 6 || !rep.Record.Reused {
		t.Fatalf("resumed report: %d states, record %+v: want the 3 states before and 3 new, on the reused recording", len(rep.States), rep.Record)
	}
	for _, st := range rep.States {
		if !strings.Contains(st.Repro, filepath.Join(moved, "record.wlog")+" "+st.ID) || strings.Contains(st.Repro, old+"/") {
			t.Errorf("state %s: reproduce command %q: want the log under %s", st.ID, st.Repro, moved)
		}
	}
}

// killGuest is sysGuest on a machine that dies when its campaign starts
// checker boot number kill: the campaign's context ends there.
type killGuest struct {
	*sysGuest
	kill, checks int
	cancel       func()
}

func (g *killGuest) Boot(ctx context.Context, args []string) (int, []byte, error) {
	if strings.Contains(strings.Join(args, " "), "flushvm.run=checkstates") {
		if g.checks++; g.checks == g.kill {
			g.cancel()
			return 0, nil, ctx.Err()
		}
	}
	return g.sysGuest.Boot(ctx, args)
}

// TestSystematicMachineDies: a campaign whose machine dies between two
// checker boots leaves its report as it stood (rewritten as it runs) and
// an explored-state file that lists every state it judged, and the run
// that resumes it checks the others and reports all of them once.
func TestSystematicMachineDies(t *testing.T) {
	dir := t.TempDir()
	report := filepath.Join(dir, "report.json")
	ctx, cancel := context.WithCancel(context.Background())
	g := &killGuest{sysGuest: &sysGuest{dieAt: -1}, kill: 3, cancel: cancel}
	if _, err := sysCampaign(t, dir, "--report", report).Run(ctx, g, NewProgress(io.Discard, nil), nil); err == nil {
		t.Fatal("a campaign whose machine died ended without an error")
	}
	var snap protocol.CrashtestReport
	if b, err := os.ReadFile(report); err != nil || json.Unmarshal(b, &snap) != nil {
		t.Fatalf("no report left by the dead campaign: %v", err)
	}
	if len(snap.States) == 0 || snap.Status != protocol.CrashtestIncomplete || snap.Coverage.Skipped == 0 {
		t.Errorf("the dead campaign's report: %d states, status %s, coverage %+v: want the states judged so far, incomplete",
			len(snap.States), snap.Status, snap.Coverage)
	}
	explored, err := protocol.ReadCrashtestExplored(filepath.Join(dir, "work"))
	if err != nil || len(explored) != 8 || explored[7].Elapsed <= 0 {
		t.Fatalf("explored-state file: %d entries (%v): want the 2 batches of 4 judged before the death", len(explored), err)
	}
	resumed, err := sysCampaign(t, dir, "--report", report).Run(context.Background(), g.sysGuest, NewProgress(io.Discard, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, st := range resumed.States {
		ids[st.ID] = true
	}
	c := resumed.Coverage
	if c.Explored != 8 || c.Checked != c.Distinct-8 || len(ids) != c.Distinct || len(resumed.States) != c.Distinct ||
		resumed.Status != protocol.CrashtestPassed {
		t.Errorf("resumed: coverage %+v, %d states (%d distinct IDs), status %s", c, len(resumed.States), len(ids), resumed.Status)
	}
}

// lineGuest is sysGuest behind the LineBooter interface.
type lineGuest struct{ *sysGuest }

func (g lineGuest) BootLines(ctx context.Context, args []string, line func(string)) (int, []byte, error) {
	st, out, err := g.Boot(ctx, args)
	m := &lineMerger{line: line}
	one := m.stream()
	one.Write(out)
	m.finish(one)
	return st, out, err
}

func TestSystematicCampaignStreams(t *testing.T) {
	dir := t.TempDir()
	rep, err := sysCampaign(t, dir).Run(context.Background(), lineGuest{&sysGuest{dieAt: 1}}, NewProgress(io.Discard, nil), nil)
	if err != nil || rep.Coverage.Checked != rep.Coverage.Distinct || rep.Status != protocol.CrashtestPassed {
		t.Fatalf("coverage %+v status %s: %v", rep.Coverage, rep.Status, err)
	}
}

func TestStateParser(t *testing.T) {
	b, e := protocol.FormatStateBegin, protocol.FormatStateEnd
	tests := []struct {
		name  string
		lines []string
		want  []string // "index:status:lines"
		next  int
	}{
		{"in order", []string{b(0), "x", e(0, 0), b(1), "y", "z", e(1, 1)}, []string{"0:0:x\n", "1:1:y\nz\n"}, 2},
		{"an end without its begin counts nothing", []string{e(0, 0), b(0), e(0, 1)}, []string{"0:1:"}, 1},
		{"a state out of order counts nothing", []string{b(1), e(1, 0), b(0), e(0, 0)}, []string{"0:0:"}, 1},
		{"a begun state that never ends", []string{b(0), e(0, 0), b(1), "Kernel panic"}, []string{"0:0:"}, 1},
		{"CRLF lines", []string{b(0) + "\r", "x\r", e(0, 0) + "\r"}, []string{"0:0:x\n"}, 1},
	}
	for _, tc := range tests {
		var got []string
		p := &stateParser{ended: func(i int, s *segment) { got = append(got, fmt.Sprintf("%d:%d:%s", i, s.status, s.out)) }}
		for _, l := range tc.lines {
			p.feed(l)
		}
		if strings.Join(got, "|") != strings.Join(tc.want, "|") || p.next != tc.next {
			t.Errorf("%s: ended %q next %d, want %q next %d", tc.name, got, p.next, tc.want, tc.next)
		}
	}
}

// stallGuest is a sysGuest whose checker boots hang (a hung mount or
// fsck, printing nothing more) in the state of their batch that stallAt
// names, one entry per boot, until the entries run out.
type stallGuest struct {
	*sysGuest
	stallAt []int
}

func (g *stallGuest) BootLines(ctx context.Context, args []string, line func(string)) (int, []byte, error) {
	st, out, err := g.Boot(ctx, args)
	if !bytes.Contains(out, []byte(protocol.FormatStateBegin(0))) || len(g.stallAt) == 0 {
		lineGuest{g.sysGuest}.BootLines(ctx, args, line)
		return st, out, err
	}
	at := g.stallAt[0]
	g.stallAt = g.stallAt[1:]
	var shown bytes.Buffer
	for _, l := range strings.Split(string(out), "\n") {
		shown.WriteString(l + "\n")
		line(l)
		if l == protocol.FormatStateBegin(at) {
			break
		}
	}
	<-ctx.Done()
	return 0, shown.Bytes(), ctx.Err()
}

func TestSystematicCheckerStall(t *testing.T) {
	tests := []struct {
		name    string
		stallAt []int
		want    string // index:deaths of the unchecked states
		status  string
	}{
		// Two hangs on different states: each is checked again, every
		// verdict stands.
		{"two states hang once each", []int{1, 1}, "", protocol.CrashtestPassed},
		// State 1 hangs two checkers (at 1 of the first batch, at 0 of
		// the next): reported unchecked, the campaign incomplete.
		{"one state hangs twice", []int{1, 0}, "1:2", protocol.CrashtestIncomplete},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := sysCampaign(t, t.TempDir(), "--boot-timeout", "200ms")
			rep, err := c.Run(context.Background(), &stallGuest{&sysGuest{dieAt: -1}, tc.stallAt}, NewProgress(io.Discard, nil), nil)
			if err != nil {
				t.Fatal(err)
			}
			var dead []string
			deaths := 0
			for _, s := range rep.States {
				deaths += s.CheckerDeaths
				if s.Error != "" {
					dead = append(dead, fmt.Sprintf("%d:%d", s.Index, s.CheckerDeaths))
				}
			}
			if strings.Join(dead, ",") != tc.want || deaths != 2 || len(rep.States) != rep.Coverage.Distinct || rep.Status != tc.status {
				t.Fatalf("unchecked %q, %d deaths, %d of %d states, status %s", dead, deaths, len(rep.States), rep.Coverage.Distinct, rep.Status)
			}
		})
	}
}

func TestSystematicReportSchema(t *testing.T) {
	b, err := os.ReadFile("../protocol/schema/crashtest-report.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	schema, err := jsonschema.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"fsyncstress", "fsyncstress-ack-early"} {
		rep, err := sysCampaign(t, t.TempDir(), "--workload", w).Run(context.Background(), &sysGuest{dieAt: -1}, NewProgress(io.Discard, nil), nil)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "r.json")
		if err := rep.Write(path); err != nil {
			t.Fatal(err)
		}
		doc, _ := os.ReadFile(path)
		if errs := schema.Validate(doc); len(errs) > 0 {
			t.Errorf("%s: report does not match its schema:\n%s", w, strings.Join(errs, "\n"))
		}
	}
}
