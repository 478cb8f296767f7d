package protocol

// The crash-state check protocol of the crash-test engine (flushvm
// crashtest, systematic mode). One checker boot checks a batch of crash
// states on one disk:
//
//   - The host attaches the crash disk as /dev/vda with the SPEC key
//     crashstates=FILE (the batch's states, over a read-only base image)
//     and the job disk (workload.go) as /dev/vdb: the checker's command,
//     the acknowledged keys, and one line "state I N" per state of the
//     batch, I counting from 0, N the keys state I must keep.
//   - For each state I in turn, the guest prints CrashCheckNext I on the
//     console. flushvm handles the line on the vCPU that printed it, before
//     the guest's write instruction returns: the crash disk then shows
//     state I (the guest's earlier writes to it are dropped) and its
//     virtio-blk serial reads CrashStateSerial(I). The guest polls the
//     serial until it does, drops its cached blocks of /dev/vda, checks the
//     state (mount, the workload's checker, umount, e2fsck -fn), and
//     prints the state's lines between StateBegin I and StateEnd I.
//
// Console lines:
//
//	flushvm-crashcheck: next I          the guest asks for state I
//	flushvm-check: state I begin        the check of state I starts
//	flushvm-check: state I end status N state I's verdict: 0 passed, 1 failed
//
// Between a state's begin and end lines come the check mode's lines
// (ParseCheckLine reads them).

import (
	"bytes"
	"strconv"
	"strings"
)

// CrashCheckNext starts the line a checker guest prints to ask for the
// next crash state: "flushvm-crashcheck: next I".
const CrashCheckNext = "flushvm-crashcheck: next "

// FormatCrashCheckNext is the line asking for state i (without newline).
func FormatCrashCheckNext(i int) string { return CrashCheckNext + strconv.Itoa(i) }

// ParseCrashCheckNext reads one console line (with or without its line
// end) as a request for a crash state and returns the state's index.
func ParseCrashCheckNext(line []byte) (int, bool) {
	rest, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte(CrashCheckNext))
	if !ok || len(rest) == 0 || len(rest) > 9 {
		return 0, false
	}
	n := 0
	for _, c := range rest {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// CrashStateSerial is the virtio-blk serial of a crash disk while it
// shows state i (at most 20 bytes, the virtio-blk limit).
func CrashStateSerial(i int) string { return "crashstate-" + strconv.Itoa(i) }

// CrashStateNoneSerial is the serial of a crash disk before the guest
// asked for a state (it then reads as its base image).
const CrashStateNoneSerial = "crashstate-none"

// CrashStateErrorSerial is the serial of a crash disk (SPEC crashstates=)
// after the guest asked for a state flushvm could not build (an index past
// the batch, a state its write log cannot back). Until the guest asks for
// another state the disk then fails every read and write, so a checker
// that does not wait for CrashStateSerial(I) checks nothing rather than the
// wrong disk.
const CrashStateErrorSerial = "crashstate-error"

// FormatStateBegin is the line before state i's check lines.
func FormatStateBegin(i int) string { return CheckPrefix + ": state " + strconv.Itoa(i) + " begin" }

// FormatStateEnd is the line after state i's check lines: status 0 when
// the state passed, 1 when it did not.
func FormatStateEnd(i, status int) string {
	return CheckPrefix + ": state " + strconv.Itoa(i) + " end status " + strconv.Itoa(status)
}

// StateLine is a parsed state begin or end line.
type StateLine struct {
	// Index is the state's index in its batch.
	Index int
	// End is set for an end line, which carries Status.
	End    bool
	Status int
}

// ParseStateLine reads one console line as a state begin or end line.
func ParseStateLine(line string) (StateLine, bool) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), CheckPrefix+": state ")
	if !ok {
		return StateLine{}, false
	}
	f := strings.Fields(rest)
	i, err := strconv.Atoi(f[0])
	if err != nil || i < 0 {
		return StateLine{}, false
	}
	switch {
	case len(f) == 2 && f[1] == "begin":
		return StateLine{Index: i}, true
	case len(f) == 4 && f[1] == "end" && f[2] == "status":
		st, err := strconv.Atoi(f[3])
		if err != nil {
			return StateLine{}, false
		}
		return StateLine{Index: i, End: true, Status: st}, true
	}
	return StateLine{}, false
}
