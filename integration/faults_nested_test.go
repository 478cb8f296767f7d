package integration

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/host/harness"
	"github.com/flushvm/flushvm/host/initramfs"
	"github.com/flushvm/flushvm/protocol"
)

// enospcScript runs fsyncstress on the ext4 disk until the fault rule
// fails a write with ENOSPC (the guest sees EIO), then checks, in the
// same boot, that the file system is still consistent: it remounts
// (replaying the journal), checks every acknowledged record with
// fsyncstress -check, unmounts and runs e2fsck -fn.
const enospcScript = `mount -t ext4 /dev/vda /mnt || exit 20
/bin/fsyncstress -dir /mnt -ack -writers 4 -records 100 >/tmp/acks 2>/tmp/err
st=$?
cat /tmp/acks /tmp/err
echo "ENOSPC workload status $st"
umount /mnt
mount -t ext4 /dev/vda /mnt || { echo "ENOSPC remount failed"; exit 21; }
acked=""
for w in 0 1 2 3; do acked="$acked${acked:+:}$(grep -c "^ACK fsyncstress $w " /tmp/acks)"; done
/bin/fsyncstress -check -dir /mnt -writers 4 -records 100 -acked $acked
echo "ENOSPC check status $?"
umount /mnt
e2fsck -fn /dev/vda >/tmp/fsck 2>&1
echo "ENOSPC fsck status $?"
`

// dropScript creates files on the ext4 disk whose inode table writes the
// fault rule drops, and unmounts it cleanly: the journal is checkpointed
// (its in-place writes dropped) and marked clean.
const dropScript = `mount -t ext4 /dev/vda /mnt || exit 20
for i in $(seq 1 32); do echo "file $i" > /mnt/f$i; done
sync
umount /mnt && echo "DROP unmounted"
`

// stopGuestScript writes record 6 of the raw disk and fsyncs it; the
// fault rule fails that write with ENOSPC and werror=enospc stops the VM.
const stopGuestScript = `yes rec-6 | head -c 4096 > /tmp/r
echo "STOP writing record 6"
dd if=/tmp/r of=/dev/vda bs=4096 seek=6 count=1 conv=notrunc,fsync 2>/dev/null && echo "STOP ACK 6"
`

// stopCommand is the shell command that runs flushvm with werror=enospc
// and the apiresume helper beside it; paths are where the files are (in
// L1 or on the host). The helper's line goes to a file, printed once
// flushvm ended: printed at once it could land inside a guest console
// line ("STOP AC" "APIRESUME ..." "K 6", seen in a CI run).
func stopCommand(flushvm, kernelPath, initrd, helper, dir string) string {
	return fmt.Sprintf(`set -u
d=%[5]s
mkdir -p $d && rm -f $d/d.img && truncate -s 16M $d/d.img
echo 'write sectors=48-55 enospc once' > $d/f.rules
%[1]s run --kernel %[2]s --initrd %[3]s --append '%[6]s' --disk path=$d/d.img,cache=writeback,faults=$d/f.rules,werror=enospc \
	--api $d/api.sock --stats $d/stats.json --watchdog 60s 2>$d/err &
pid=$!
%[4]s $d/api.sock $d/err > $d/api.out
wait $pid
st=$?
cat $d/api.out $d/err
echo "STOP stats $(tr -d '\n' < $d/stats.json)"
echo "STOP record $(dd if=$d/d.img bs=4096 skip=6 count=1 2>/dev/null | md5sum)"
echo "STOP flushvm status $st"
`, flushvm, kernelPath, initrd, helper, dir, cmdline("script"))
}

// TestDebianLinuxFaultsNested runs three fault scenarios through Linux's
// virtio-blk driver on flushvm's PCI transport (nested where it must):
//
//   - ENOSPC mid-run: fsyncstress on ext4 reports the error, and the file
//     system stays consistent: every acknowledged record is there after a
//     remount and e2fsck finds nothing;
//   - lost metadata writes: the inode table writes of group 0 are dropped
//     and acknowledged; ext4 unmounts cleanly, and e2fsck on the host
//     reports the damage while flushvm's --stats lists the drops;
//   - werror=enospc: the failed write pauses the VM, the held request
//     stays held, POST /resume retries it, and the record is on the image.
func TestDebianLinuxFaultsNested(t *testing.T) {
	a := prepare(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	enospcImg, dropImg := filepath.Join(dir, "enospc.img"), filepath.Join(dir, "drop.img")
	for _, p := range []string{enospcImg, dropImg} {
		if err := harness.FreshExt4(ctx, p, "64M"); err != nil {
			t.Fatal(err)
		}
	}
	enospcRules := writeRules(t, dir, "enospc.rules", "write nth=150 enospc")
	dropRules := writeRules(t, dir, "drop.rules", inodeTableRule(t, dropImg))
	enospcStats, dropStats := filepath.Join(dir, "enospc.json"), filepath.Join(dir, "drop.json")
	runs := []harness.Run{
		{Args: faultRunArgs(t, a, enospcScript, "path="+enospcImg+",faults="+enospcRules, enospcStats), Timeout: 4 * time.Minute},
		{Args: faultRunArgs(t, a, dropScript, "path="+dropImg+",faults="+dropRules, dropStats), Timeout: 4 * time.Minute},
	}
	stop := stopRun(ctx, t, a, dir)
	opts := harness.Options{Stdout: consoleWriter{}, Log: testLog{t}, Timeout: 15 * time.Minute}
	if stop.files != nil {
		runs = append(runs, harness.Run{Command: []string{"/bin/sh", "-c", stop.command}, Rerun: true, Timeout: 4 * time.Minute})
		opts.JobFiles = stop.files
	}
	s, err := harness.Execute(ctx, opts, runs...)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Logf("session: flushvm ran %s; wall %.1f s", s.Mode, s.Wall.Seconds())
	for i, r := range s.Results {
		// A slow session is then traced to its run (one took 278 s
		// where 70 is usual, with no retry).
		t.Logf("run %d took %.1f s", i, r.Duration.Seconds())
	}
	t.Run("enospc_reported_and_consistent", func(t *testing.T) { checkENOSPC(t, s.Results[0], enospcStats) })
	t.Run("dropped_metadata_found_by_fsck", func(t *testing.T) { checkDrop(t, s.Results[1], dropImg, dropStats) })
	t.Run("werror_enospc_pauses_until_resume", func(t *testing.T) {
		out := stop.direct
		if stop.files != nil {
			out = s.Results[2].Output
		}
		checkStop(t, out)
	})
}

// writeRules writes a rules file.
func writeRules(t *testing.T, dir, name string, rules ...string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(strings.Join(rules, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// faultRunArgs are the flushvm run arguments of a scenario: the test
// guest running script with one disk SPEC and --stats.
func faultRunArgs(t *testing.T, a *harness.Artifacts, script, spec, stats string) []string {
	t.Helper()
	img, err := harness.WithScript(a.Cache, a.Initramfs, script)
	if err != nil {
		t.Fatal(err)
	}
	return []string{"--kernel", a.Vmlinux, "--initrd", img, "--append", cmdline("script"),
		"--disk", spec + ",cache=writeback", "--stats", stats, "--seed", "3"}
}

var inodeTableRE = regexp.MustCompile(`Inode table at (\d+)-(\d+)`)

// inodeTableRule is a rule dropping every write to group 0's inode table
// of the ext4 image (from dumpe2fs).
func inodeTableRule(t *testing.T, img string) string {
	t.Helper()
	out, err := exec.Command("dumpe2fs", img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v\n%s", err, out)
	}
	m := inodeTableRE.FindSubmatch(out)
	bs := regexp.MustCompile(`Block size:\s+(\d+)`).FindSubmatch(out)
	if m == nil || bs == nil {
		t.Fatalf("dumpe2fs shows no inode table or block size:\n%s", out)
	}
	first, _ := strconv.ParseUint(string(m[1]), 10, 64)
	last, _ := strconv.ParseUint(string(m[2]), 10, 64)
	size, _ := strconv.ParseUint(string(bs[1]), 10, 64)
	return fmt.Sprintf("write sectors=%d-%d drop", first*size/512, (last+1)*size/512-1)
}

// stopScenario is the werror=enospc run: in L1 (files, command), or
// already run on this host (direct: its output).
type stopScenario struct {
	command string
	files   map[string]string
	direct  []byte
}

// stopRun prepares the werror=enospc scenario: a command for L1 when the
// harness runs nested, else it runs it here at once.
func stopRun(ctx context.Context, t *testing.T, a *harness.Artifacts, dir string) stopScenario {
	t.Helper()
	initrd, err := harness.WithScript(a.Cache, a.Initramfs, stopGuestScript)
	if err != nil {
		t.Fatal(err)
	}
	helper, err := initramfs.BuildGo(ctx, "./integration/testdata/apiresume")
	if err != nil {
		t.Fatal(err)
	}
	if mode, _ := harness.Detect(); mode == harness.Nested {
		job := protocol.L1JobMount + "/stop/"
		return stopScenario{
			command: stopCommand(protocol.L1JobMount+"/flushvm", job+"kernel", job+"initrd", job+"apiresume", "/tmp/stop"),
			files:   map[string]string{"stop/kernel": a.Vmlinux, "stop/initrd": initrd, "stop/apiresume": helper},
		}
	}
	flushvm, err := initramfs.BuildGo(ctx, "./cmd/flushvm")
	if err != nil {
		t.Fatal(err)
	}
	out, _ := exec.CommandContext(ctx, "/bin/sh", "-c",
		stopCommand(flushvm, a.Vmlinux, initrd, helper, filepath.Join(dir, "stop"))).CombinedOutput()
	return stopScenario{direct: out}
}

var scenarioStatusRE = regexp.MustCompile(`(?m)^(ENOSPC \w+|STOP flushvm) status (\d+)`)

// statuses maps "ENOSPC check" and the like to the status printed.
func statuses(out []byte) map[string]int {
	m := map[string]int{}
	for _, s := range scenarioStatusRE.FindAllSubmatch(out, -1) {
		n, _ := strconv.Atoi(string(s[2]))
		m[string(s[1])] = n
	}
	return m
}

func checkENOSPC(t *testing.T, r harness.Result, stats string) {
	st := statuses(r.Output)
	for _, l := range strings.Split(string(r.Output), "\n") {
		if strings.Contains(l, "error") || strings.HasPrefix(l, "ENOSPC") || strings.HasPrefix(l, "CHECK") {
			t.Logf("guest: %s", strings.TrimSpace(l))
		}
	}
	if st["ENOSPC workload"] == 0 || !bytes.Contains(r.Output, []byte("input/output error")) {
		t.Errorf("the workload did not report the failed write; console:\n%s", r.Output)
	}
	if v, ok := st["ENOSPC check"]; !ok || v != 0 {
		t.Errorf("acknowledged records missing after the ENOSPC; console:\n%s", r.Output)
	}
	if v, ok := st["ENOSPC fsck"]; !ok || v != 0 {
		t.Errorf("e2fsck found the file system inconsistent; console:\n%s", r.Output)
	}
	f := readFaults(t, stats)
	// matched counts every write the rule saw (it goes on counting after
	// its 150th), fired the one it failed.
	if f.Rules[0].Fired != 1 || f.Rules[0].Matched < 150 {
		t.Errorf("rule counters %+v, want matched >= 150, fired 1", f.Rules[0])
	}
	t.Logf("rule %q: matched %d, fired %d", f.Rules[0].Rule, f.Rules[0].Matched, f.Rules[0].Fired)
}

func checkDrop(t *testing.T, r harness.Result, img, stats string) {
	if r.Status != 0 || !bytes.Contains(r.Output, []byte("DROP unmounted")) {
		t.Fatalf("status %d; console:\n%s", r.Status, r.Output)
	}
	out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	head := strings.SplitN(string(out), "\n", 6)
	t.Logf("e2fsck -fn: status %d; it begins:\n%s", code, strings.Join(head[:len(head)-1], "\n"))
	if code&4 == 0 {
		t.Errorf("e2fsck found nothing wrong after the inode table writes were dropped (status %d)", code)
	}
	f := readFaults(t, stats)
	if f.Rules[0].Fired == 0 || len(f.Losses) == 0 || f.Losses[0].How != "dropped" {
		t.Errorf("no dropped write in the account: %+v", f)
	}
	t.Logf("rule %q fired %d times; %d losses listed", f.Rules[0].Rule, f.Rules[0].Fired, len(f.Losses))
}

func checkStop(t *testing.T, out []byte) {
	t.Logf("output:\n%s", out)
	for _, want := range []string{protocol.ErrorStopPrefix + "0: write at sector 48 failed", "VM paused",
		"APIRESUME held=1 still=1 resumed=1", "STOP ACK 6", `"error_stops": 1`, `"held": 0`} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("no %q in the output", want)
		}
	}
	sum := md5.Sum(record(6))
	if !bytes.Contains(out, []byte(fmt.Sprintf("STOP record %x", sum))) {
		t.Errorf("record 6 is not on the image after the resume")
	}
	if st := statuses(out); st["STOP flushvm"] != 0 {
		t.Errorf("flushvm status %d", st["STOP flushvm"])
	}
}

// readFaults reads the first disk's fault account from a --stats file.
func readFaults(t *testing.T, path string) *blk.FaultStats {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc disk.Stats
	if err := json.Unmarshal(b, &doc); err != nil || len(doc.Disks) != 1 || doc.Disks[0].Faults == nil {
		t.Fatalf("--stats without faults: %v\n%s", err, b)
	}
	return doc.Disks[0].Faults
}
