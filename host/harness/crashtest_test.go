package harness

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestScratchSize(t *testing.T) {
	ct := func(args ...string) Run { return Run{Subcommand: SubCrashtest, Args: args} }
	tests := []struct {
		name string
		runs []Run
		want int64
		err  bool
	}{
		{"no crashtest", []Run{{Args: []string{"--disk-size", "1G"}}, {Command: []string{"true"}}}, 0, false},
		{"one campaign", []Run{ct("--disk-size", "128M", "--cuts", "20")}, 3*128<<20 + scratchSlack, false},
		{"kept cuts", []Run{ct("--disk-size=128M", "--cuts=20", "--dir", "/x")}, 23*128<<20 + scratchSlack, false},
		{"two campaigns", []Run{ct("--disk-size", "64M"), ct("--disk-size", "1G")}, 3*64<<20 + 3<<30 + scratchSlack, false},
		{"no size", []Run{ct("--cuts", "1")}, 64<<20 + scratchSlack, false},
		{"bad size", []Run{ct("--disk-size", "lots")}, 0, true},
	}
	for _, tt := range tests {
		got, err := ScratchSize(tt.runs)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("%s: ScratchSize = %d, %v; want %d, error %v", tt.name, got, err, tt.want, tt.err)
		}
	}
}

func TestRewriteCrashtest(t *testing.T) {
	host := t.TempDir()
	jobDir := t.TempDir()
	kern := filepath.Join(host, "vmlinuz")
	initrd := filepath.Join(host, "guest.cpio.gz")
	for _, p := range []string{kern, initrd} {
		if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := newMapper(jobDir)
	in := []string{"--kernel", kern, "--initrd=" + initrd, "--disk-size", "128M", "--workload", "fsyncstress",
		"--cuts", "2", "--policy", "random-subset", "--seed", "7", "--cache", "none", "--report", "r.json",
		"--dir", "kept", "--boot-timeout", "3m", "--at", "writes=5"}
	want := []string{"--kernel=/job/in/1-vmlinuz", "--initrd=/job/in/2-guest.cpio.gz", "--disk-size=128M",
		"--workload=fsyncstress", "--cuts=2", "--policy=random-subset", "--seed=7", "--cache=none",
		"--report=/job/out/report-4-0.json", "--dir=/scratch/run-4", "--boot-timeout=3m", "--at=writes=5"}
	got, err := m.rewrite(4, SubCrashtest, in)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("rewrite crashtest\n got %q\nwant %q", got, want)
	}
	abs, _ := filepath.Abs("kept")
	if len(m.kept) != 1 || m.kept[0] != (keptDir{run: 4, host: abs}) {
		t.Errorf("kept dirs %+v, want run 4 -> %s", m.kept, abs)
	}
	// --disk is not a crashtest flag: it passes through unmapped.
	if got, _ := m.rewrite(5, SubCrashtest, []string{"--disk", "path=" + kern}); !slices.Equal(got, []string{"--disk", "path=" + kern}) || len(m.disks) != 0 {
		t.Errorf("crashtest --disk mapped: %q, disks %v", got, m.disks)
	}

	// The report comes back with host paths for the L1 inputs, still
	// valid JSON.
	out := t.TempDir()
	m.stats[4][0].host = filepath.Join(out, "r.json")
	if err := os.MkdirAll(filepath.Join(jobDir, "out"), 0o755); err != nil {
		t.Fatal(err)
	}
	doc := `{"kernel":"/job/in/1-vmlinuz","reproduce":"flushvm crashtest --kernel /job/in/1-vmlinuz --initrd /job/in/2-guest.cpio.gz",` +
		`"image":"/scratch/run-4/cut-1.img","other":"/scratch/run-44/cut-1.img"}`
	if err := os.WriteFile(m.stats[4][0].l1, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.copyStats(4); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "r.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep map[string]string
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report copied back is not JSON: %v: %s", err, b)
	}
	if rep["kernel"] != kern || rep["reproduce"] != "flushvm crashtest --kernel "+kern+" --initrd "+initrd ||
		rep["image"] != filepath.Join(abs, "cut-1.img") || rep["other"] != "/scratch/run-44/cut-1.img" {
		t.Errorf("report copied back as %s", b)
	}
}

func TestFlagValue(t *testing.T) {
	args := []string{"--cuts", "3", "--dir=/a", "--cuts=4", "--disk-size"}
	for _, tt := range []struct {
		name, want string
		ok         bool
	}{{"cuts", "4", true}, {"dir", "/a", true}, {"disk-size", "", false}, {"seed", "", false}, {"cut", "", false}} {
		if got, ok := FlagValue(args, tt.name); got != tt.want || ok != tt.ok {
			t.Errorf("FlagValue(%s) = %q, %v; want %q, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

// TestCopyKeptDirs reads a campaign's kept files out of an ext4 image the
// way the harness reads the scratch disk after L1 powered off.
func TestCopyKeptDirs(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (e2fsprogs)", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "run-1", "cut-3"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"run-1/cut-3/workload.log": "ACK fsyncstress 0 0\n", "run-1/summary.txt": "1 violation\n"}
	for p, c := range files {
		if err := os.WriteFile(filepath.Join(src, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(t.TempDir(), "scratch.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-d", src, img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 -d: %v: %s", err, out)
	}
	host := filepath.Join(t.TempDir(), "kept")
	if err := copyKeptDirs(ctx, img, []keptDir{{run: 1, host: host}}); err != nil {
		t.Fatal(err)
	}
	for p, c := range files {
		b, err := os.ReadFile(filepath.Join(host, strings.TrimPrefix(p, "run-1/")))
		if err != nil || string(b) != c {
			t.Errorf("%s copied back as %q, %v; want %q", p, b, err, c)
		}
	}
	if entries, _ := os.ReadDir(host); len(entries) != 2 {
		t.Errorf("host dir has %d entries, want cut-3 and summary.txt only", len(entries))
	}
	if err := copyKeptDirs(ctx, img, []keptDir{{run: 2, host: host}}); err == nil {
		t.Error("copying a directory the campaign never made succeeded")
	}
}

// TestConsoleRewrite checks that a crashtest session's console shows host
// paths, whole lines at a time, however QEMU chunks its output.
func TestConsoleRewrite(t *testing.T) {
	m := newMapper(t.TempDir())
	m.inputs["/host/vmlinuz"] = "/job/in/1-vmlinuz"
	m.inputs["/host/gone"] = "/job/missing/gone"
	m.kept = []keptDir{{run: 1, host: "/host/kept"}}
	var out strings.Builder
	c := newConsole(&out, time.Now())
	c.rewrite = m.hostLine
	in := "crashtest: cut 1/1\r\n  reproduce:   flushvm crashtest --kernel /job/in/1-vmlinuz --dir crash-3\r\n" +
		"  its image:   /scratch/run-1/cut-0.img and /scratch/run-12/cut-0.img /job/missing/gone\npartial /job/in/1-vmlinuz"
	for k := 0; k < len(in); k += 7 {
		if _, err := c.Write([]byte(in[k:min(k+7, len(in))])); err != nil {
			t.Fatal(err)
		}
		if s := out.String(); s != "" && !strings.HasSuffix(s, "\n") {
			t.Fatalf("a partial line went out: %q", s)
		}
	}
	c.flush()
	want := "crashtest: cut 1/1\n  reproduce:   flushvm crashtest --kernel /host/vmlinuz --dir crash-3\n" +
		"  its image:   /host/kept/cut-0.img and /scratch/run-12/cut-0.img /job/missing/gone\npartial /host/vmlinuz"
	if out.String() != want {
		t.Errorf("console:\n%q\nwant\n%q", out.String(), want)
	}
	if got := c.rewriteAll("a /job/in/1-vmlinuz\nb /scratch/run-1/x\n"); got != "a /host/vmlinuz\nb /host/kept/x\n" {
		t.Errorf("rewriteAll = %q", got)
	}
	if c.tail() != "partial /job/in/1-vmlinuz" {
		t.Errorf("tail %q: the markers see the raw lines", c.tail())
	}
}

func TestNestedCrashtestArgs(t *testing.T) {
	tests := []struct {
		run  Run
		want string
	}{
		{Run{Subcommand: SubCrashtest, Args: []string{"--seed", "1"}}, "--jobs=1"},
		{Run{Subcommand: SubCrashtest, Args: []string{"--jobs", "2"}}, ""},
		{Run{Subcommand: SubCrashtest, Args: []string{"--mode=random"}}, ""},
		{Run{Args: []string{"--kernel", "k"}}, ""},
	}
	for _, tc := range tests {
		if got := strings.Join(nestedCrashtestArgs(tc.run), " "); got != tc.want {
			t.Errorf("nestedCrashtestArgs(%q) = %q, want %q", tc.run.Args, got, tc.want)
		}
	}
}

// TestRewriteWorkloadDir: --workload-dir's tree reaches L1 whole (files,
// subdirectories, symbolic links); --checker passes through.
func TestRewriteWorkloadDir(t *testing.T) {
	src := filepath.Join(t.TempDir(), "mine")
	if err := os.MkdirAll(filepath.Join(src, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "bin", "w.sh"), []byte("echo ACK 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("bin/w.sh", filepath.Join(src, "w")); err != nil {
		t.Fatal(err)
	}
	jobDir := t.TempDir()
	m := newMapper(jobDir)
	got, err := m.rewrite(0, SubCrashtest, []string{"--workload-dir", src, "--checker", "c.sh"})
	want := []string{"--workload-dir=/job/in/1-mine", "--checker=c.sh"}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("rewrite = %q, %v; want %q", got, err, want)
	}
	b, err := os.ReadFile(filepath.Join(jobDir, "in", "1-mine", "bin", "w.sh"))
	if err != nil || string(b) != "echo ACK 1\n" {
		t.Errorf("copied file: %q, %v", b, err)
	}
	if l, err := os.Readlink(filepath.Join(jobDir, "in", "1-mine", "w")); err != nil || l != "bin/w.sh" {
		t.Errorf("copied link: %q, %v", l, err)
	}
	if got, _ := m.rewrite(1, SubCrashtest, []string{"--workload-dir", filepath.Join(src, "nope")}); !slices.Equal(got, []string{"--workload-dir=/job/missing/nope"}) {
		t.Errorf("missing dir mapped to %q", got)
	}
}

// TestRecoverKeptDirs reads a campaign's kept files out of a scratch disk
// that L1 left mounted (its journal marked for recovery), past a campaign
// that never started, and says why it cannot when the disk holds no file
// system.
func TestRecoverKeptDirs(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (e2fsprogs)", tool)
		}
	}
	tests := []struct {
		name    string
		mkfs    bool
		wantLog string
		copied  bool
	}{
		{"journal to replay", true, "replayed its journal and copied back the kept directories its campaigns had made", true},
		{"no file system", false, "could not be copied back", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			src := filepath.Join(t.TempDir(), "run-0")
			if err := os.MkdirAll(src, 0o755); err != nil {
				t.Fatal(err)
			}
			const explored = `{"id":"w1.s1","elapsed":3}` + "\n"
			if err := os.WriteFile(filepath.Join(src, "explored.jsonl"), []byte(explored), 0o644); err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(t.TempDir(), "scratch.img")
			if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(img, 16<<20); err != nil {
				t.Fatal(err)
			}
			if tc.mkfs {
				for _, c := range [][]string{{"mkfs.ext4", "-q", "-F", "-d", filepath.Dir(src), img},
					{"debugfs", "-w", "-R", "feature needs_recovery", img}} {
					if out, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput(); err != nil {
						t.Fatalf("%v: %v: %s", c, err, out)
					}
				}
			}
			host := filepath.Join(t.TempDir(), "kept")
			var log strings.Builder
			// Run 1's campaign never started: it made no directory.
			recoverKeptDirs(ctx, &log, img, []keptDir{{run: 0, host: host}, {run: 1, host: host + "-1"}})
			if !strings.Contains(log.String(), tc.wantLog) {
				t.Errorf("logged %q, want %q", log.String(), tc.wantLog)
			}
			b, err := os.ReadFile(filepath.Join(host, "explored.jsonl"))
			if got := err == nil && string(b) == explored; got != tc.copied {
				t.Errorf("explored.jsonl copied back: %q, %v; want copied %v", b, err, tc.copied)
			}
		})
	}
}
