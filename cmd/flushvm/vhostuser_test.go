package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/disk"
)

func TestVhostUserBlkUsage(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no socket", []string{"--disk", "path=" + img}, "--socket PATH is required"},
		{"no disk", []string{"--socket", sock}, "--disk SPEC is required"},
		{"bad spec", []string{"--socket", sock, "--disk", "path=" + img + ",cache=fast"}, "unknown cache mode"},
		{"power cut without powercut=", []string{"--socket", sock, "--disk", "path=" + img, "--power-cut", "writes=3"}, "needs powercut=POLICY"},
		{"missing file", []string{"--socket", sock, "--disk", "path=" + dir + "/nope"}, "no such file"},
		{"queues", []string{"--socket", sock, "--disk", "path=" + img, "--queues", "0"}, "--queues 0"},
		{"queues twice", []string{"--socket", sock, "--disk", "path=" + img + ",queues=2", "--queues", "3"}, "--queues 3 and the SPEC's queues=2 disagree"},
		{"queues in spec", []string{"--socket", sock, "--disk", "path=" + img + ",queues=99"}, `queues="99"`},
		{"queue size", []string{"--socket", sock, "--disk", "path=" + img, "--queue-size", "100"}, "--queue-size 100"},
		{"queue size past uint16", []string{"--socket", sock, "--disk", "path=" + img, "--queue-size", "70000"}, "--queue-size 70000: want a power of two"},
		{"two disks", []string{"--socket", sock, "--disk", "path=" + img, "--disk", "path=" + img}, "--disk given 2 times"},
		{"unknown flag", []string{"--sock", sock}, "unknown flag"},
		{"stray argument", []string{"--socket", sock, "--disk", "path=" + img, "extra"}, "unexpected argument"},
		{"stats dir", []string{"--socket", sock, "--disk", "path=" + img, "--stats", dir + "/no/such/stats.json"}, "does not exist"},
		{"socket over a file", []string{"--socket", img, "--disk", "path=" + img}, "not a socket"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := runVhostUserBlk(tc.args, io.Discard, &stderr); code != exitUsage {
				t.Errorf("exit %d, want %d; stderr %q", code, exitUsage, stderr.String())
			}
			out := stderr.String()
			if !strings.Contains(out, tc.want) || strings.Count(out, "\n") != 1 {
				t.Errorf("stderr %q: want one line containing %q", out, tc.want)
			}
		})
	}
}

// lockedBuffer is a bytes.Buffer safe for the logger and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startVhostUserBlk runs the subcommand in the background and waits until
// it listens.
func startVhostUserBlk(t *testing.T, args []string) (stderr *lockedBuffer, code chan int) {
	t.Helper()
	stderr, code = &lockedBuffer{}, make(chan int, 1)
	go func() { code <- runVhostUserBlk(args, io.Discard, stderr) }()
	for i := 0; !strings.Contains(stderr.String(), "serving"); i++ {
		if i == 200 {
			t.Fatalf("not serving: %s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return stderr, code
}

func waitCode(t *testing.T, code chan int, stderr *lockedBuffer) int {
	t.Helper()
	select {
	case c := <-code:
		return c
	case <-time.After(10 * time.Second):
		t.Fatalf("still running: %s", stderr.String())
		return -1
	}
}

func readStats(t *testing.T, path string) disk.Stats {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc disk.Stats
	if err := json.Unmarshal(b, &doc); err != nil || len(doc.Disks) != 1 {
		t.Fatalf("stats %s: %v", b, err)
	}
	return doc
}

// TestVhostUserBlkSession: a frontend connects, asks for the features and
// leaves; the backend writes --stats and exits 0. A second run ends on a
// malformed message with exit 1, stats still written.
func TestVhostUserBlkSession(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	sock, stats := filepath.Join(dir, "vhu.sock"), filepath.Join(dir, "stats.json")
	args := []string{"--socket", sock, "--disk", "path=" + img + ",cache=unsafe", "--stats", stats}

	for _, hostile := range []bool{false, true} {
		os.Remove(stats)
		stderr, code := startVhostUserBlk(t, args)
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
			t.Fatal(err)
		}
		msg := make([]byte, 12)
		binary.LittleEndian.PutUint32(msg[0:], 1) // GET_FEATURES
		binary.LittleEndian.PutUint32(msg[4:], 1) // version 1
		if hostile {
			binary.LittleEndian.PutUint32(msg[4:], 3) // version 3
		}
		if _, err := unix.Write(fd, msg); err != nil {
			t.Fatal(err)
		}
		if !hostile {
			reply := make([]byte, 20)
			if n, err := unix.Read(fd, reply); err != nil || n != 20 || binary.LittleEndian.Uint64(reply[12:])&(1<<30) == 0 {
				t.Fatalf("GET_FEATURES reply %x (%d bytes, %v)", reply, n, err)
			}
		}
		unix.Close(fd)
		want := exitOK
		if hostile {
			want = exitFailure
		}
		if c := waitCode(t, code, stderr); c != want {
			t.Errorf("hostile=%v: exit %d, want %d; stderr:\n%s", hostile, c, want, stderr.String())
		}
		if hostile && !strings.Contains(stderr.String(), "malformed message") {
			t.Errorf("reason not logged:\n%s", stderr.String())
		}
		if doc := readStats(t, stats); doc.Disks[0].Cache != blk.CacheUnsafe || doc.Disks[0].Path != img {
			t.Errorf("stats %+v", doc)
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("socket file left behind: %v", err)
		}
	}
}

// TestVhostUserBlkSignal: SIGTERM before any frontend came ends the
// command cleanly, with stats.
func TestVhostUserBlkSignal(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	stats := filepath.Join(dir, "stats.json")
	stderr, code := startVhostUserBlk(t, []string{"--socket", filepath.Join(dir, "s"), "--disk", "path=" + img, "--stats", stats})
	// The command's signal.Notify is in place before it logs "serving".
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	if c := waitCode(t, code, stderr); c != exitOK {
		t.Errorf("exit %d after SIGTERM; stderr:\n%s", c, stderr.String())
	}
	readStats(t, stats)
}

// TestVhostUserBlkExclusive: while a backend serves an image on a socket,
// a second backend is refused (exit 2, one line saying what is in use)
// when it names the same image or the same socket, and locking=off lets
// a second opener share the image on purpose.
func TestVhostUserBlkExclusive(t *testing.T) {
	dir := t.TempDir()
	img, other := filepath.Join(dir, "disk.img"), filepath.Join(dir, "other.img")
	for _, p := range []string{img, other} {
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "vhu.sock")
	stderr, code := startVhostUserBlk(t, []string{"--socket", sock, "--disk", "path=" + img})
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"same image", []string{"--socket", filepath.Join(dir, "b.sock"), "--disk", "path=" + img}, "in use: another process"},
		{"same image read-only", []string{"--socket", filepath.Join(dir, "b.sock"), "--disk", "path=" + img + ",readonly=on"}, "in use: another process"},
		{"same socket", []string{"--socket", sock, "--disk", "path=" + other}, "in use by a running backend"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var errb bytes.Buffer
			if c := runVhostUserBlk(tc.args, io.Discard, &errb); c != exitUsage || !strings.Contains(errb.String(), tc.want) ||
				strings.Count(errb.String(), "\n") != 1 {
				t.Errorf("exit %d, stderr %q; want %d and one line with %q", c, errb.String(), exitUsage, tc.want)
			}
		})
	}
	shared, sharedCode := startVhostUserBlk(t, []string{"--socket", filepath.Join(dir, "c.sock"), "--disk", "path=" + img + ",locking=off"})
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	for _, b := range []struct {
		stderr *lockedBuffer
		code   chan int
	}{{stderr, code}, {shared, sharedCode}} {
		if c := waitCode(t, b.code, b.stderr); c != exitOK {
			t.Errorf("exit %d after SIGTERM; stderr:\n%s", c, b.stderr.String())
		}
	}
}
