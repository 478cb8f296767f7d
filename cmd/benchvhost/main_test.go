package main

import (
	"strings"
	"testing"
)

// TestParseConsole reads a fio job and the fsyncstress job from a console,
// with the guest's flush counts around them, and refuses a job whose
// output is missing.
func TestParseConsole(t *testing.T) {
	stat := func(job, when, flushes string) string {
		return "BENCH-STAT " + job + " " + when + " 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 " + flushes + " 17\n"
	}
	good := "BENCH write_cache=write back\n" +
		"BENCH-BEGIN randread-4k-qd1\nnoise\n{\"jobs\":[{\"read\":{\"iops\":1234.5,\"bw\":4938},\"write\":{\"iops\":0,\"bw\":0}}]}\nBENCH-END randread-4k-qd1\n" +
		stat("fsyncstress-4writers", "before", "100") +
		"BENCH-BEGIN fsyncstress-4writers\n" +
		"fsyncstress: 4 writers x 500 records x 4096 B: 2000 fdatasyncs in 2.50 s, 800 records/s, 3.13 MiB/s; fdatasync p50 4ms p99 9ms\n" +
		"BENCH-END fsyncstress-4writers\n" + stat("fsyncstress-4writers", "after", "2100")
	tests := []struct {
		name    string
		console string
		want    map[string]float64
		flushes uint64
		err     string
	}{
		{"fio and fsyncstress", good, map[string]float64{"randread-4k-qd1": 1234.5, "fsyncstress-4writers": 800}, 2000, ""},
		{"fsyncstress without its line", "BENCH-BEGIN fsyncstress-4writers\nfsyncstress: write: EIO\nBENCH-END fsyncstress-4writers\n", nil, 0, "no fsyncstress summary line"},
		{"nothing", "kernel panic\n", nil, 0, "no fio results"},
	}
	for _, tc := range tests {
		r, err := parseConsole(tc.console)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for job, v := range tc.want {
			if r.values[job] != v {
				t.Errorf("%s: %s = %v, want %v", tc.name, job, r.values[job], v)
			}
		}
		if got := r.syncs.GuestFlushes["fsyncstress-4writers"]; got != tc.flushes {
			t.Errorf("%s: guest flushes %d, want %d", tc.name, got, tc.flushes)
		}
	}
}
