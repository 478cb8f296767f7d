package protocol

// Console lines: what guest programs print on the serial console and the
// host reads back. Each has its formatter and its parser here, so the
// guest side and the host side cannot drift apart.
//
//	ACK fsyncstress W SEQ            record SEQ of writer W is durable
//	ACK rename V                     version V of the target file is durable
//	CHECK W acked=A lost=L extra=E   a workload checker's verdict
//	flushvm-init: exit status N      the guest's /init ends the VM with N
//	flushvm-init: mkfs DISK: ok      the mkfs mode formatted DISK
//	flushvm-check: mount failed: ERR the crashed file system did not mount
//	flushvm-check: W status N        W's checker exited with N
//	flushvm-check: fsck status N     e2fsck -fn exited with N

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// WatchdogKicked starts the line `flushvm run --watchdog` prints each time
// it kicks a vCPU that stalled with an interrupt pending:
// "flushvm: watchdog: vCPU N: no exit for at least D with vectors [V...]
// requested; kicked it (LAPIC state)".
const WatchdogKicked = "flushvm: watchdog: vCPU "

// CountWatchdogKicks counts the kick lines of a flushvm run's output.
func CountWatchdogKicks(out []byte) int {
	n := 0
	for _, l := range bytes.Split(out, []byte("\n")) {
		if bytes.HasPrefix(bytes.TrimSpace(l), []byte(WatchdogKicked)) && bytes.Contains(l, []byte("; kicked it (")) {
			n++
		}
	}
	return n
}

// watchdogStuckText is what makes a watchdog line the stuck-vCPU line.
const watchdogStuckText = " has not left KVM_RUN "

// FormatWatchdogStuck is the line `flushvm run --watchdog` prints when a
// vCPU it kicked has not come back from KVM_RUN for age: "flushvm:
// watchdog: vCPU N has not left KVM_RUN D after being kicked". A signal
// ends KVM_RUN on any working host, so the CPU that runs that vCPU is lost
// below flushvm (nested: in L1's kernel or the TCG emulating it), and the
// flushvm process cannot even be killed until it comes back.
func FormatWatchdogStuck(vcpu int, age time.Duration) string {
	return fmt.Sprintf("%s%d%s%v after being kicked", WatchdogKicked, vcpu, watchdogStuckText, age)
}

// IsWatchdogStuck reports whether line (a console line, possibly with
// text before it) is a FormatWatchdogStuck line.
func IsWatchdogStuck(line string) bool {
	i := strings.Index(line, WatchdogKicked)
	return i >= 0 && strings.Contains(line[i:], watchdogStuckText) && strings.HasSuffix(strings.TrimSpace(line), " after being kicked")
}

// Line prefixes of the guest's /init in its normal and check modes.
const (
	InitPrefix  = "flushvm-init"
	CheckPrefix = "flushvm-check"
)

// Ack is one acknowledgement: Writer and Seq for fsyncstress, Version for
// rename.
type Ack struct {
	Workload    string
	Writer, Seq int
	Version     int
}

// AppendAckFsyncstress appends "ACK fsyncstress W SEQ\n" to dst without
// allocating (the workload prints one per record).
func AppendAckFsyncstress(dst []byte, writer, seq int) []byte {
	dst = append(dst, "ACK fsyncstress "...)
	dst = strconv.AppendInt(dst, int64(writer), 10)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(seq), 10)
	return append(dst, '\n')
}

// FormatAckRename is "ACK rename V" (without newline).
func FormatAckRename(version int) string { return "ACK rename " + strconv.Itoa(version) }

// ParseAck reads one console line as an acknowledgement. Malformed lines,
// negative numbers and writers at or past maxWriters are not
// acknowledgements.
func ParseAck(line string, maxWriters int) (Ack, bool) {
	f := strings.Fields(line)
	if len(f) < 3 || f[0] != "ACK" {
		return Ack{}, false
	}
	switch {
	case f[1] == "fsyncstress" && len(f) == 4:
		w, err1 := strconv.Atoi(f[2])
		seq, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil || w < 0 || w >= maxWriters || seq < 0 {
			return Ack{}, false
		}
		return Ack{Workload: f[1], Writer: w, Seq: seq}, true
	case f[1] == "rename" && len(f) == 3:
		v, err := strconv.Atoi(f[2])
		if err != nil || v < 1 {
			return Ack{}, false
		}
		return Ack{Workload: f[1], Version: v}, true
	}
	return Ack{}, false
}

// Check is a workload checker's verdict line.
type Check struct {
	Workload           string
	Acked, Lost, Extra int
}

// String is the CHECK line (without newline).
func (c Check) String() string {
	return fmt.Sprintf("CHECK %s acked=%d lost=%d extra=%d", c.Workload, c.Acked, c.Lost, c.Extra)
}

// ParseCheck reads one console line as workload's CHECK line.
func ParseCheck(line, workload string) (Check, bool) {
	c, ok := ParseAnyCheck(line)
	if !ok || c.Workload != workload {
		return Check{}, false
	}
	return c, true
}

// ParseAnyCheck reads one console line as a CHECK line of any workload
// (a user's checker names its workload as it likes).
func ParseAnyCheck(line string) (Check, bool) {
	f := strings.Fields(line)
	if len(f) != 5 || f[0] != "CHECK" {
		return Check{}, false
	}
	c := Check{Workload: f[1]}
	for i, p := range []*int{&c.Acked, &c.Lost, &c.Extra} {
		v, ok := strings.CutPrefix(f[2+i], [...]string{"acked=", "lost=", "extra="}[i])
		n, err := strconv.Atoi(v)
		if !ok || err != nil {
			return Check{}, false
		}
		*p = n
	}
	return c, true
}

// initExitStatus is the text before N in the /init's last line.
const initExitStatus = InitPrefix + ": exit status "

// FormatInitExit is the /init's last line before it ends the VM with
// status (without newline).
func FormatInitExit(status int) string { return initExitStatus + strconv.Itoa(status) }

// FindInitExit finds the /init's exit status line in a console output.
func FindInitExit(out []byte) (int, bool) {
	i := bytes.LastIndex(out, []byte(initExitStatus))
	if i < 0 {
		return 0, false
	}
	rest := out[i+len(initExitStatus):]
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	n, err := strconv.Atoi(string(rest[:end]))
	return n, err == nil
}

// FormatMkfsOK is the mkfs mode's success line for disk.
func FormatMkfsOK(disk string) string { return InitPrefix + ": mkfs " + disk + ": ok" }

// FormatCheckMountFailed is the check mode's line when the crashed file
// system does not mount.
func FormatCheckMountFailed(err error) string { return CheckPrefix + ": mount failed: " + err.Error() }

// FormatCheckStatus is the line with workload's checker status.
func FormatCheckStatus(workload string, status int) string {
	return CheckPrefix + ": " + workload + " status " + strconv.Itoa(status)
}

// FormatFsckStatus is the line with e2fsck's status.
func FormatFsckStatus(status int) string {
	return CheckPrefix + ": fsck status " + strconv.Itoa(status)
}

// CheckVerdict is what the check mode's lines say.
type CheckVerdict struct {
	// MountFailed: the crashed file system did not mount.
	MountFailed bool
	// CheckerStatus is the workload checker's exit status (-1: none).
	CheckerStatus int
	// FsckStatus is the file system check's status (-1: none).
	FsckStatus int
}

// ParseCheckLine folds one console line of the check mode of workload
// into v; it reports whether the line was one of those lines.
func ParseCheckLine(v *CheckVerdict, line, workload string) bool {
	num := func(s string) (int, bool) {
		n, err := strconv.Atoi(s)
		return n, err == nil
	}
	line = strings.TrimSpace(line)
	if rest, ok := strings.CutPrefix(line, CheckPrefix+": fsck status "); ok {
		if n, ok := num(rest); ok {
			v.FsckStatus = n
			return true
		}
	}
	if strings.HasPrefix(line, CheckPrefix+": mount failed") {
		v.MountFailed = true
		return true
	}
	if rest, ok := strings.CutPrefix(line, CheckPrefix+": "+workload+" status "); ok {
		if n, ok := num(rest); ok {
			v.CheckerStatus = n
			return true
		}
	}
	return false
}

// FormatErrorStop is the line (after the command's own "flushvm: " or
// "flushvm vhost-user-blk: ") flushvm prints on stderr when a disk's error
// policy (werror=stop, werror=enospc, rerror=stop) held a request: disk
// is the disk's index, event what failed; paused says whether the VM was
// paused (flushvm run) or only the request held (a vhost-user backend).
func FormatErrorStop(disk int, event string, paused bool) string {
	what := "request held"
	if paused {
		what = "VM paused"
	}
	return fmt.Sprintf("%s%d: %s; %s (POST /resume retries it, POST /disks/%d/fail-held fails it)", ErrorStopPrefix, disk, event, what, disk)
}

// ErrorStopPrefix begins every FormatErrorStop line.
const ErrorStopPrefix = "error policy stop: disk "
