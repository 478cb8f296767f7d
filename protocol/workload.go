package protocol

// The workload protocol of crash-test campaigns: how any program, built in
// or brought by the user, takes part in `flushvm crashtest`.
//
// A workload is a shell command the guest runs on the file system under
// test (its working directory, also $FLUSHVM_DIR). Each time something it
// wrote is durable (its fsync, fdatasync or COMMIT returned), it prints
// one line on its standard output, which is the guest's console:
//
//	ACK KEY
//
// KEY is any text without control characters, at most MaxAckKey bytes
// (white space inside is kept, around it trimmed). flushvm notes the line
// when the guest prints it (a MARK in the write log), so every crash state
// knows which keys were acknowledged before it.
//
// A checker is a shell command the guest runs on the crashed file system
// after it mounted (replaying its journal), in the same directory. It gets
// the keys the state must keep, one per line in the order they were
// acknowledged, in the file $FLUSHVM_ACKED and on its standard input. It
// exits CheckerIntact when every key is intact, CheckerLost when
// acknowledged data is missing or damaged, and any other status when it
// could not check. It prints "LOST KEY" for each key it found missing and
// may print a summary line "CHECK NAME acked=A lost=L extra=E" (Check),
// which then gives the counts.
//
// The guest learns the commands, and a checker its keys, from the job disk
// (/dev/vdb, read-only, text, padded with newlines to a multiple of 4 KiB
// and at least JobDiskMin bytes) the host attaches to every crash-test boot
// that runs them:
//
//	workload CMD      the workload's command (one line)
//	checker CMD       the checker's command (one line)
//	ack KEY           every acknowledged key, in log order
//	state I N         state I (from 0, in order) must keep the first N keys

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Environment variables of workload and checker commands.
const (
	// EnvDir names the mounted file system under test (also the
	// command's working directory).
	EnvDir = "FLUSHVM_DIR"
	// EnvAcked names the file with the keys a checker must find intact.
	EnvAcked = "FLUSHVM_ACKED"
)

// WorkloadGuestDir is where `flushvm crashtest --workload-dir DIR` puts
// DIR's files in the guest; it is on the commands' PATH.
const WorkloadGuestDir = "/workload"

// Checker exit statuses.
const (
	// CheckerIntact: every acknowledged key is intact.
	CheckerIntact = 0
	// CheckerLost: acknowledged data is missing or damaged.
	CheckerLost = 1
)

// MaxAckKey bounds an acknowledgement's key: the whole line then fits a
// write log's MARK entry (blk.MaxWriteLogMark, checked by disk's tests).
const MaxAckKey = 256

// maxJobLine bounds a job disk's command lines.
const maxJobLine = 4096

// maxJobEntries bounds the keys and the states one job may list.
const maxJobEntries = 1 << 20

// AckKey returns the key of an acknowledgement line ("ACK KEY", line end
// and surrounding white space ignored); ok is false for any other line
// and for a key that is empty, too long or holds control characters.
func AckKey(line string) (key string, ok bool) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), "ACK ")
	key = strings.TrimSpace(rest)
	if !ok || validKey(key) != nil {
		return "", false
	}
	return key, true
}

// validKey checks an acknowledgement key.
func validKey(key string) error {
	if key == "" || len(key) > MaxAckKey {
		return fmt.Errorf("ack key %.40q: want 1..%d bytes", key, MaxAckKey)
	}
	for _, c := range []byte(key) {
		if c < ' ' || c == 0x7f {
			return fmt.Errorf("ack key %.40q: control character", key)
		}
	}
	return nil
}

// IsAckLine reports whether a console line is an acknowledgement (AckKey
// accepts it). flushvm run --write-log records each as a MARK entry whose
// text is the trimmed line.
func IsAckLine(line []byte) bool {
	_, ok := AckKey(string(line))
	return ok
}

// FormatLost is a checker's line for a key it found missing.
func FormatLost(key string) string { return "LOST " + key }

// LostKey reads one console line as a checker's LOST line.
func LostKey(line string) (string, bool) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), "LOST ")
	rest = strings.TrimSpace(rest)
	if !ok || rest == "" {
		return "", false
	}
	return rest, true
}

// Job is the content of a crash-test boot's job disk.
type Job struct {
	// Workload and Checker are the shell commands.
	Workload, Checker string
	// Acks are the acknowledged keys in log order.
	Acks []string
	// States[i] is how many of Acks state i must keep.
	States []int
}

// FormatJob is the job disk's content for j, padded with newlines to a
// multiple of 4 KiB and to at least JobDiskMin.
func FormatJob(j Job) ([]byte, error) {
	var b bytes.Buffer
	for _, c := range []struct{ name, cmd string }{{"workload", j.Workload}, {"checker", j.Checker}} {
		if err := validCommand(c.cmd); err != nil {
			return nil, fmt.Errorf("job %s: %w", c.name, err)
		}
		fmt.Fprintf(&b, "%s %s\n", c.name, c.cmd)
	}
	for _, k := range j.Acks {
		if err := validKey(k); err != nil {
			return nil, fmt.Errorf("job: %w", err)
		}
		fmt.Fprintf(&b, "ack %s\n", k)
	}
	for i, n := range j.States {
		if n < 0 || n > len(j.Acks) {
			return nil, fmt.Errorf("job: state %d keeps %d acknowledgements of %d", i, n, len(j.Acks))
		}
		fmt.Fprintf(&b, "state %d %d\n", i, n)
	}
	pad := max(JobDiskMin, (b.Len()+4095)&^4095) - b.Len()
	b.Write(bytes.Repeat([]byte{'\n'}, pad))
	return b.Bytes(), nil
}

// JobDiskMin is the least size of a job disk. The guest kernel's partition
// scan reads the first sectors of every disk, and its Amiga RDB parser
// logs an error on the console ("Dev vdb: unable to read RDB block 1") for
// each of its first 16 sectors a disk lacks: an error line in every
// crash-test boot's output, where a workload's acknowledgements go too.
const JobDiskMin = 16 * 512

// validCommand checks a job's command: one line of printable text.
func validCommand(cmd string) error {
	if strings.TrimSpace(cmd) == "" || len(cmd) > maxJobLine {
		return fmt.Errorf("command %.40q: want 1..%d bytes", cmd, maxJobLine)
	}
	if strings.ContainsAny(cmd, "\n\r\x00") {
		return fmt.Errorf("command %.40q: more than one line", cmd)
	}
	return nil
}

// ParseJob reads a job disk's content (trailing blank lines and NUL
// padding ignored). States must be numbered 0, 1, ... in order and keep at
// most the keys listed before them.
func ParseJob(data []byte) (Job, error) {
	var j Job
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\x00\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		if len(j.Acks)+len(j.States) >= maxJobEntries {
			return Job{}, fmt.Errorf("job line %d: more than %d entries", n+1, maxJobEntries)
		}
		if err := j.parseLine(line); err != nil {
			return Job{}, fmt.Errorf("job line %d: %w", n+1, err)
		}
	}
	return j, nil
}

// parseLine folds one job line into j.
func (j *Job) parseLine(line string) error {
	kind, rest, _ := strings.Cut(line, " ")
	switch kind {
	case "workload", "checker":
		if err := validCommand(rest); err != nil {
			return err
		}
		if kind == "workload" {
			j.Workload = rest
		} else {
			j.Checker = rest
		}
	case "ack":
		key := strings.TrimSpace(rest)
		if err := validKey(key); err != nil {
			return err
		}
		j.Acks = append(j.Acks, key)
	case "state":
		f := strings.Fields(rest)
		if len(f) != 2 {
			return fmt.Errorf("%q: want \"state I N\"", line)
		}
		i, err1 := strconv.Atoi(f[0])
		n, err2 := strconv.Atoi(f[1])
		if err1 != nil || i != len(j.States) {
			return fmt.Errorf("state %q, want %d", f[0], len(j.States))
		}
		if err2 != nil || n < 0 || n > len(j.Acks) {
			return fmt.Errorf("state %d keeps %q of %d acknowledgements", i, f[1], len(j.Acks))
		}
		j.States = append(j.States, n)
	default:
		return fmt.Errorf("%.60q: want workload, checker, ack or state", line)
	}
	return nil
}
