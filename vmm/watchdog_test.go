package vmm

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/protocol"
)

func vectors(vs ...int) vectorSet {
	var s vectorSet
	for _, v := range vs {
		s[v/32] |= 1 << (v % 32)
	}
	return s
}

func TestStallDetector(t *testing.T) {
	type sample struct {
		at    time.Duration
		exits uint64
		irr   vectorSet
	}
	const bound = time.Second
	tests := []struct {
		name    string
		samples []sample
		fireAt  int // index of the sample that reports the stall, -1: none
	}{
		{"one vector pending throughout", []sample{
			{0, 5, vectors(35)}, {250 * time.Millisecond, 5, vectors(35)}, {500 * time.Millisecond, 5, vectors(35, 236)},
			{750 * time.Millisecond, 5, vectors(35)}, {time.Second, 5, vectors(35)}}, 4},
		{"nothing pending: an idle or busy guest", []sample{
			{0, 5, vectors()}, {time.Second, 5, vectors()}, {2 * time.Second, 5, vectors()}}, -1},
		{"an exit in between is progress", []sample{
			{0, 5, vectors(35)}, {600 * time.Millisecond, 6, vectors(35)}, {1200 * time.Millisecond, 6, vectors(35)},
			{1600 * time.Millisecond, 6, vectors(35)}}, 3},
		{"different vectors each time: they are being delivered", []sample{
			{0, 5, vectors(236)}, {500 * time.Millisecond, 5, vectors(35)}, {time.Second, 5, vectors(236)},
			{1500 * time.Millisecond, 5, vectors(35)}}, -1},
		{"the pending set narrows to one vector that stays", []sample{
			{0, 5, vectors(35, 236)}, {500 * time.Millisecond, 5, vectors(236)}, {time.Second, 5, vectors(236)}}, 2},
		{"a gap with nothing pending restarts the clock", []sample{
			{0, 5, vectors(35)}, {500 * time.Millisecond, 5, vectors()}, {time.Second, 5, vectors(35)},
			{1500 * time.Millisecond, 5, vectors(35)}, {2 * time.Second, 5, vectors(35)}}, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := stallDetector{bound: bound}
			t0 := time.Unix(1000, 0)
			fired := -1
			for i, s := range tc.samples {
				if d.observe(t0.Add(s.at), s.exits, s.irr) && fired < 0 {
					fired = i
				}
			}
			if fired != tc.fireAt {
				t.Errorf("stall reported at sample %d, want %d", fired, tc.fireAt)
			}
		})
	}
}

func TestVectorSetList(t *testing.T) {
	if got := vectors(0, 35, 236, 255).list(); len(got) != 4 || got[1] != 35 || got[3] != 255 {
		t.Errorf("list = %v", got)
	}
	if !vectors().empty() || vectors(1).empty() {
		t.Error("empty is wrong")
	}
}

// Tiny guests for the ways a guest fails or powers off.
var (
	// ud2 with an empty IDT: #UD, then #DF, then a triple fault.
	codeTripleFault = []byte{0x0f, 0x0b}
	// mov ax, 5<<10|SLP_EN; mov dx, 0x604; out dx, ax; jmp $
	codeACPIPowerOff = []byte{0x66, 0xb8, 0x00, 0x34, 0x66, 0xba, 0x04, 0x06, 0x66, 0xef, 0xeb, 0xfe}
	// mov al, 1 (PANICKED); mov dx, 0x505; out dx, al; jmp $: what Linux's
	// pvpanic driver does from its panic notifier.
	codePvpanicPanicked = []byte{0xb0, pvpanicPanicked, 0x66, 0xba, 0x05, 0x05, 0xee, 0xeb, 0xfe}
	// mov al, 2 (CRASH_LOADED, not offered); mov dx, 0x505; out dx, al;
	// then debug-exit 5: the write must not end the machine.
	codePvpanicCrashLoaded = concat([]byte{0xb0, pvpanicCrashLoaded, 0x66, 0xba, 0x05, 0x05, 0xee}, debugExit(5))
	// mov dx, 0x505; in al, dx; out 0xf4, al; jmp $: debug-exit with the
	// events the device offers.
	codePvpanicRead = []byte{0x66, 0xba, 0x05, 0x05, 0xec, 0xe6, 0xf4, 0xeb, 0xfe}
	// Enable the local APIC, start its one-shot timer (vector 0x40, 4096
	// ticks at divide-by-1) and spin with interrupts disabled (the boot
	// RFLAGS has IF clear): vector 0x40 stays requested forever.
	codeStuckTimer = concat(
		[]byte{0xb9, 0x00, 0x00, 0xe0, 0xfe},                         // mov ecx, 0xfee00000
		[]byte{0xc7, 0x81, 0xf0, 0x00, 0x00, 0x00, 0xff, 0x01, 0, 0}, // SVR = 0x1ff
		[]byte{0xc7, 0x81, 0xe0, 0x03, 0x00, 0x00, 0x0b, 0x00, 0, 0}, // divide config = 1
		[]byte{0xc7, 0x81, 0x20, 0x03, 0x00, 0x00, 0x40, 0x00, 0, 0}, // LVT timer = vector 0x40
		[]byte{0xc7, 0x81, 0x80, 0x03, 0x00, 0x00, 0x00, 0x10, 0, 0}, // initial count = 4096
		codeSpin,
	)
)

// runTinyWatched is runTiny with a watchdog bound, returning the
// diagnostics too.
func runTinyWatched(t *testing.T, code []byte, watchdog, stopAfter time.Duration) (Result, string) {
	t.Helper()
	skipWithoutKVM(t)
	var diag bytes.Buffer
	m, err := New(Config{Kernel: BytesImage(makeBzImage(code)), MemSize: 64 << 20, CPUs: 1, Diag: &diag, Watchdog: watchdog})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if stopAfter > 0 {
		timer := time.AfterFunc(stopAfter, func() { m.Stop(7) })
		defer timer.Stop()
	}
	return runBounded(t, m), diag.String()
}

func TestTinyGuestFailures(t *testing.T) {
	tests := []struct {
		name       string
		code       []byte
		watchdog   time.Duration
		stopAfter  time.Duration
		wantKind   ExitKind
		wantStatus int
		wantDiag   []string // each must appear; nil: no diagnostics at all
	}{
		{"triple fault is a crash, not a reboot", codeTripleFault, 0, 0, ExitGuestCrash, protocol.ExitGuestCrash,
			[]string{"flushvm: guest crashed (exit status 101): vCPU 0 triple fault", "RIP 0x", "CR3 0x9000", "code at RIP: 0f 0b"}},
		{"ACPI S5 powers off", codeACPIPowerOff, 0, 0, ExitPowerOff, 0, nil},
		{"pvpanic PANICKED is a crash, not the reboot panic= does next", codePvpanicPanicked, 0, 0, ExitGuestCrash, protocol.ExitGuestCrash,
			[]string{"flushvm: guest crashed (exit status 101): vCPU 0 " + protocol.KernelPanicEvent + ": RIP 0x", "CR3 0x9000", "code at RIP: eb fe"}},
		{"pvpanic CRASH_LOADED alone is ignored", codePvpanicCrashLoaded, 0, 0, ExitDebugPort, 5, nil},
		{"pvpanic port reads PANICKED only", codePvpanicRead, 0, 0, ExitDebugPort, pvpanicPanicked, nil},
		{"watchdog: timer interrupt pending with IF clear", codeStuckTimer, 200 * time.Millisecond, 0, ExitGuestHang, protocol.ExitGuestHang,
			[]string{"flushvm: guest hung (exit status 102): vCPU 0 made no progress", "vectors [64]", "IRR [64]", "(IF 0)", "code at RIP: eb fe", "KVM events: shadow 0"}},
		{"watchdog: a spinning guest with nothing pending is left alone", codeSpin, 100 * time.Millisecond, 800 * time.Millisecond, ExitQuit, 7, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, diag := runTinyWatched(t, tc.code, tc.watchdog, tc.stopAfter)
			if res.Kind != tc.wantKind || res.Status != tc.wantStatus {
				t.Errorf("result %v status %d (%v), want %v status %d; diagnostics:\n%s", res.Kind, res.Status, res.Err, tc.wantKind, tc.wantStatus, diag)
			}
			if tc.wantDiag == nil && diag != "" {
				t.Errorf("unexpected diagnostics:\n%s", diag)
			}
			for _, w := range tc.wantDiag {
				if !strings.Contains(diag, w) {
					t.Errorf("diagnostics lack %q:\n%s", w, diag)
				}
			}
			if tc.wantDiag != nil {
				t.Logf("diagnostics:\n%s", diag)
				// The report, after at most one note that the stall began.
				notes := strings.Count(diag, "flushvm: watchdog: ")
				if r, ok := protocol.FindCrashReport([]byte(diag)); !ok || r.Status != tc.wantStatus || strings.Count(diag, "\n") != 1+notes || notes > 1 {
					t.Errorf("want exactly one report line with status %d, got %+v %v:\n%s", tc.wantStatus, r, ok, diag)
				}
			}
		})
	}
}
