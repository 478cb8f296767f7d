package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCrashtestCommandUsageErrors(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "k")
	os.WriteFile(k, nil, 0o644)
	base := []string{"--kernel", k, "--mode", "random", "--initrd", k, "--disk-size", "64M", "--workload", "fsyncstress", "--cuts", "2",
		"--policy", "lose-all", "--seed", "1"}
	with := func(kv ...string) []string {
		a := append([]string{}, base...)
		for i := 0; i < len(kv); i += 2 {
			for j := 0; j < len(a); j += 2 {
				if a[j] == kv[i] {
					a[j+1] = kv[i+1]
				}
			}
		}
		return a
	}
	systematic := []string{"--kernel", k, "--initrd", k, "--disk-size", "64M", "--workload", "fsyncstress", "--seed", "1"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no kernel", base[2:], "--kernel is required"},
		{"missing initrd", with("--initrd", filepath.Join(dir, "nope")), "--initrd"},
		{"no seed", base[:len(base)-2], "--seed is required"},
		{"bad workload", with("--workload", "dd"), "want one of create, create-no-dirsync, create-tmpfile, create-tmpfile-no-dirsync, fsyncstress"},
		{"random flag in systematic mode", with("--mode", "systematic"), "--cuts is a --mode random flag"},
		{"systematic flag in random mode", append(with(), "--k", "2"), "--k is a --mode systematic flag"},
		{"unknown mode", with("--mode", "fuzzy"), "--mode \"fuzzy\""},
		{"k too large", append(systematic, "--k", "11"), "--k 11"},
		{"empty batch", append(systematic, "--batch", "0"), "--batch 0"},
		{"reproduce without a state", append(systematic, "--reproduce", k), "want one STATE"},
		{"reproduce a missing log", append(systematic, "--reproduce", filepath.Join(dir, "none"), "w0.s1"), "--reproduce"},
		{"tiny disk", with("--disk-size", "1M"), "--disk-size"},
		{"no cuts", with("--cuts", "0"), "--cuts 0"},
		{"bad policy", with("--policy", "some"), "--policy"},
		{"bad cache", append(with(), "--cache", "fast"), "--cache"},
		{"bad shard", append(with(), "--shard", "3/2"), "--shard"},
		{"shard without cuts", append(with(), "--shard", "3/3"), "owns none of the 2 cuts"},
		{"report directory missing", append(with(), "--report", filepath.Join(dir, "no", "r.json")), "does not exist"},
		{"timed cut point", append(with(), "--at", "after=1s"), "--at"},
		{"unknown flag", append(with(), "--frobnicate"), "unknown flag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			status := dispatch(append([]string{"crashtest"}, tc.args...), &out, &errb)
			if status != exitUsage || !strings.Contains(errb.String(), tc.want) || strings.Count(errb.String(), "\n") != 1 {
				t.Errorf("status %d, stderr %q: want %d and one line naming %q", status, errb.String(), exitUsage, tc.want)
			}
		})
	}
}
