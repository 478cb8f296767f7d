package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/host/initramfs"
	"github.com/flushvm/flushvm/protocol"
)

// vhuCutScript writes, in round i, 4 KiB blocks i, 100+i and 200+i of
// /pattern.bin to the same blocks of the disk through the page cache, then
// fsyncs the device (writeback and a FLUSH) and acknowledges the round; it
// goes on until the backend's power cut leaves it hanging.
const vhuCutScript = `#!/bin/sh
for i in $(seq 0 99); do
	for b in $i $((100 + i)) $((200 + i)); do
		dd if=/pattern.bin of=/dev/vda bs=4096 count=1 skip=$b seek=$b conv=notrunc 2>/dev/null || exit 1
	done
	dd if=/dev/null of=/dev/vda count=0 conv=notrunc,fsync 2>/dev/null || exit 1
	echo "VHU-ACK $i"
done
echo VHU-WRITES-DONE
`

// TestVhostUserBlkPowerCutQEMU cuts the power of a vhost-user disk under
// a QEMU guest: `flushvm vhost-user-blk` with powercut=random-sectors,
// --power-cut writes=42 (two writes into a round: the policy has unstable writes to decide) and a write log exits 100 with one line saying what
// the cut did; nothing the guest issued after the cut completes (it never
// finishes its loop); every round the guest acknowledged (its blocks
// written, then a flush completed) is on the image; and the printed
// replay command rebuilds the image exactly from the write log.
func TestVhostUserBlkPowerCutQEMU(t *testing.T) {
	a := vhuPrepare(t)
	dir := t.TempDir()
	img, base := filepath.Join(dir, "disk.img"), filepath.Join(dir, "base.img")
	for _, p := range []string{img, base} {
		if err := os.WriteFile(p, make([]byte, 16<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pattern := make([]byte, 300*4096)
	rand.Read(pattern)
	x := initramfs.Extra()
	x.Bytes("/run.sh", []byte(vhuCutScript), 0o755)
	x.Bytes("/pattern.bin", pattern, 0o644)
	initrd, err := initramfs.Append(a.cache, a.base, x)
	if err != nil {
		t.Fatal(err)
	}
	sock, stats, wlog := filepath.Join(dir, "vhu.sock"), filepath.Join(dir, "stats.json"), filepath.Join(dir, "run.wlog")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	be := exec.CommandContext(ctx, a.flushvm, "vhost-user-blk", "--socket", sock,
		"--disk", "path="+img+",cache=writeback,powercut=random-sectors", "--power-cut", "writes=42",
		"--seed", "7", "--write-log", wlog, "--stats", stats)
	be.Stderr = &stderr
	if err := be.Start(); err != nil {
		t.Fatal(err)
	}
	defer be.Process.Kill()
	vhuWaitSocket(t, be, sock, &stderr)
	q := exec.CommandContext(ctx, "nice", vhuQEMUArgs(a.kernel, initrd, vhuSocket{path: sock, queues: 1})...)
	var console bytes.Buffer
	q.Stdout, q.Stderr = &console, &console
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { q.Process.Kill(); q.Wait() }()
	err = be.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != protocol.ExitPowerCut {
		t.Fatalf("backend ended with %v, want exit status %d; stderr:\n%s\nconsole:\n%s", err, protocol.ExitPowerCut, stderr.String(), console.String())
	}
	// The guest is left with a dead disk: give it time to show it never
	// finishes its loop (a completion after the cut would let it go on).
	time.Sleep(3 * time.Second)
	if strings.Contains(console.String(), "VHU-WRITES-DONE") {
		t.Fatalf("the guest finished its writes after the power cut:\n%s", console.String())
	}
	line := stderr.String()
	if !strings.Contains(line, "power cut by --power-cut writes=42: write 42 reached the disk") || !strings.Contains(line, "flushvm replay --log") {
		t.Fatalf("no cut summary on stderr:\n%s", line)
	}
	vhuCheckAcked(t, console.String(), img, pattern)
	vhuCheckReplay(t, a, stats, base, img)
}

// vhuCheckAcked checks that every round the guest acknowledged on its
// console (whole lines only) left its three blocks on the image.
func vhuCheckAcked(t *testing.T, console, img string, pattern []byte) {
	t.Helper()
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	acked := 0
	whole := console[:strings.LastIndexByte(console, '\n')+1]
	for _, l := range strings.Split(whole, "\n") {
		var i int
		if _, err := fmt.Sscanf(strings.TrimSpace(l), "VHU-ACK %d", &i); err != nil || i < 0 || i >= 100 {
			continue
		}
		acked++
		for _, b := range []int{i, 100 + i, 200 + i} {
			if !bytes.Equal(got[b*4096:(b+1)*4096], pattern[b*4096:(b+1)*4096]) {
				t.Errorf("round %d was acknowledged, but block %d is not on the image", i, b)
			}
		}
	}
	if acked == 0 {
		t.Fatalf("the guest acknowledged no round before the cut:\n%s", console)
	}
	t.Logf("%d acknowledged rounds survived the cut", acked)
}

// vhuCheckReplay runs the replay command of the --stats document's power
// cut and checks that it rebuilds img byte for byte from base.
func vhuCheckReplay(t *testing.T, a *vhuArtifacts, stats, base, img string) {
	t.Helper()
	b, err := os.ReadFile(stats)
	if err != nil {
		t.Fatal(err)
	}
	var doc disk.Stats
	if err := json.Unmarshal(b, &doc); err != nil || len(doc.Disks) != 1 || doc.Disks[0].PowerCut == nil {
		t.Fatalf("--stats without the cut: %v\n%s", err, b)
	}
	pc := doc.Disks[0].PowerCut
	if pc.Report == nil || pc.Replay == "" || pc.Error != "" {
		t.Fatalf("power cut %+v", pc)
	}
	out := filepath.Join(filepath.Dir(img), "crash.img")
	args := strings.Fields(strings.NewReplacer("BASE", base, "crash.img", out).Replace(pc.Replay))[1:]
	if o, err := exec.Command(a.flushvm, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", pc.Replay, err, o)
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	replayed, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, replayed) {
		var diff []int
		for b := 0; b < len(got)/4096; b++ {
			if !bytes.Equal(got[b*4096:(b+1)*4096], replayed[b*4096:(b+1)*4096]) {
				diff = append(diff, b)
			}
		}
		rep, _ := json.Marshal(pc.Report)
		rr := filepath.Join(filepath.Dir(img), "replay-report.json")
		exec.Command(a.flushvm, append(args, "--report", rr)...).Run()
		rrb, _ := os.ReadFile(rr)
		t.Errorf("%s rebuilt a different image than the cut left: 4 KiB blocks %v differ; the cut's report: %s; the replay's: %s", pc.Replay, diff, rep, rrb)
	}
	t.Logf("cut: %s; %d unstable writes, %d kept, %d torn, %d lost; flushes completed before it: %d",
		pc.Cause, pc.Report.Unstable, pc.Report.Kept, pc.Report.Torn, pc.Report.Lost, pc.CompletedFlushes)
}
