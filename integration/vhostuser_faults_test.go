package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/host/initramfs"
	"github.com/flushvm/flushvm/protocol"
)

// faultScript runs the fsync-error scenarios on raw disks, 4 KiB record N
// at byte N*4096, written through the guest's page cache and made durable
// with fsync (dd conv=fsync: writeback, then a FLUSH):
//
//   - record 1, a failed FLUSH: the write reached the disk, its FLUSH
//     fails once; the program retries the fsync, which succeeds and this
//     time syncs: the record is on the image (an injected flush failure
//     loses nothing by itself);
//   - record 2, the fsyncgate mistake: its fsync fails; the program retries
//     the fsync (a new fd, the error already reported once) and, when that
//     succeeds, acknowledges;
//   - record 3, the correct handling: the failed fsync is fatal, nothing is
//     acknowledged;
//   - record 4, also correct: the program writes the record again and
//     fsyncs, and acknowledges when that succeeds;
//   - record 5, a lying disk: the write is dropped and acknowledged;
//   - record 6 on vdb (werror=stop): the write fails, the backend holds it
//     until the test POSTs /resume, then it succeeds.
const faultScript = `#!/bin/sh
rec() { yes "rec-$1" | head -c 4096 > /tmp/r; }
put() { dd if=/tmp/r of=$2 bs=4096 seek=$1 count=1 conv=notrunc,fsync 2>/dev/null; }
rec 1
if put 1 /dev/vda; then echo "FG-ACK 1"; else
	echo "FG record 1: fsync failed; retrying the fsync"
	dd if=/dev/null of=/dev/vda count=0 conv=notrunc,fsync 2>/dev/null && echo "FG-ACK 1"
fi
rec 2
if put 2 /dev/vda; then echo "FG-ACK 2"; else
	echo "FG record 2: fsync failed; retrying the fsync"
	dd if=/dev/null of=/dev/vda count=0 conv=notrunc,fsync 2>/dev/null && echo "FG-ACK 2"
fi
rec 3
if put 3 /dev/vda; then echo "FG-ACK 3"; else echo "FG record 3: fsync failed: fatal, not acknowledged"; fi
rec 4
if put 4 /dev/vda; then echo "FG-ACK 4"; else
	echo "FG record 4: fsync failed; writing the record again"
	put 4 /dev/vda && echo "FG-ACK 4"
fi
rec 5
put 5 /dev/vda && echo "FG-ACK 5"
rec 6
put 6 /dev/vdb && echo "FG-ACK vdb 6"
echo FG-DONE
`

// faultRulesA fail the first flush (record 1's), records 2, 3 and 4 once
// each, and drop record 5.
const faultRulesA = `# fsync-error scenarios (integration test)
flush nth=1 eio once
write sectors=16-23 eio once
write sectors=24-31 eio once
write sectors=32-39 eio once
write sectors=40-47 drop once
`

var fgAckRE = regexp.MustCompile(`(?m)^FG-ACK (\d+)\r?$`)

// fgBackend is one `flushvm vhost-user-blk` of the test.
type fgBackend struct {
	cmd        *exec.Cmd
	img, sock  string
	stats, api string
	stderr     syncBuffer
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startFaultBackend starts a backend for a fresh 16 MiB image in dir with
// the SPEC options opts and --api.
func startFaultBackend(ctx context.Context, t *testing.T, flushvm, dir, name, opts string) *fgBackend {
	t.Helper()
	b := &fgBackend{img: filepath.Join(dir, name+".img"), sock: filepath.Join(dir, name+".sock"),
		stats: filepath.Join(dir, name+".stats.json"), api: filepath.Join(dir, name+".api")}
	if err := os.WriteFile(b.img, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	b.cmd = exec.CommandContext(ctx, flushvm, "vhost-user-blk", "--socket", b.sock, "--disk", "path="+b.img+opts,
		"--stats", b.stats, "--api", b.api, "--seed", "1")
	b.cmd.Stderr = &b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.cmd.Process.Kill(); b.cmd.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(b.api); err == nil {
			return b
		}
		if i == 200 {
			t.Fatalf("backend %s did not start: %s", name, b.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// call sends a request to the backend's API and decodes its JSON answer.
func (b *fgBackend) call(t *testing.T, method, path string, out any) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://flushvm"+path, nil)
	resp, err := unixHTTPClient(b.api).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("%s %s: %v: %s", method, path, err, body)
	}
}

// TestVhostUserBlkFaultsQEMU runs the fsync-error scenarios (faultScript)
// in a Linux guest under QEMU TCG with two flushvm vhost-user-blk disks:
// vda with fault rules (werror=report), vdb with a rule and werror=stop.
// The checker (every acknowledged record on the image) catches the
// fsyncgate retry and the dropped write and nothing else; flushvm's
// --stats names exactly those losses (and the record whose failure the
// guest treated as fatal); the held write on vdb completes after POST
// /resume and is on the image.
func TestVhostUserBlkFaultsQEMU(t *testing.T) {
	a := vhuPrepare(t)
	dir := t.TempDir()
	rulesA, rulesB := filepath.Join(dir, "a.rules"), filepath.Join(dir, "b.rules")
	os.WriteFile(rulesA, []byte(faultRulesA), 0o644)
	os.WriteFile(rulesB, []byte("write sectors=48-55 eio once\n"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	da := startFaultBackend(ctx, t, a.flushvm, dir, "a", ",cache=writeback,faults="+rulesA)
	db := startFaultBackend(ctx, t, a.flushvm, dir, "b", ",cache=writeback,faults="+rulesB+",werror=stop")
	x := initramfs.Extra()
	x.Bytes("/run.sh", []byte(faultScript), 0o755)
	initrd, err := initramfs.Append(a.cache, a.base, x)
	if err != nil {
		t.Fatal(err)
	}
	q := exec.CommandContext(ctx, "nice", vhuQEMUArgs(a.kernel, initrd, vhuSocket{path: da.sock, queues: 1}, vhuSocket{path: db.sock, queues: 1})...)
	var console syncBuffer
	q.Stdout, q.Stderr = &console, &console
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	qdone := make(chan error, 1)
	go func() { qdone <- q.Wait() }()
	resumeHeld(t, db, qdone, &console)
	if err := <-qdone; err != nil {
		t.Fatalf("qemu: %v; console:\n%s", err, console.String())
	}
	for _, b := range []*fgBackend{da, db} {
		if err := b.cmd.Wait(); err != nil {
			t.Fatalf("backend %s: %v\n%s", b.img, err, b.stderr.String())
		}
	}
	out := console.String()
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "FG") || strings.Contains(l, "error") {
			t.Logf("guest: %s", strings.TrimSpace(l))
		}
	}
	if !strings.Contains(out, "FG-DONE") {
		t.Fatalf("the guest did not finish its scenarios; console:\n%s", out)
	}
	checkFaultScenarios(t, out, da, db)
}

// resumeHeld waits for backend b to say it holds a request, checks the
// API agrees, and resumes it.
func resumeHeld(t *testing.T, b *fgBackend, qdone chan error, console *syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(4 * time.Minute)
	for !strings.Contains(b.stderr.String(), protocol.ErrorStopPrefix) {
		select {
		case err := <-qdone:
			t.Fatalf("the guest ended (%v) and vdb never held a request; console:\n%s\nbackend:\n%s", err, console.String(), b.stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("vdb never held a request; console:\n%s", console.String())
		}
	}
	t.Logf("vdb: %s", strings.TrimSpace(b.stderr.String()))
	var st disk.Stats
	b.call(t, "GET", "/stats", &st)
	if st.Disks[0].Held != 1 {
		t.Fatalf("GET /stats: held %d, want 1", st.Disks[0].Held)
	}
	if strings.Contains(console.String(), "FG-ACK vdb") {
		t.Fatal("the guest acknowledged a held write")
	}
	var r map[string]int
	b.call(t, "POST", "/resume", &r)
	if r["resumed"] != 1 {
		t.Fatalf("POST /resume: %v", r)
	}
}

// checkFaultScenarios is the checker: every acknowledged record must be on
// its image. It must catch records 2 and 5 on vda, and only them, and
// flushvm's account must name the same sectors.
func checkFaultScenarios(t *testing.T, out string, da, db *fgBackend) {
	t.Helper()
	img, _ := os.ReadFile(da.img)
	var lost []int
	acked := map[int]bool{}
	for _, m := range fgAckRE.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		acked[n] = true
		if !bytes.Equal(img[n*4096:(n+1)*4096], record(n)) {
			lost = append(lost, n)
		}
	}
	t.Logf("acknowledged %v; the checker found lost: %v", acked, lost)
	if fmt.Sprint(lost) != "[2 5]" || !acked[1] || !acked[4] || acked[3] {
		t.Errorf("lost %v (want [2 5]: the fsyncgate retry and the dropped write), acked %v (want 1 and 4, not 3); console:\n%s", lost, acked, out)
	}
	var doc disk.Stats
	b, _ := os.ReadFile(da.stats)
	if err := json.Unmarshal(b, &doc); err != nil || doc.Disks[0].Faults == nil {
		t.Fatalf("vda --stats without faults: %v\n%s", err, b)
	}
	var losses []string
	for _, l := range doc.Disks[0].Faults.Losses {
		losses = append(losses, fmt.Sprintf("%d-%d %s", l.First, l.Last, l.How))
	}
	want := "[16-23 failed-then-flushed 24-31 failed-then-flushed 40-47 dropped]"
	if fmt.Sprint(losses) != want {
		t.Errorf("vda losses %v, want %s", losses, want)
	}
	for i, r := range doc.Disks[0].Faults.Rules {
		t.Logf("vda rule %d %q: matched %d, fired %d", i, r.Rule, r.Matched, r.Fired)
		if r.Fired != 1 {
			t.Errorf("rule %q fired %d times, want 1", r.Rule, r.Fired)
		}
	}
	if !strings.Contains(out, "FG record 1: fsync failed") {
		t.Error("the failed FLUSH did not fail record 1's fsync")
	}
	imgB, _ := os.ReadFile(db.img)
	if !strings.Contains(out, "FG-ACK vdb 6") || !bytes.Equal(imgB[6*4096:7*4096], record(6)) {
		t.Errorf("the held write on vdb did not complete after /resume, or is not on the image")
	}
	checkHeldStats(t, db)
}

// checkHeldStats checks vdb's --stats: one stop, nothing held, no error.
func checkHeldStats(t *testing.T, db *fgBackend) {
	t.Helper()
	var doc disk.Stats
	b, _ := os.ReadFile(db.stats)
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	s := doc.Disks[0]
	if s.ErrorStops != 1 || s.Held != 0 || s.Errors != 0 || s.Faults == nil || s.Faults.Rules[0].Fired != 1 {
		t.Errorf("vdb stats: stops %d held %d errors %d faults %+v", s.ErrorStops, s.Held, s.Errors, s.Faults)
	}
}

// unixHTTPClient is an HTTP client that talks to the unix socket path.
func unixHTTPClient(path string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}
