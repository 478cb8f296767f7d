package main

import (
	"os"
	"path/filepath"
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

// TestRatioPairs gives a column per flushvm engine and peer, and none
// without a flushvm backend or without a peer.
func TestRatioPairs(t *testing.T) {
	tests := []struct {
		sel  string
		want string
	}{
		{"flushvm,flushvm-uring,qsd,qemu", "flushvm/qsd flushvm/qemu flushvm-uring/qsd flushvm-uring/qemu"},
		{"flushvm-uring,qemu", "flushvm-uring/qemu"},
		{"qsd,qemu", ""},
		{"flushvm,flushvm-uring", ""},
	}
	for _, tc := range tests {
		var sel []backend
		for _, s := range strings.Split(tc.sel, ",") {
			sel = append(sel, backendNamed(t, s))
		}
		var got []string
		for _, p := range ratioPairs(sel) {
			got = append(got, p[0]+"/"+p[1])
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("%s: %q, want %q", tc.sel, got, tc.want)
		}
	}
}

// TestFlushvmStats reads the disk's counters and refuses a run whose disk
// was not served by the engine the column names.
func TestFlushvmStats(t *testing.T) {
	doc := func(aio, fallback string) string {
		return `{"schema":1,"flushvm_version":"x","disks":[{"path":"d","aio":"` + aio + `","aio_fallback":"` + fallback +
			`","reads":10,"used_batches":4,"interrupts":3}]}`
	}
	tests := []struct {
		name, short, doc, err string
	}{
		{"threads", "flushvm", doc("threads", ""), ""},
		{"io_uring", "flushvm-uring", doc("io_uring", ""), ""},
		{"fell back", "flushvm-uring", doc("threads", "io_uring_setup: operation not permitted"), "not io_uring (io_uring_setup"},
		{"two disks", "flushvm", `{"disks":[{},{}]}`, "not a one-disk stats document"},
		{"not json", "flushvm", `{`, "not a one-disk stats document"},
	}
	for _, tc := range tests {
		path := filepath.Join(t.TempDir(), "stats.json")
		if err := os.WriteFile(path, []byte(tc.doc), 0o644); err != nil {
			t.Fatal(err)
		}
		st, err := flushvmStats(path, backendNamed(t, tc.short))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || st.Reads != 10 || st.UsedBatches != 4 || st.Interrupts != 3 {
			t.Errorf("%s: %+v, %v", tc.name, st, err)
		}
	}
}

// backendNamed is the entry of the backends table with column name short.
func backendNamed(t *testing.T, short string) backend {
	t.Helper()
	for _, b := range backends {
		if b.Short == short {
			return b
		}
	}
	t.Fatalf("no backend %q", short)
	return backend{}
}
