// Package exitstatus is the contract between `flushvm run` and whatever
// runs it (the crash-test runner, the nested harness, tests): the exit
// statuses flushvm itself chooses, and the one line it prints on stderr
// when it ends a machine because the guest crashed or hung.
//
// A guest can end flushvm with any status 0-255 through the debug-exit
// port, so a status alone never proves that flushvm chose it: GuestCrash
// and GuestHang come with the report line (Find), a guest's own debug exit
// does not. The package imports only the standard library so that programs
// which must not link the VMM can read the contract too.
package exitstatus

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// The exit statuses of `flushvm run` that flushvm chooses itself. A clean
// guest reboot, reset or ACPI power-off ends with OK; other guest-chosen
// statuses are the debug-exit byte.
const (
	// OK: the guest rebooted, reset or powered the machine off.
	OK = 0
	// Failure: the machine failed (KVM could not run the guest, a host
	// error).
	Failure = 1
	// Usage: a usage or host-setup error.
	Usage = 2
	// PowerCut: the power of the powercut= disks was cut.
	PowerCut = 100
	// GuestCrash: a vCPU triple-faulted (KVM_EXIT_SHUTDOWN) or the
	// guest kernel panicked and said so through the pvpanic device;
	// flushvm printed a Report.
	GuestCrash = 101
	// GuestHang: the watchdog found a vCPU that made no progress with an
	// interrupt pending; flushvm printed a Report.
	GuestHang = 102
)

// Report is the line flushvm prints on stderr when it ends the machine
// with GuestCrash or GuestHang.
type Report struct {
	// Status is GuestCrash or GuestHang.
	Status int
	// Detail names the vCPU and the event, then its registers, e.g.
	// "vCPU 0 triple fault (KVM_EXIT_SHUTDOWN): RIP 0x... RSP 0x... code ...".
	Detail string
}

// KernelPanicEvent is the event a GuestCrash report's Detail names, after
// the vCPU, when the guest kernel reported a panic through the pvpanic
// device: "vCPU 0 guest kernel panic (pvpanic): RIP 0x...".
const KernelPanicEvent = "guest kernel panic (pvpanic)"

// linePrefix starts every report line; the word after it says which
// status follows.
const linePrefix = "flushvm: guest "

// verbs are the words after linePrefix, by status.
var verbs = map[int]string{GuestCrash: "crashed", GuestHang: "hung"}

// String formats r as the one line flushvm prints (without the newline).
func (r Report) String() string {
	v, ok := verbs[r.Status]
	if !ok {
		v = "ended"
	}
	return fmt.Sprintf("%s%s (exit status %d): %s", linePrefix, v, r.Status, strings.ReplaceAll(r.Detail, "\n", " "))
}

// Parse parses one report line as String formats it.
func Parse(line string) (Report, bool) {
	rest, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), linePrefix)
	if !ok {
		return Report{}, false
	}
	verb, rest, ok := strings.Cut(rest, " (exit status ")
	if !ok {
		return Report{}, false
	}
	num, detail, ok := strings.Cut(rest, "): ")
	if !ok {
		return Report{}, false
	}
	st, err := strconv.Atoi(num)
	if err != nil || verbs[st] != verb {
		return Report{}, false
	}
	return Report{Status: st, Detail: detail}, true
}

// Find returns the last report line in out (flushvm's combined output, or
// its stderr). A run that ended with GuestCrash or GuestHang but has no
// report ended through the guest's own debug exit.
func Find(out []byte) (Report, bool) {
	var last Report
	found := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		// The guest's console shares the stream: the report may follow
		// console bytes on the same line.
		if i := strings.Index(line, linePrefix); i >= 0 {
			if r, ok := Parse(line[i:]); ok {
				last, found = r, true
			}
		}
	}
	return last, found
}

// Crashed reports whether a run that ended with status and printed out
// ended because flushvm saw its guest crash or hang.
func Crashed(status int, out []byte) bool {
	if status != GuestCrash && status != GuestHang {
		return false
	}
	r, ok := Find(out)
	return ok && r.Status == status
}
