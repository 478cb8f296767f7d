package cli

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestFlagTable(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.String("cache", "writeback", "cache mode\n  e.g. --cache none")
	fs.Int("cuts", 0, "power cuts (required)\n  e.g. --cuts 20")
	fs.Duration("boot-timeout", 5*time.Minute, "bound on each boot\n  e.g. --boot-timeout 10m")
	fs.Bool("to-end", false, "replay to the end\n  e.g. --to-end")
	var b bytes.Buffer
	FlagTable(&b, fs)
	want := `  --cache VALUE (default: writeback)
      cache mode
      e.g. --cache none
  --cuts N
      power cuts (required)
      e.g. --cuts 20
  --boot-timeout DURATION (default: 5m0s)
      bound on each boot
      e.g. --boot-timeout 10m
  --to-end
      replay to the end
      e.g. --to-end
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestOutputDir(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		path string
		ok   bool
	}{
		{"", true},
		{filepath.Join(dir, "r.json"), true},
		{filepath.Join(dir, "no", "r.json"), false},
	}
	for _, tc := range tests {
		if err := OutputDir("report", tc.path); (err == nil) != tc.ok {
			t.Errorf("OutputDir(%q) = %v, want ok %v", tc.path, err, tc.ok)
		}
	}
}
