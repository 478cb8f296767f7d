package protocol

import "testing"

func TestReportRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		r    CrashReport
		want string
	}{
		{"crash", CrashReport{ExitGuestCrash, "vCPU 0 triple fault (KVM_EXIT_SHUTDOWN): RIP 0x1000"},
			"flushvm: guest crashed (exit status 101): vCPU 0 triple fault (KVM_EXIT_SHUTDOWN): RIP 0x1000"},
		{"kernel panic", CrashReport{ExitGuestCrash, "vCPU 0 " + KernelPanicEvent + ": RIP 0xffffffff81000000"},
			"flushvm: guest crashed (exit status 101): vCPU 0 guest kernel panic (pvpanic): RIP 0xffffffff81000000"},
		{"hang", CrashReport{ExitGuestHang, "vCPU 1 no progress for 30s: IRR [35 236]"},
			"flushvm: guest hung (exit status 102): vCPU 1 no progress for 30s: IRR [35 236]"},
		{"detail with a colon and parentheses", CrashReport{ExitGuestCrash, "a (b): c): d"},
			"flushvm: guest crashed (exit status 101): a (b): c): d"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.r.String(); got != tc.want {
				t.Fatalf("String() = %q, want %q", got, tc.want)
			}
			got, ok := ParseCrashReport(tc.want + "\n")
			if !ok || got != tc.r {
				t.Errorf("Parse = %+v, %v; want %+v", got, ok, tc.r)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	for _, line := range []string{
		"",
		"flushvm: guest crashed",
		"flushvm: guest crashed (exit status 102): verb and status disagree",
		"flushvm: guest hung (exit status x): bad number",
		"flushvm: guest rebooted (exit status 0): not a report",
		"guest crashed (exit status 101): no prefix",
	} {
		if r, ok := ParseCrashReport(line); ok {
			t.Errorf("ParseCrashReport(%q) = %+v, want rejected", line, r)
		}
	}
}

func TestCrashed(t *testing.T) {
	crash := CrashReport{ExitGuestCrash, "vCPU 0 triple fault"}.String()
	tests := []struct {
		name   string
		status int
		out    string
		want   bool
	}{
		{"report and its status", ExitGuestCrash, "[ 1.0] booting\n" + crash + "\n", true},
		{"report after console bytes on one line", ExitGuestCrash, "[ 1.0] half a line" + crash + "\n", true},
		{"guest's own debug exit 101", ExitGuestCrash, "flushvm-init: exit status 101\n", false},
		{"report but another status", 0, crash + "\n", false},
		{"hang status with a crash report", ExitGuestHang, crash + "\n", false},
		{"clean reboot", ExitOK, "reboot: Restarting system\n", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Crashed(tc.status, []byte(tc.out)); got != tc.want {
				t.Errorf("Crashed(%d, %q) = %v, want %v", tc.status, tc.out, got, tc.want)
			}
		})
	}
}

func TestReportRegister(t *testing.T) {
	// The hang report of a fresh-clone CI run (stop 27), cut short.
	hang := CrashReport{Status: ExitGuestHang, Detail: "vCPU 1 made no progress for 1m14.997s (no exit to flushvm; " +
		"vectors [251 253] requested at every sample): RIP 0xffffffffc052c20c RSP 0xff62fc300044fbc0 RFLAGS 0x10246 (IF 1) " +
		"CS 0x10 CR0 0x80050033 CR2 0xffffffffc052c20c CR3 0x27358000 CR4 0x750ee0 EFER 0xd01; code at RIP: unreadable"}
	tests := []struct {
		name string
		want uint64
		ok   bool
	}{
		{"RIP", 0xffffffffc052c20c, true},
		{"CR3", 0x27358000, true},
		{"EFER", 0xd01, true},
		{"CS", 0x10, true},
		{"RAX", 0, false},
		{"vCPU", 0, false}, // followed by a number, not a register value
		{"rip", 0, false},
	}
	for _, tt := range tests {
		got, ok := hang.Register(tt.name)
		if got != tt.want || ok != tt.ok {
			t.Errorf("Register(%q) = %#x, %v; want %#x, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
	if v, ok := (CrashReport{Detail: "RIP 0xzz"}).Register("RIP"); ok {
		t.Errorf("Register of a bad value = %#x, true", v)
	}
}
