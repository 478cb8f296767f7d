package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/flushvm/flushvm/guest/internal/pid1"
	"github.com/flushvm/flushvm/protocol"
)

// beater rewrites the job's heartbeat file every
// protocol.L1HeartbeatInterval, and whenever a run starts, with a snapshot
// of L1. The file goes over 9p, so the host sees it change only while L1's
// kernel and init still run: a file that stops changing is an L1 that
// stopped, and its last snapshot shows what each thread of the runs was
// doing then.
type beater struct {
	run  atomic.Int32 // the run under way, -1 before the first
	wake chan struct{}
}

func newBeater() *beater {
	b := &beater{wake: make(chan struct{}, 1)}
	b.run.Store(-1)
	return b
}

// start notes that run i started and rewrites the file at once.
func (b *beater) start(i int) {
	b.run.Store(int32(i))
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// beat writes the file until ctx ends.
func (b *beater) beat(ctx context.Context) {
	path := protocol.L1HeartbeatFile(protocol.L1JobMount)
	t := time.NewTicker(protocol.L1HeartbeatInterval)
	defer t.Stop()
	for {
		if err := os.WriteFile(path, []byte(snapshot(int(b.run.Load()))), 0o644); err != nil {
			pid1.Logf(prefix, "heartbeat: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-b.wake:
		}
	}
}

// maxThreads bounds the threads a snapshot lists.
const maxThreads = 64

// snapshot describes L1 now: uptime, load and run, then one line per thread
// of every user process but init: pid/tid, name, state, CPU ticks, the
// CPU it last ran on, the kernel function it waits in (wchan) and, for a
// thread running or in uninterruptible sleep, the top of its kernel stack.
func snapshot(run int) string {
	var b strings.Builder
	up, _ := pid1.Uptime()
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&b, "uptime %.2f s, run %d, load %s\n", up.Seconds(), run, strings.TrimSpace(string(load)))
	n := 0
	for _, p := range userPIDs() {
		pid := strconv.Itoa(p)
		tids, _ := filepath.Glob(filepath.Join("/proc", pid, "task", "[0-9]*"))
		for _, task := range tids {
			if n == maxThreads {
				b.WriteString("...\n")
				return b.String()
			}
			if line, ok := threadLine(pid, task); ok {
				b.WriteString(line + "\n")
				n++
			}
		}
	}
	return b.String()
}

// userPIDs lists the processes other than init that are not kernel threads
// (those have an empty command line), in pid order.
func userPIDs() []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == 1 {
			continue
		}
		if cmd, err := os.ReadFile(filepath.Join(d, "cmdline")); err == nil && len(cmd) > 0 {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids
}

// threadLine describes one thread (task is its /proc/PID/task/TID).
func threadLine(pid, task string) (string, bool) {
	stat, err := os.ReadFile(filepath.Join(task, "stat"))
	if err != nil {
		return "", false
	}
	name, state, ticks, cpu, ok := parseStat(string(stat))
	if !ok {
		return "", false
	}
	wchan, _ := os.ReadFile(filepath.Join(task, "wchan"))
	line := fmt.Sprintf("%s/%s %s %s ticks %d cpu %d wchan %s", pid, filepath.Base(task), name, state, ticks, cpu, orDash(string(wchan)))
	if state == "R" || state == "D" {
		if stack := stackTop(filepath.Join(task, "stack"), 4); stack != "" {
			line += " stack " + stack
		}
	}
	return line, true
}

// parseStat reads a /proc/.../stat line: the name, the state, utime+stime
// in clock ticks and the CPU the thread last ran on.
func parseStat(s string) (name, state string, ticks uint64, cpu int, ok bool) {
	open, shut := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || shut < open {
		return "", "", 0, 0, false
	}
	f := strings.Fields(s[shut+1:])
	// f[0] is field 3 (state); utime, stime and processor are fields 14,
	// 15 and 39.
	if len(f) < 37 {
		return "", "", 0, 0, false
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	cpu, err3 := strconv.Atoi(f[36])
	if err1 != nil || err2 != nil || err3 != nil {
		return "", "", 0, 0, false
	}
	return s[open+1 : shut], f[0], ut + st, cpu, true
}

// stackTop returns the first n frames of a kernel stack file, without
// their offsets, joined by "<".
func stackTop(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var frames []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		// "[<0>] func+0x4a/0xb0 [module]"
		f := strings.Fields(l)
		if len(f) < 2 || len(frames) == n {
			break
		}
		fn, _, _ := strings.Cut(f[1], "+")
		frames = append(frames, fn)
	}
	return strings.Join(frames, "<")
}

func orDash(s string) string {
	if s = strings.TrimSpace(s); s == "" || s == "0" {
		return "-"
	}
	return s
}
