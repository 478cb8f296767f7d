package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/kvm"
	"github.com/flushvm/flushvm/protocol"
)

// tinyKernel is a bzImage whose 64-bit entry point prints "ok" on the serial
// port and ends the VMM with status 3 through the debug-exit port.
func tinyKernel() []byte {
	code := []byte{
		0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
		0xb0, 'o', 0xee, // mov al, 'o'; out dx, al
		0xb0, 'k', 0xee, // mov al, 'k'; out dx, al
		0xb0, 0x03, 0xe6, 0xf4, // mov al, 3; out 0xf4, al
		0xeb, 0xfe, // jmp $
	}
	img := make([]byte, 2*512+0x200+len(code))
	le := binary.LittleEndian
	img[0x1f1] = 1                        // setup_sects
	le.PutUint16(img[0x1fe:], 0xaa55)     // boot_flag
	img[0x201] = 0x66                     // header end
	le.PutUint32(img[0x202:], 0x53726448) // "HdrS"
	le.PutUint16(img[0x206:], 0x020f)     // protocol 2.15
	img[0x211] = 1                        // LOADED_HIGH
	le.PutUint32(img[0x22c:], 0x7fffffff) // initrd_addr_max
	le.PutUint16(img[0x236:], 1)          // XLF_KERNEL_64
	le.PutUint32(img[0x238:], 2048)       // cmdline_size
	le.PutUint32(img[0x260:], 0x100000)   // init_size
	copy(img[2*512+0x200:], code)
	return img
}

func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(kernel, tinyKernel(), 0o644); err != nil {
		t.Fatal(err)
	}
	notKernel := filepath.Join(dir, "notkernel")
	os.WriteFile(notKernel, bytes.Repeat([]byte("not a kernel\n"), 100), 0o644)
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	stats := filepath.Join(dir, "stats.json")
	big := filepath.Join(dir, "big")
	if f, err := os.Create(big); err == nil {
		f.Truncate(17 << 20) // sparse: larger than --mem 16M
		f.Close()
	}
	haveKVM := kvm.Available() == nil

	tests := []struct {
		name       string
		args       []string
		needKVM    bool
		wantStatus int
		wantOut    string // substring of stdout
		wantErr    string // substring of stderr; "" means stderr must be empty
	}{
		{"no command", nil, false, 2, "", "Usage: flushvm COMMAND"},
		{"help", []string{"help"}, false, 0, "run ", ""},
		{"version", []string{"version"}, false, 0, "flushvm ", ""},
		{"--version", []string{"--version"}, false, 0, "flushvm ", ""},
		{"vhost-user-blk --help", []string{"vhost-user-blk", "--help"}, false, 0, "Flags:", ""},
		{"help run", []string{"help", "run"}, false, 0, "--kernel", ""},
		{"run --help", []string{"run", "--help"}, false, 0, "e.g. --disk path=", ""},
		{"run --help names the debug-exit port", []string{"run", "-h"}, false, 0, "0xf4", ""},
		{"unknown command", []string{"frobnicate"}, false, 2, "", "unknown command"},
		{"missing --kernel", []string{"run"}, false, 2, "", "--kernel FILE is required"},
		{"unknown flag", []string{"run", "--kernel", kernel, "--bogus"}, false, 2, "", "unknown flag"},
		{"stray argument", []string{"run", "--kernel", kernel, "extra"}, false, 2, "", "unexpected argument"},
		{"kernel file missing", []string{"run", "--kernel", filepath.Join(dir, "nope")}, false, 2, "", "no such file"},
		{"bad --mem", []string{"run", "--kernel", kernel, "--mem", "12Q"}, false, 2, "", "--mem"},
		{"bad --cpus", []string{"run", "--kernel", kernel, "--cpus", "0"}, false, 2, "", "--cpus 0"},
		{"bad disk spec", []string{"run", "--kernel", kernel, "--disk", "pathh=x"}, false, 2, "", "bad disk spec"},
		{"disk file missing", []string{"run", "--kernel", kernel, "--disk", "path=" + filepath.Join(dir, "none.img")}, false, 2, "", "no such file"},
		{"disk is a directory", []string{"run", "--kernel", kernel, "--disk", "path=" + dir}, false, 2, "", "is a directory"},
		{"disk is a character device", []string{"run", "--kernel", kernel, "--disk", "path=/dev/null"}, false, 2, "", "not a regular file or a block device"},
		{"--mem below the minimum", []string{"run", "--kernel", kernel, "--mem", "8M"}, false, 2, "", "at least 16M"},
		{"bare --mem is bytes", []string{"run", "--kernel", kernel, "--mem", "512"}, false, 2, "", "a bare number is bytes: write 512M for MiB"},
		{"kernel is a device", []string{"run", "--kernel", "/dev/zero"}, false, 2, "", "not a regular file"},
		{"kernel larger than memory", []string{"run", "--kernel", big, "--mem", "16M"}, false, 2, "", "more than the guest's"},
		{"not a bzImage", []string{"run", "--kernel", notKernel}, true, 2, "", "not a bootable bzImage"},
		{"guest status", []string{"run", "--kernel", kernel, "--mem", "64M"}, true, 3, "ok", ""},
		{"guest status, 2 vCPUs, disk, stats", []string{"run", "--kernel", kernel, "--mem", "64M", "--cpus", "2", "--disk", "path=" + img + ",cache=writethrough", "--stats", stats}, true, 3, "ok", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needKVM && !haveKVM {
				t.Skip("no usable KVM")
			}
			var stdout, stderr bytes.Buffer
			got := dispatch(tc.args, &stdout, &stderr)
			if got != tc.wantStatus {
				t.Errorf("status %d, want %d; stderr: %s", got, tc.wantStatus, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.wantOut) {
				t.Errorf("stdout %q lacks %q", stdout.String(), tc.wantOut)
			}
			if tc.wantErr == "" && stderr.Len() > 0 || !strings.Contains(stderr.String(), tc.wantErr) {
				t.Errorf("stderr %q, want %q", stderr.String(), tc.wantErr)
			}
			if tc.wantStatus == 2 && tc.wantErr != "" && !strings.Contains(tc.wantErr, "Usage") {
				if n := strings.Count(stderr.String(), "\n"); n != 1 {
					t.Errorf("user error took %d lines, want one: %q", n, stderr.String())
				}
			}
		})
	}
	if !haveKVM {
		return
	}
	b, err := os.ReadFile(stats)
	if err != nil {
		t.Fatalf("--stats file: %v", err)
	}
	var doc disk.Stats
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Disks) != 1 || doc.Disks[0].Path != img || doc.Disks[0].Cache != blk.CacheWritethrough {
		t.Errorf("stats = %+v, want one writethrough disk %s", doc, img)
	}
}

// TestREADMEExitStatuses keeps the README's tables of how flushvm run and
// flushvm crashtest end the same as protocol's, which their --help print.
func TestREADMEExitStatuses(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range append(append([]protocol.ExitStatusRow{}, protocol.RunExitStatuses...), protocol.CrashtestExitStatuses...) {
		if line := "| " + row.When + " | " + row.Status + " |"; !strings.Contains(string(b), line) {
			t.Errorf("README lacks the row %q", line)
		}
	}
}
