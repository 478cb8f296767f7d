package protocol

import (
	"errors"
	"testing"
	"time"
)

func TestAckLines(t *testing.T) {
	tests := []struct {
		line string
		want Ack
		ok   bool
	}{
		{string(AppendAckFsyncstress(nil, 3, 17)), Ack{Workload: "fsyncstress", Writer: 3, Seq: 17}, true},
		{FormatAckRename(9), Ack{Workload: "rename", Version: 9}, true},
		{"  ACK fsyncstress 0 0 ", Ack{Workload: "fsyncstress"}, true},
		{"ACK fsyncstress 4 1", Ack{}, false}, // writer past maxWriters
		{"ACK fsyncstress -1 1", Ack{}, false},
		{"ACK fsyncstress 1 -1", Ack{}, false},
		{"ACK fsyncstress 1", Ack{}, false},
		{"ACK rename 0", Ack{}, false},
		{"ACK rename x", Ack{}, false},
		{"ACK dd 1", Ack{}, false},
		{"NACK rename 1", Ack{}, false},
		{"", Ack{}, false},
	}
	for _, tc := range tests {
		got, ok := ParseAck(tc.line, 4)
		if ok != tc.ok || got != tc.want {
			t.Errorf("ParseAck(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

func TestCheckLines(t *testing.T) {
	c := Check{Workload: "rename", Acked: 5, Lost: 1, Extra: 2}
	if got, ok := ParseCheck(c.String(), "rename"); !ok || got != c {
		t.Errorf("ParseCheck(%q) = %+v, %v", c.String(), got, ok)
	}
	for _, bad := range []string{"CHECK rename acked=5 lost=1", "CHECK fsyncstress acked=5 lost=1 extra=2",
		"CHECK rename lost=1 acked=5 extra=2", "CHECK rename acked=x lost=1 extra=2"} {
		if got, ok := ParseCheck(bad, "rename"); ok {
			t.Errorf("ParseCheck(%q) = %+v, want no CHECK line", bad, got)
		}
	}
	mine := Check{Workload: "check.sh", Acked: 3, Lost: 0, Extra: 1}
	if got, ok := ParseAnyCheck("  " + mine.String() + "\r"); !ok || got != mine {
		t.Errorf("ParseAnyCheck(%q) = %+v, %v", mine.String(), got, ok)
	}
	if got, ok := ParseAnyCheck("CHECK check.sh acked=3 lost=0"); ok {
		t.Errorf("ParseAnyCheck of a short line = %+v", got)
	}
	v := CheckVerdict{CheckerStatus: -1, FsckStatus: -1}
	for _, l := range []string{FormatCheckMountFailed(errors.New("EIO")), FormatCheckStatus("rename", 1), FormatFsckStatus(4), "noise"} {
		ParseCheckLine(&v, l, "rename")
	}
	if v != (CheckVerdict{MountFailed: true, CheckerStatus: 1, FsckStatus: 4}) {
		t.Errorf("verdict %+v", v)
	}
}

func TestInitExit(t *testing.T) {
	tests := []struct {
		out  string
		want int
		ok   bool
	}{
		{FormatInitExit(0) + "\n", 0, true},
		{"x\n" + FormatInitExit(3) + "\nreboot: Power down\n" + FormatInitExit(125), 125, true},
		{FormatMkfsOK("/dev/vda"), 0, false},
		{InitPrefix + ": exit status \n", 0, false},
	}
	for _, tc := range tests {
		got, ok := FindInitExit([]byte(tc.out))
		if got != tc.want || ok != tc.ok {
			t.Errorf("FindInitExit(%q) = %d, %v; want %d, %v", tc.out, got, ok, tc.want, tc.ok)
		}
	}
	kicks := WatchdogKicked + "1: no exit for at least 15s with vectors [236] requested; kicked it (LAPIC ID 0x1)\n" +
		FormatWatchdogStuck(1, time.Second) + "\n"
	if n := CountWatchdogKicks([]byte(kicks)); n != 1 {
		t.Errorf("CountWatchdogKicks = %d, want 1", n)
	}
}

func TestIsWatchdogStuck(t *testing.T) {
	tests := []struct {
		line string
		want bool
	}{
		{FormatWatchdogStuck(0, time.Minute), true},
		{"[l2] " + FormatWatchdogStuck(3, 61*time.Second) + "\r", true},
		{"flushvm: watchdog: vCPU 1 has not left KVM_RUN 1s after being kicked", true},
		{WatchdogKicked + "1: no exit for at least 15s with vectors [236] requested; kicked it (LAPIC ID 0x1)", false},
		{"guest: has not left KVM_RUN after being kicked", false},
	}
	for _, tc := range tests {
		if got := IsWatchdogStuck(tc.line); got != tc.want {
			t.Errorf("IsWatchdogStuck(%q) = %v, want %v", tc.line, got, tc.want)
		}
	}
}
