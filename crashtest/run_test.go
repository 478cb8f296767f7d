package crashtest

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flushvm/flushvm/protocol"
)

// TestExecBooterCutLine boots a stand-in flushvm that does what a power
// cut does to the output: the guest's console stops half-way through an
// acknowledgement line, and flushvm reports the cut on stderr. Only the
// whole acknowledgements may count; the cut line must not be read glued
// to flushvm's report (which a key accepts: printable, under 256 bytes).
func TestExecBooterCutLine(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "flushvm")
	script := `#!/bin/sh
printf 'ACK fsyncstress 0 0\nACK fsyncstress 1 0\nACK fsyncst'
sleep 0.2
echo 'flushvm: disk 0 (/d.img): power cut by --power-cut writes=24: write 24 reached the disk' >&2
exit 100
`
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	var lines []string
	st, out, err := (&ExecBooter{Flushvm: bin}).BootLines(context.Background(), nil, func(l string) { lines = append(lines, l) })
	if err != nil || st != 100 {
		t.Fatalf("status %d, %v", st, err)
	}
	if keys, want := ackKeys(out), []string{"fsyncstress 0 0", "fsyncstress 1 0"}; !slices.Equal(keys, want) {
		t.Errorf("acknowledgements %q, want %q; output:\n%s", keys, want, out)
	}
	if !strings.HasSuffix(string(out), "reached the disk\nACK fsyncst") {
		t.Errorf("the cut line is not last and unterminated:\n%q", out)
	}
	want := []string{"ACK fsyncstress 0 0", "ACK fsyncstress 1 0",
		"flushvm: disk 0 (/d.img): power cut by --power-cut writes=24: write 24 reached the disk", "ACK fsyncst"}
	if !slices.Equal(lines, want) {
		t.Errorf("lines %q, want %q", lines, want)
	}
}

// TestLineMerger checks the merge of two streams written in pieces: whole
// lines in the order they ended, unterminated lines only at the end, the
// last stream's left unterminated.
func TestLineMerger(t *testing.T) {
	type write struct {
		stream int
		text   string
	}
	tests := []struct {
		name   string
		writes []write
		want   string
	}{
		{"whole lines interleave", []write{{0, "a1\n"}, {1, "b1\n"}, {0, "a2\n"}}, "a1\nb1\na2\n"},
		{"a line split around another", []write{{0, "a"}, {1, "b1\n"}, {0, "1\n"}}, "b1\na1\n"},
		{"both cut", []write{{0, "a1\na"}, {1, "b"}}, "a1\nb\na"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &lineMerger{}
			s := []*mergeStream{m.stream(), m.stream()}
			for _, w := range tt.writes {
				s[w.stream].Write([]byte(w.text))
			}
			m.finish(s[1], s[0])
			if got := m.out.String(); got != tt.want {
				t.Errorf("merged %q, want %q", got, tt.want)
			}
		})
	}
}

// TestGuestCrashNamesL1State: a failed boot whose report shows L1's own
// registers (its RIP is where L1 resumes after VMRUN) says so.
func TestGuestCrashNamesL1State(t *testing.T) {
	const hang = "flushvm: guest hung (exit status 102): vCPU 0 made no progress for 1m0s: RIP 0xffffffffc04b320c RSP 0xff564bbac0583a00\n"
	tests := []struct {
		name, env string
		l1state   bool
	}{
		{"nested, L1's resume point", "0xffffffffc04b320c __svm_vcpu_run+0x9c", true},
		{"nested, elsewhere", "0xffffffffc04b3209 __svm_vcpu_run+0x99", false},
		{"direct", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(protocol.L1VMRunReturnEnv, tt.env)
			what, crashed := guestCrash(protocol.ExitGuestHang, []byte(hang))
			if !crashed || strings.Contains(what, "L1's own registers") != tt.l1state || !strings.Contains(what, "guest hung") {
				t.Errorf("guestCrash = %q, %v; want a crash, naming L1's registers: %v", what, crashed, tt.l1state)
			}
			// A checker boot that dies names the cause the same way.
			rep, _ := protocol.FindCrashReport([]byte("CHECK x\n" + hang))
			if cause := l1StateCause(rep); strings.HasSuffix(cause, ": ") != tt.l1state {
				t.Errorf("l1StateCause = %q, want a cause: %v", cause, tt.l1state)
			}
		})
	}
}
