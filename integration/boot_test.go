package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flushvm/flushvm/host/harness"
	"github.com/flushvm/flushvm/protocol"
)

// TestDebianLinuxBoot boots Debian's generic kernel with the test
// initramfs under flushvm five ways in one session: to /init ending with a
// chosen status through the debug-exit port (and no ACPI error on the
// way), with --cpus 2 powering off through ACPI (status 0), triple-faulting
// on purpose (status protocol.ExitGuestCrash with its report line),
// panicking with panic=-1 (status protocol.ExitGuestCrash through pvpanic,
// not the reboot panic= asks for), and with a bad --kernel file that
// flushvm must reject in one clear line with status 2. The first boot
// loads the bzImage; the others the ELF vmlinux inside it (both loaders
// tested, and the ELF one skips seconds of nested decompression).
func TestDebianLinuxBoot(t *testing.T) {
	a := prepare(t)
	poweroff, err := harness.WithScript(a.Cache, a.Initramfs, "#!/bin/sh\necho about to power off\npoweroff -f\n")
	if err != nil {
		t.Fatal(err)
	}
	// reboot=t asks Linux for a triple fault: the one crash a test can
	// cause on purpose.
	tripleFault, err := harness.WithScript(a.Cache, a.Initramfs, "#!/bin/sh\necho about to triple-fault\nreboot -f\n")
	if err != nil {
		t.Fatal(err)
	}
	// sysrq c panics the kernel; the pvpanic-mmio module /init loaded
	// tells flushvm before panic=-1 reboots.
	kernelPanic, err := harness.WithScript(a.Cache, a.Initramfs,
		"#!/bin/sh\necho 1 > /proc/sys/kernel/sysrq\necho about to panic\necho c > /proc/sysrq-trigger\n")
	if err != nil {
		t.Fatal(err)
	}
	badKernel := filepath.Join(t.TempDir(), "not-a-bzImage")
	if err := os.WriteFile(badKernel, bytes.Repeat([]byte("not a kernel\n"), 400), 0o644); err != nil {
		t.Fatal(err)
	}
	session(t, []boot{
		{
			name: "exit_status_7",
			args: []string{"--kernel", a.Kernel.BzImage, "--initrd", a.Initramfs, "--mem", "256M", "--append", cmdline("exit:7")},
			check: func(t *testing.T, r harness.Result) {
				rel, cpus, mem := machine(t, r.Output)
				if rel != a.Kernel.Release {
					t.Errorf("guest kernel %s, want %s", rel, a.Kernel.Release)
				}
				if cpus != 1 {
					t.Errorf("guest saw %d CPUs, want 1 (the default)", cpus)
				}
				if mem < 128 || mem > 256 {
					t.Errorf("guest saw %d MiB with --mem 256M, want 128..256", mem)
				}
				if r.Status != 7 {
					t.Errorf("flushvm exit status %d, want 7 (written to port 0xf4); console:\n%s", r.Status, r.Output)
				}
				if bytes.Contains(r.Output, []byte("ACPI BIOS Error")) || bytes.Contains(r.Output, []byte("ACPI Error")) {
					t.Errorf("the guest reported an ACPI error:\n%s", r.Output)
				}
			},
		},
		{
			name: "two_cpus_poweroff",
			args: []string{"--kernel", a.Vmlinux, "--initrd", poweroff, "--cpus", "2", "--append", cmdline("script")},
			check: func(t *testing.T, r harness.Result) {
				if !bytes.Contains(r.Output, []byte("about to power off")) {
					t.Fatalf("the script never ran; console:\n%s", r.Output)
				}
				if _, cpus, _ := machine(t, r.Output); cpus != 2 {
					t.Errorf("guest saw %d CPUs with --cpus 2", cpus)
				}
				if r.Status != protocol.ExitOK || protocol.Crashed(r.Status, r.Output) {
					t.Errorf("flushvm exit status %d after a guest poweroff, want 0; console:\n%s", r.Status, r.Output)
				}
			},
		},
		{
			name: "triple_fault",
			args: []string{"--kernel", a.Vmlinux, "--initrd", tripleFault, "--append", cmdline("script") + " reboot=t"},
			check: func(t *testing.T, r harness.Result) {
				if !bytes.Contains(r.Output, []byte("about to triple-fault")) {
					t.Fatalf("the script never ran; console:\n%s", r.Output)
				}
				if r.Status != protocol.ExitGuestCrash || !protocol.Crashed(r.Status, r.Output) {
					t.Errorf("flushvm exit status %d after a triple fault, want %d with a report line; console:\n%s",
						r.Status, protocol.ExitGuestCrash, r.Output)
				}
			},
		},
		{
			name: "kernel_panic",
			args: []string{"--kernel", a.Vmlinux, "--initrd", kernelPanic, "--append", cmdline("script")},
			check: func(t *testing.T, r harness.Result) {
				if !bytes.Contains(r.Output, []byte("about to panic")) {
					t.Fatalf("the script never ran; console:\n%s", r.Output)
				}
				rep, _ := protocol.FindCrashReport(r.Output)
				if r.Status != protocol.ExitGuestCrash || !protocol.Crashed(r.Status, r.Output) ||
					!strings.Contains(rep.Detail, " "+protocol.KernelPanicEvent+": ") {
					t.Errorf("flushvm exit status %d after a kernel panic, want %d with a report line naming %q; console:\n%s",
						r.Status, protocol.ExitGuestCrash, protocol.KernelPanicEvent, r.Output)
				}
			},
		},
		{
			name: "bad_kernel_file",
			args: []string{"--kernel", badKernel, "--initrd", a.Initramfs, "--append", cmdline("info")},
			check: func(t *testing.T, r harness.Result) {
				if r.Status != 2 {
					t.Errorf("flushvm exit status %d for a bad --kernel, want 2", r.Status)
				}
				lines := nonEmptyLines(r.Output)
				if len(lines) != 1 {
					t.Fatalf("want exactly one error line, got %d:\n%s", len(lines), r.Output)
				}
				if strings.Contains(lines[0], "panic") || !strings.Contains(lines[0], filepath.Base(badKernel)) {
					t.Errorf("error line %q should name the bad kernel file", lines[0])
				}
			},
		},
	})
}

func nonEmptyLines(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}
