package harness

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/protocol"
)

func TestDecide(t *testing.T) {
	const svm = "processor : 0\nflags : fpu vme svm lm\n"
	const none = "processor : 0\nflags : fpu vme lm\n"
	tests := []struct {
		name     string
		cpuinfo  string
		modules  string
		kvm, pvm bool
		want     Mode
		why      string
	}{
		{"hardware", svm, "kvm_amd 1 0 - Live\nkvm 2 1 kvm_amd, Live\n", true, false, Direct, "hardware"},
		{"vmx", strings.Replace(svm, "svm", "vmx", 1), "", true, false, Direct, "hardware"},
		{"no virt flags", none, "", true, false, Nested, "vmx/svm"},
		{"no /dev/kvm", svm, "", false, false, Nested, "/dev/kvm"},
		{"pvm in sysfs", svm, "", true, true, Nested, "PVM"},
		{"pvm in modules", svm, "kvm_pvm 1 0 - Live\n", true, false, Nested, "PVM"},
	}
	for _, tt := range tests {
		got, why := decide(tt.cpuinfo, tt.modules, tt.kvm, tt.pvm)
		if got != tt.want || !strings.Contains(why, tt.why) {
			t.Errorf("%s: decide = %v (%s), want %v (%s)", tt.name, got, why, tt.want, tt.why)
		}
	}
}

func TestRewrite(t *testing.T) {
	host := t.TempDir()
	job := t.TempDir()
	kern := filepath.Join(host, "vmlinuz")
	d1 := filepath.Join(host, "a.img")
	d2 := filepath.Join(host, "b.img")
	rules := filepath.Join(host, "f.rules")
	for _, p := range []string{kern, d1, d2, rules} {
		if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := newMapper(job)
	tests := []struct {
		run  int
		in   []string
		want []string
	}{
		{0, []string{"--kernel", kern, "--append", "--kernel x", "--cpus=2"},
			[]string{"--kernel=/job/in/1-vmlinuz", "--append=--kernel x", "--cpus=2"}},
		{0, []string{"--disk", "path=" + d1 + ",cache=none", "--disk=serial=s,path=" + d2 + ",readonly=on"},
			[]string{"--disk=path=/dev/vda,cache=none", "--disk=serial=s,path=/dev/vdb,readonly=on"}},
		{1, []string{"--kernel=" + kern, "--disk", "path=" + d2, "--stats", "/tmp/s.json"},
			[]string{"--kernel=/job/in/1-vmlinuz", "--disk=path=/dev/vdb", "--stats=/job/out/stats-1-0.json"}},
		{1, []string{"--kernel", filepath.Join(host, "missing"), "--disk", "path=/nonexistent/x.img"},
			[]string{"--kernel=/job/missing/missing", "--disk=path=/job/missing/x.img"}},
		{2, []string{"--unknown-future-flag", "--kernel"}, []string{"--unknown-future-flag", "--kernel"}},
		{3, []string{"--write-log", "/tmp/run.wlog", "--power-cut", "flushes=3", "--stats=/tmp/s.json"},
			[]string{"--write-log=/job/out/write-log-3-0.wlog", "--power-cut=flushes=3", "--stats=/job/out/stats-3-1.json"}},
		{4, []string{"--disk", "path=" + d1 + ",faults=" + rules + ",werror=stop"},
			[]string{"--disk=path=/dev/vda,faults=/job/in/3-f.rules,werror=stop"}},
	}
	for i, tt := range tests {
		got, err := m.rewrite(tt.run, SubRun, tt.in)
		if i == 1 && len(m.disks) == 2 && (m.disks[0].readonly || !m.disks[1].readonly) {
			t.Errorf("case 1: L1 drives %+v %+v: want vda writable, vdb read-only", *m.disks[0], *m.disks[1])
		}
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("case %d: rewrite(%q)\n got %q\nwant %q", i, tt.in, got, tt.want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(job, "in", "1-vmlinuz")); err != nil || string(b) != kern {
		t.Errorf("kernel not linked into the job dir: %q, %v", b, err)
	}
	if len(m.disks) != 2 || m.disks[0].host != d1 || m.disks[1].host != d2 || m.disks[1].readonly {
		t.Errorf("disks %+v: want a.img, b.img (b.img writable: one run opens it read-write)", m.disks)
	}
	if h, ok := m.hostPath("/dev/vdb"); !ok || h != d2 {
		t.Errorf("hostPath(/dev/vdb) = %s, %v", h, ok)
	}

	// Run 3's outputs come back: the write log as it is, the stats with
	// host disk paths.
	out := t.TempDir()
	m.stats[3][0].host = filepath.Join(out, "run.wlog")
	m.stats[3][1].host = filepath.Join(out, "s.json")
	if err := os.MkdirAll(filepath.Join(job, "out"), 0o755); err != nil {
		t.Fatal(err)
	}
	wlog := []byte("not json {\"disks\": [")
	if err := os.WriteFile(m.stats[3][0].l1, wlog, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.stats[3][1].l1, []byte(`{"disks":[{"path":"/dev/vdb"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.copyStats(3); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "run.wlog")); err != nil || string(b) != string(wlog) {
		t.Errorf("write log copied back as %q, %v; want %q", b, err, wlog)
	}
	if b, err := os.ReadFile(filepath.Join(out, "s.json")); err != nil || !strings.Contains(string(b), d2) {
		t.Errorf("stats copied back as %s, %v; want disk path %s", b, err, d2)
	}
}

func TestQEMUDrive(t *testing.T) {
	tests := []struct {
		spec, want string
		wantErr    bool
	}{
		{"path=/x.img", "file=/x.img,if=virtio,format=raw,cache=writeback", false},
		{"path=/a,b.img,cache=unsafe", "", true},
		{"path=/x.img,cache=none,readonly=on,serial=abc", "file=/x.img,if=virtio,format=raw,cache=none,readonly=on,serial=abc", false},
		{"path=/x.img,readonly=true", "file=/x.img,if=virtio,format=raw,cache=writeback,readonly=on", false},
		{"cache=none", "", true},
		{"path=/x,cache=bogus", "", true},
	}
	for _, tt := range tests {
		got, err := qemuDrive(tt.spec)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("qemuDrive(%q) = %q, %v; want %q, err %v", tt.spec, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseMode(t *testing.T) {
	for _, s := range []string{"auto", "direct", "nested"} {
		m, err := ParseMode(s)
		if err != nil || m.String() != s {
			t.Errorf("ParseMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseMode("sideways"); err == nil {
		t.Error("ParseMode accepted sideways")
	}
}

func TestConsoleMarkers(t *testing.T) {
	var out strings.Builder
	c := newConsole(&out, time.Now())
	in := "\x1bc\x1b[2Jflushvm-l1: kernel 6.1.0-56-amd64, 2 CPUs, 1965 MiB memory, uptime 4.82 s at /init\r\n" +
		"flushvm-l1: start run 0 at uptime 4.98 s\r\nL2 says hi\r\n" +
		"flushvm-l1: end run 0, max RSS 40960 KiB\r\nflushvm-l1: start run 1 at uptime 9 s\r\npartial"
	for _, chunk := range []string{in[:7], in[7:60], in[60:]} {
		if _, err := c.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	c.flush()
	if strings.Contains(out.String(), "\r") {
		t.Error("carriage returns were passed through")
	}
	if boot, up := c.l1Boot(); boot == 0 || up != "4.82 s" {
		t.Errorf("l1Boot = %v, %q", boot, up)
	}
	if _, _, rss := c.runTimes(0); rss != 40960 {
		t.Errorf("run 0 RSS %d KiB, want 40960", rss)
	}
	if start, _, _ := c.runTimes(1); start == 0 {
		t.Error("run 1 start not seen")
	}
	if _, _, rss := c.runTimes(2); rss != 0 {
		t.Errorf("run 2 never started, RSS %d", rss)
	}
	if c.tail() != "partial" || !strings.HasSuffix(c.recent(), "L2 says hi\nflushvm-l1: end run 0, max RSS 40960 KiB\nflushvm-l1: start run 1 at uptime 9 s\npartial") {
		t.Errorf("tail %q, recent %q", c.tail(), c.recent())
	}
}

// TestStalled checks when the harness calls L1 stuck: no /init within
// l1BootBound, or a run going on past its own bound plus l1RunSlack
// (L1's init stops it at its bound, so only a stuck L1 lets it run on).
func TestStalled(t *testing.T) {
	min := time.Minute
	tests := []struct {
		name         string
		boot         time.Duration
		starts, ends []time.Duration
		timeouts     []time.Duration
		now          time.Duration
		stuck        bool
	}{
		{"booting", 0, nil, nil, []time.Duration{4 * min}, 3 * min, false},
		{"no /init", 0, nil, nil, []time.Duration{4 * min}, 5 * min, true},
		{"run within its bound", 10 * time.Second, []time.Duration{20 * time.Second}, nil, []time.Duration{4 * min}, 5 * min, false},
		{"run past bound and slack", 10 * time.Second, []time.Duration{20 * time.Second}, nil, []time.Duration{4 * min}, 7 * min, true},
		{"run ended", 10 * time.Second, []time.Duration{20 * time.Second}, []time.Duration{min}, []time.Duration{4 * min}, 30 * min, false},
		{"unbounded run", 10 * time.Second, []time.Duration{20 * time.Second}, nil, []time.Duration{0}, 30 * min, false},
		{"second run stuck", 10 * time.Second, []time.Duration{20 * time.Second, 2 * min}, []time.Duration{min}, []time.Duration{4 * min, 4 * min}, 9 * min, true},
	}
	for _, tc := range tests {
		c := &console{boot: tc.boot, starts: tc.starts, ends: tc.ends}
		why, stuck := c.stalled(tc.timeouts, tc.now)
		if stuck != tc.stuck {
			t.Errorf("%s: stalled = %v (%q), want %v", tc.name, stuck, why, tc.stuck)
		}
	}
}

// TestStalledOnStuckVCPU checks that flushvm's watchdog line for a vCPU
// that a signal does not bring back from KVM_RUN ends the session at once,
// long before the run's bound, and that the kick line alone does not.
func TestStalledOnStuckVCPU(t *testing.T) {
	c := newConsole(io.Discard, time.Now())
	bounds := []time.Duration{4 * time.Minute}
	io.WriteString(c, "flushvm-l1: kernel 6.1.0, 2 CPUs, uptime 4.01 s at /init\r\nflushvm-l1: start run 0 at uptime 4.1 s\r\n")
	io.WriteString(c, protocol.WatchdogKicked+"0: no exit for at least 15s with vectors [35 236] requested; kicked it (LAPIC ID 0x0)\r\n")
	if why, stuck := c.stalled(bounds, time.Minute); stuck {
		t.Fatalf("a kick alone stalled the session: %s", why)
	}
	io.WriteString(c, protocol.FormatWatchdogStuck(0, time.Minute)+"\r\n")
	why, stuck := c.stalled(bounds, 70*time.Second)
	if !stuck || !strings.Contains(why, "has not left KVM_RUN") {
		t.Errorf("stalled = %v (%q), want the stuck vCPU named", stuck, why)
	}
}

// TestStalledSilentCampaign checks that a crashtest run (no Timeout of its
// own) that prints nothing for longer than its silence bound stops the
// session, and that one printing lines does not.
func TestStalledSilentCampaign(t *testing.T) {
	runs := []Run{{Subcommand: SubCrashtest, Args: []string{"--boot-timeout", "2m"}}, {Args: []string{"--kernel", "k"}}}
	ss := runSilences(runs)
	if ss[0] != 6*time.Minute || ss[1] != 0 {
		t.Fatalf("silences %v, want [6m 0]", ss)
	}
	if d := runSilences([]Run{{Subcommand: SubCrashtest}})[0]; d != 12*time.Minute {
		t.Errorf("default campaign silence %v, want 12m", d)
	}
	tests := []struct {
		name     string
		lastLine time.Duration
		now      time.Duration
		stuck    bool
	}{
		{"printing", 9 * time.Minute, 10 * time.Minute, false},
		{"silent within bound", 0, 6 * time.Minute, false},
		{"silent past bound", 2 * time.Minute, 9 * time.Minute, true},
	}
	for _, tc := range tests {
		c := &console{boot: time.Second, starts: []time.Duration{10 * time.Second}, silences: ss, lastLine: tc.lastLine}
		why, stuck := c.stalled([]time.Duration{0, 0}, tc.now)
		if stuck != tc.stuck {
			t.Errorf("%s: stalled = %v (%q), want %v", tc.name, stuck, why, tc.stuck)
		}
	}
}

// TestDiskSpecPath checks that the harness reads a SPEC's path and
// read-only flag as flushvm does, in every boolean spelling.
func TestDiskSpecPath(t *testing.T) {
	tests := []struct {
		spec     string
		path     string
		readonly bool
	}{
		{"path=/a.img", "/a.img", false},
		{"path=/a.img,readonly=on", "/a.img", true},
		{"file=/a.img,readonly=true", "/a.img", true},
		{"path=/a,,b.img,readonly=yes", "/a,b.img", true},
		{"path=/a.img,readonly=off", "/a.img", false},
		{"pathh=/a.img", "", false},
	}
	for _, tc := range tests {
		if p, ro := diskSpecPath(tc.spec); p != tc.path || ro != tc.readonly {
			t.Errorf("diskSpecPath(%q) = %q, %v; want %q, %v", tc.spec, p, ro, tc.path, tc.readonly)
		}
	}
}

// TestStalledHeartbeat checks that an L1 whose heartbeat file stops
// changing for longer than l1BeatBound stops the session with its last
// snapshots shown, and that one still rewriting it, or still booting, does
// not.
func TestStalledHeartbeat(t *testing.T) {
	sec := time.Second
	tests := []struct {
		name   string
		boot   time.Duration
		writes []time.Duration // when L1 rewrote the file, in session time
		now    time.Duration
		stuck  bool
	}{
		{"booting, no file", 0, nil, 5 * time.Minute / 2, false},
		{"booted, no file within bound", 10 * sec, nil, 90 * sec, false},
		{"booted, no file past bound", 10 * sec, nil, 110 * sec, true},
		{"beating", 10 * sec, []time.Duration{20 * sec, 30 * sec, 200 * sec}, 205 * sec, false},
		{"stopped within bound", 10 * sec, []time.Duration{20 * sec, 30 * sec}, 110 * sec, false},
		{"stopped past bound", 10 * sec, []time.Duration{20 * sec, 30 * sec}, 130 * sec, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			c := newConsole(&out, time.Now())
			c.boot = tc.boot
			c.beatPath = filepath.Join(t.TempDir(), "heartbeat")
			for i, at := range tc.writes {
				snap := "uptime " + time.Duration(i).String() + ", run 0, load 1\n1234/1235 flushvm R ticks 9 cpu 1 wchan -\n"
				if err := os.WriteFile(c.beatPath, []byte(snap), 0o644); err != nil {
					t.Fatal(err)
				}
				c.readBeat(at)
				c.readBeat(at + 5*sec) // unchanged: not a beat
			}
			why, stuck := c.stalled(nil, tc.now)
			if stuck != tc.stuck {
				t.Fatalf("stalled = %v (%q), want %v", stuck, why, tc.stuck)
			}
			if stuck && len(tc.writes) > 0 && (!strings.Contains(why, "heartbeat") || !strings.Contains(out.String(), "1234/1235 flushvm R") ||
				!strings.Contains(c.recent(), "L1 heartbeat 2 of 2: 1234/1235 flushvm R")) {
				t.Errorf("stall %q does not show the last snapshot; console:\n%s", why, out.String())
			}
		})
	}
}

func TestL1Append(t *testing.T) {
	const base = "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off unknown_nmi_panic=1 panic_print=0x40"
	tests := []struct{ session, env, want string }{
		{"", "", base},
		{"kvm_amd.npt=0", "", base + " kvm_amd.npt=0"},
		{"", " flushvm.l1_hold_vm=0 ", base + " flushvm.l1_hold_vm=0"},
		{"kvm_amd.vgif=0", "flushvm.l1_hold_vm=0", base + " kvm_amd.vgif=0 flushvm.l1_hold_vm=0"},
	}
	for _, tt := range tests {
		if got := l1Append(tt.session, tt.env); got != tt.want {
			t.Errorf("l1Append(%q, %q) = %q, want %q", tt.session, tt.env, got, tt.want)
		}
	}
}
