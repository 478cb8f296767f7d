package pid1

import (
	"reflect"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
	}{
		{"console=ttyS0 panic=-1 quiet\n", map[string]string{"console": "ttyS0", "panic": "-1", "quiet": ""}},
		{"flushvm.run=exit:7  flushvm.args=-dir,/mnt", map[string]string{"flushvm.run": "exit:7", "flushvm.args": "-dir,/mnt"}},
		{`a="b c" d=e=f`, map[string]string{"a": "b c", "d": "e=f"}},
		{"", map[string]string{}},
	}
	for _, tt := range tests {
		if got := ParseCmdline(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseCmdline(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestCountCPUList(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"0", 1, false},
		{"0-1", 2, false},
		{"0-3,5,7-8", 7, false},
		{"3-1", 0, true},
		{"x", 0, true},
		{"", 0, true},
	}
	for _, tt := range tests {
		got, err := CountCPUList(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("CountCPUList(%q) = %d, %v; want %d, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
