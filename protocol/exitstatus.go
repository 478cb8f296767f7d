// Package protocol holds the contracts between flushvm's binaries and the
// programs and tests that run them, each with its formatter and parser side
// by side. It imports only the standard library, so that programs which
// must not link the VMM (the nested harness, guest programs) can read them.
//
// Exit statuses (this file): the statuses `flushvm run` chooses itself, and
// the one line it prints on stderr when it ends a machine because the guest
// crashed or hung. A guest can end flushvm with any status 0-255 through the
// debug-exit port, so a status alone never proves that flushvm chose it:
// ExitGuestCrash and ExitGuestHang come with the report line
// (FindCrashReport), a guest's own debug exit does not.
package protocol

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// The exit statuses of `flushvm run` that flushvm chooses itself. A clean
// guest reboot, reset or ACPI power-off ends with ExitOK; other guest-chosen
// statuses are the debug-exit byte.
const (
	// ExitOK: the guest rebooted, reset or powered the machine off.
	ExitOK = 0
	// ExitFailure: the machine failed (KVM could not run the guest, a host
	// error).
	ExitFailure = 1
	// ExitUsage: a usage or host-setup error.
	ExitUsage = 2
	// ExitPowerCut: the power of the powercut= disks was cut.
	ExitPowerCut = 100
	// ExitGuestCrash: a vCPU triple-faulted (KVM_EXIT_SHUTDOWN) or the
	// guest kernel panicked and said so through the pvpanic device;
	// flushvm printed a CrashReport.
	ExitGuestCrash = 101
	// ExitGuestHang: the watchdog found a vCPU that made no progress with an
	// interrupt pending; flushvm printed a CrashReport.
	ExitGuestHang = 102
)

// CrashReport is the line flushvm prints on stderr when it ends the machine
// with ExitGuestCrash or ExitGuestHang.
type CrashReport struct {
	// Status is ExitGuestCrash or ExitGuestHang.
	Status int
	// Detail names the vCPU and the event, then its registers, e.g.
	// "vCPU 0 triple fault (KVM_EXIT_SHUTDOWN): RIP 0x... RSP 0x... code ...".
	Detail string
}

// KernelPanicEvent is the event a ExitGuestCrash report's Detail names, after
// the vCPU, when the guest kernel reported a panic through the pvpanic
// device: "vCPU 0 guest kernel panic (pvpanic): RIP 0x...".
const KernelPanicEvent = "guest kernel panic (pvpanic)"

// linePrefix starts every report line; the word after it says which
// status follows.
const linePrefix = "flushvm: guest "

// verbs are the words after linePrefix, by status.
var verbs = map[int]string{ExitGuestCrash: "crashed", ExitGuestHang: "hung"}

// String formats r as the one line flushvm prints (without the newline).
func (r CrashReport) String() string {
	v, ok := verbs[r.Status]
	if !ok {
		v = "ended"
	}
	return fmt.Sprintf("%s%s (exit status %d): %s", linePrefix, v, r.Status, strings.ReplaceAll(r.Detail, "\n", " "))
}

// ParseCrashReport parses one report line as String formats it.
func ParseCrashReport(line string) (CrashReport, bool) {
	rest, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), linePrefix)
	if !ok {
		return CrashReport{}, false
	}
	verb, rest, ok := strings.Cut(rest, " (exit status ")
	if !ok {
		return CrashReport{}, false
	}
	num, detail, ok := strings.Cut(rest, "): ")
	if !ok {
		return CrashReport{}, false
	}
	st, err := strconv.Atoi(num)
	if err != nil || verbs[st] != verb {
		return CrashReport{}, false
	}
	return CrashReport{Status: st, Detail: detail}, true
}

// FindCrashReport returns the last report line in out (flushvm's combined output, or
// its stderr). A run that ended with ExitGuestCrash or ExitGuestHang but has no
// report ended through the guest's own debug exit.
func FindCrashReport(out []byte) (CrashReport, bool) {
	var last CrashReport
	found := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		// The guest's console shares the stream: the report may follow
		// console bytes on the same line.
		if i := strings.Index(line, linePrefix); i >= 0 {
			if r, ok := ParseCrashReport(line[i:]); ok {
				last, found = r, true
			}
		}
	}
	return last, found
}

// Crashed reports whether a run that ended with status and printed out
// ended because flushvm saw its guest crash or hang.
func Crashed(status int, out []byte) bool {
	if status != ExitGuestCrash && status != ExitGuestHang {
		return false
	}
	r, ok := FindCrashReport(out)
	return ok && r.Status == status
}

// DebugExitPort is the I/O port a guest writes one byte v to, to end
// `flushvm run` with exit status v (QEMU's isa-debug-exit at the same port
// exits with 2v+1).
const DebugExitPort = 0xf4

// ExitStatusRow is one way `flushvm run` ends and its exit status.
type ExitStatusRow struct {
	When, Status string
}

// RunExitStatuses is the table of how `flushvm run` ends: the one table
// flushvm run --help prints and the README shows (a test keeps the README's
// copy equal).
var RunExitStatuses = []ExitStatusRow{
	{"guest reboot (reboot=k, the default, or the ACPI reset register, port 0xcf9)", strconv.Itoa(ExitOK)},
	{"guest power-off (poweroff: ACPI S5 through PM1a_CNT)", strconv.Itoa(ExitOK)},
	{"the guest writes one byte v to I/O port 0xf4 (debug exit)", "v"},
	{"Ctrl-A x on the console (when stdin is a terminal)", strconv.Itoa(ExitOK)},
	{"SIGINT/SIGTERM/SIGHUP to flushvm", "128+signal"},
	{"power cut (--power-cut, or POST /power-cut on the --api socket)", strconv.Itoa(ExitPowerCut)},
	{"guest crash: a vCPU triple-faulted, or the kernel panicked and said so through pvpanic (report line on stderr)", strconv.Itoa(ExitGuestCrash)},
	{"guest hang found by --watchdog (report line on stderr)", strconv.Itoa(ExitGuestHang)},
	{"KVM cannot run the guest (diagnostic on stderr)", strconv.Itoa(ExitFailure)},
	{"usage or host-setup error: missing kernel, unreadable or locked disk, bad SPEC, no /dev/kvm (one line on stderr)", strconv.Itoa(ExitUsage)},
}

// Register returns the value of the register name ("RIP", "CR3", ...) in
// the report's register dump ("... RIP 0xffffffff81000000 RSP ..."), and
// whether the dump has it.
func (r CrashReport) Register(name string) (uint64, bool) {
	f := strings.Fields(r.Detail)
	for i := 0; i+1 < len(f); i++ {
		if f[i] != name || !strings.HasPrefix(f[i+1], "0x") {
			continue
		}
		v, err := strconv.ParseUint(strings.TrimRight(f[i+1][2:], ",;:"), 16, 64)
		return v, err == nil
	}
	return 0, false
}
