package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/protocol"
)

func TestParseSpecPowerCut(t *testing.T) {
	tests := []struct {
		in      string
		want    string // policy String(); "" for none
		wantErr string
	}{
		{"path=d.img", "", ""},
		{"path=d.img,powercut=lose-all", "lose-all", ""},
		{"path=d.img,cache=unsafe,powercut=keep-all", "keep-all", ""},
		{"path=d.img,cache=directsync,powercut=random-sectors:4k", "random-sectors:4k", ""},
		{"path=d.img,powercut=random-sectors", "random-sectors:512", ""},
		{"path=d.img,powercut=prefix,cache=none", "prefix", ""},
		{"path=d.img,powercut=half", "", "bad power-cut policy"},
		{"path=d.img,powercut=", "", "bad power-cut policy"},
		{"path=d.img,powercut=lose-all,powercut=keep-all", "", "given twice"},
		{"path=d.img,readonly=on,powercut=lose-all", "", "writable"},
		{"path=d.img,power=lose-all", "", "unknown key"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			sp, err := blk.ParseSpec(tc.in)
			if tc.wantErr != "" {
				if !errors.Is(err, blk.ErrBadSpec) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseSpec(%q) error %v, want ErrBadSpec mentioning %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if sp.HasPowerCut() != (tc.want != "") {
				t.Fatalf("HasPowerCut() = %v for %q", sp.HasPowerCut(), tc.in)
			}
			if tc.want != "" && sp.PowerCut.String() != tc.want {
				t.Fatalf("policy %q, want %q", sp.PowerCut.String(), tc.want)
			}
		})
	}
}

// TestPowerCutFlagErrors checks that every misuse of the power-cut flags
// ends with exit status 2 and one line, before anything boots.
func TestPowerCutFlagErrors(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(kernel, tinyKernel(), 0o644); err != nil {
		t.Fatal(err)
	}
	pcDisk := "path=" + filepath.Join(dir, "a.img") + ",powercut=lose-all"
	plain := "path=" + filepath.Join(dir, "b.img")
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"bad trigger", []string{"--disk", pcDisk, "--power-cut", "flushes=0"}, "--power-cut"},
		{"unknown trigger", []string{"--disk", pcDisk, "--power-cut", "reads=2"}, "unknown trigger"},
		{"trigger without powercut disk", []string{"--disk", plain, "--power-cut", "writes=3"}, "needs a --disk with powercut="},
		{"seed without powercut disk", []string{"--disk", plain, "--seed", "3"}, "--seed needs"},
		{"cache bound without powercut disk", []string{"--disk", plain, "--cache-bound", "1M"}, "--cache-bound needs"},
		{"bad cache bound", []string{"--disk", pcDisk, "--cache-bound", "lots"}, "--cache-bound"},
		{"write log, two powercut disks", []string{"--disk", pcDisk, "--disk", pcDisk, "--write-log", filepath.Join(dir, "l")}, "ambiguous"},
		{"write log, two plain disks", []string{"--disk", plain, "--disk", plain, "--write-log", filepath.Join(dir, "l")}, "ambiguous"},
		{"write log, two read-only disks", []string{"--disk", plain + ",readonly=on", "--disk", plain + ",readonly=on", "--write-log", filepath.Join(dir, "l")}, "ambiguous: 0 writable"},
		{"write log, no disk", []string{"--write-log", filepath.Join(dir, "l")}, "needs a --disk"},
		{"bad powercut policy", []string{"--disk", plain + ",powercut=most"}, "bad power-cut policy"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"run", "--kernel", kernel}, tc.args...)
			if got := dispatch(args, &stdout, &stderr); got != exitUsage {
				t.Errorf("status %d, want %d; stderr: %s", got, exitUsage, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.wantErr) || strings.Count(stderr.String(), "\n") != 1 {
				t.Errorf("stderr %q, want one line with %q", stderr.String(), tc.wantErr)
			}
		})
	}
}

// diskOp is one call a test makes on a disk stack, as the device would.
type diskOp struct {
	sync bool
	at   int64 // offset of a 4 KiB write (when !sync)
	fill byte
}

// TestCutBackendTriggers drives a power-cut disk stack (cut layer ->
// write log -> volatile cache -> file) the way the device does and checks
// that the writes=N and flushes=N triggers cut at exactly the N-th call
// (it never reaches the disk, and neither does anything later), that calls
// after the cut are held until release, that the machine is told to stop
// once, that the image holds what the policy keeps, and that the printed
// `flushvm replay` command rebuilds the same image from the write log.
func TestCutBackendTriggers(t *testing.T) {
	const size = 64 << 10
	w := func(at int64, fill byte) diskOp { return diskOp{at: at, fill: fill} }
	s := diskOp{sync: true}
	tests := []struct {
		name    string
		trig    string
		policy  string
		ops     []diskOp
		cutAt   int // index of the op that cuts
		present []int
		absent  []int // writes whose data must not be on the image
		flushes uint64
	}{
		{"writes=3 lose-all", "writes=3", "lose-all", []diskOp{w(0, 1), s, w(4096, 2), w(8192, 3), s}, 3, []int{0}, []int{2, 3}, 1},
		{"writes=3 keep-all", "writes=3", "keep-all", []diskOp{w(0, 1), s, w(4096, 2), w(8192, 3), s}, 3, []int{0, 2}, []int{3}, 1},
		{"flushes=2 lose-all", "flushes=2", "lose-all", []diskOp{w(0, 1), s, w(4096, 2), s, w(8192, 3)}, 3, []int{0}, []int{2, 4}, 1},
		{"flushes=2 keep-all", "flushes=2", "keep-all", []diskOp{w(0, 1), s, w(4096, 2), s, w(8192, 3)}, 3, []int{0, 2}, []int{4}, 1},
		{"flushes=1 lose-all overwrite", "flushes=1", "lose-all", []diskOp{w(0, 1), w(0, 2), s}, 2, nil, []int{0, 1}, 0},
		{"writes=1", "writes=1", "keep-all", []diskOp{w(0, 1)}, 0, nil, []int{0}, 0},
		// Policies with random draws: the image must be what the printed
		// replay command rebuilds.
		{"flushes=2 random-subset", "flushes=2", "random-subset", []diskOp{w(0, 1), s, w(4096, 2), w(8192, 3), w(4096, 4), w(12288, 5), s}, 6, []int{0}, nil, 1},
		{"flushes=2 random-sectors", "flushes=2", "random-sectors", []diskOp{w(0, 1), s, w(4096, 2), w(8192, 3), w(4096, 4), w(12288, 5), s}, 6, []int{0}, nil, 1},
		{"writes=6 prefix", "writes=6", "prefix", []diskOp{w(0, 1), s, w(4096, 2), w(8192, 3), w(4096, 4), w(12288, 5), w(0, 6)}, 6, []int{0}, []int{6}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img, base, logPath := filepath.Join(dir, "disk.img"), filepath.Join(dir, "base.img"), filepath.Join(dir, "run.wlog")
			for _, p := range []string{img, base} {
				if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			sp, err := blk.ParseSpec("path=" + img + ",powercut=" + tc.policy)
			if err != nil {
				t.Fatal(err)
			}
			trig, err := protocol.ParseTrigger(tc.trig)
			if err != nil {
				t.Fatal(err)
			}
			ps := disk.NewPowerSupply()
			ps.Arm(trig)
			var stops atomic.Int32
			ps.Stop = func() { stops.Add(1) }
			d, err := disk.Open(sp, disk.Options{WriteLog: logPath, Supply: ps})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Dev.Close()
			b := d.Dev.Backend()

			held := make(chan error, len(tc.ops))
			for i, op := range tc.ops {
				call := func() error {
					if op.sync {
						return b.Sync()
					}
					v := blk.NewVec(1)
					if err := v.Append(bytes.Repeat([]byte{op.fill}, 4096)); err != nil {
						return err
					}
					return b.WriteAt(v, op.at)
				}
				if i < tc.cutAt {
					if err := call(); err != nil {
						t.Fatalf("op %d before the cut: %v", i, err)
					}
					if ps.IsCut() {
						t.Fatalf("power cut at op %d, want at op %d", i, tc.cutAt)
					}
					continue
				}
				go func() { held <- call() }()
				if i == tc.cutAt {
					waitFor(t, ps.IsCut) // later calls come after the cut
				}
			}
			select {
			case err := <-held:
				t.Fatalf("a call completed after the cut: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
			ps.Release()
			for range len(tc.ops) - tc.cutAt {
				if err := <-held; !errors.Is(err, blk.ErrPowerLost) {
					t.Fatalf("held call returned %v, want ErrPowerLost", err)
				}
			}
			if n := stops.Load(); n != 1 {
				t.Fatalf("machine told to stop %d times, want 1", n)
			}
			if _, err := d.PowerCut(ps.Why(), 5); err != nil {
				t.Fatal(err)
			}
			if d.Cut.CompletedFlushes != tc.flushes {
				t.Errorf("completed flushes %d, want %d", d.Cut.CompletedFlushes, tc.flushes)
			}
			line := d.Summary("disk 0")
			if !strings.Contains(line, "flushvm replay") || !strings.Contains(line, ps.Why()) || strings.Contains(line, "\n") {
				t.Errorf("summary %q", line)
			}
			if err := d.Dev.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range tc.present {
				if op := tc.ops[i]; !bytes.Equal(got[op.at:op.at+4096], bytes.Repeat([]byte{op.fill}, 4096)) {
					t.Errorf("write %d (fill %d) is not on the image", i, op.fill)
				}
			}
			for _, i := range tc.absent {
				if op := tc.ops[i]; bytes.Contains(got[op.at:op.at+4096], []byte{op.fill}) {
					t.Errorf("write %d (fill %d) reached the image", i, op.fill)
				}
			}

			// The printed replay command rebuilds the same image.
			out := filepath.Join(dir, "crash.img")
			cmd := strings.NewReplacer("BASE", base, "crash.img", out).Replace(d.Cut.Replay)
			args := strings.Fields(strings.TrimPrefix(cmd, "flushvm "))
			var stdout, stderr bytes.Buffer
			if st := dispatch(args, &stdout, &stderr); st != exitOK {
				t.Fatalf("%s: status %d: %s", cmd, st, stderr.String())
			}
			replayed, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(replayed, got) {
				t.Errorf("%s built a different image than the cut left", cmd)
			}
		})
	}
}

// waitFor waits until cond holds (the test's own timeout bounds it).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for !cond() {
		time.Sleep(time.Millisecond)
	}
}
