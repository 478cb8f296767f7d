package protocol

import (
	"reflect"
	"strings"
	"testing"
)

func TestAckKey(t *testing.T) {
	tests := []struct {
		line, key string
		ok        bool
	}{
		{"ACK fsyncstress 0 3\n", "fsyncstress 0 3", true},
		{"  ACK row-17  ", "row-17", true},
		{"ACK ", "", false},
		{"ACKrow", "", false},
		{"ack row", "", false},
		{"ACK a\x01b", "", false},
		{"ACK " + strings.Repeat("k", MaxAckKey), strings.Repeat("k", MaxAckKey), true},
		{"ACK " + strings.Repeat("k", MaxAckKey+1), "", false},
	}
	for _, tt := range tests {
		key, ok := AckKey(tt.line)
		if key != tt.key || ok != tt.ok || IsAckLine([]byte(tt.line)) != tt.ok {
			t.Errorf("AckKey(%q) = %q, %v; want %q, %v", tt.line, key, ok, tt.key, tt.ok)
		}
	}
}

func TestLostKey(t *testing.T) {
	for line, want := range map[string]string{"LOST row 3\n": "row 3", "LOST ": "", "lost x": "", "LOSTx": ""} {
		key, ok := LostKey(line)
		if key != want || ok != (want != "") {
			t.Errorf("LostKey(%q) = %q, %v; want %q", line, key, ok, want)
		}
	}
	if key, _ := LostKey(FormatLost("a b")); key != "a b" {
		t.Errorf("LostKey(FormatLost) = %q", key)
	}
}

func TestJobRoundTrip(t *testing.T) {
	j := Job{Workload: "/bin/w -n 3", Checker: "sh -c 'exit 0'", Acks: []string{"a 1", "b"}, States: []int{0, 2, 1}}
	b, err := FormatJob(j)
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%4096 != 0 || len(b) < JobDiskMin {
		t.Errorf("job is %d bytes, want a multiple of 4 KiB, at least %d", len(b), JobDiskMin)
	}
	big := Job{Workload: "w", Checker: "c", Acks: []string{strings.Repeat("k", MaxAckKey)}}
	for len(big.Acks) < 40 {
		big.Acks = append(big.Acks, big.Acks[0])
	}
	if bb, err := FormatJob(big); err != nil || len(bb)%4096 != 0 || len(bb) <= JobDiskMin {
		t.Errorf("a %d-key job: %d bytes, %v; want a multiple of 4 KiB past %d", len(big.Acks), len(bb), err, JobDiskMin)
	}
	got, err := ParseJob(append(b, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, j) {
		t.Errorf("round trip: %+v, want %+v", got, j)
	}
}

func TestFormatJobRefuses(t *testing.T) {
	for name, j := range map[string]Job{
		"two-line command": {Workload: "a\nb", Checker: "c"},
		"empty checker":    {Workload: "a", Checker: " "},
		"bad key":          {Workload: "a", Checker: "c", Acks: []string{"x\ty"}},
		"state past keys":  {Workload: "a", Checker: "c", Acks: []string{"x"}, States: []int{2}},
	} {
		if _, err := FormatJob(j); err == nil {
			t.Errorf("%s: FormatJob accepted %+v", name, j)
		}
	}
}

func TestParseJobRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown line":      "workload a\nfrob x\n",
		"state out of turn": "ack k\nstate 1 1\n",
		"state past keys":   "ack k\nstate 0 2\n",
		"state before keys": "state 0 1\nack k\n",
		"bad state":         "state 0\n",
		"empty key":         "ack  \n",
		"empty command":     "checker \n",
	} {
		if _, err := ParseJob([]byte(doc)); err == nil {
			t.Errorf("%s: ParseJob(%q) accepted it", name, doc)
		}
	}
}
