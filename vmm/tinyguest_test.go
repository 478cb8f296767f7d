package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flushvm/flushvm/kvm"
)

// makeBzImage wraps 64-bit code in the smallest image parseBzImage accepts:
// one setup sector with a boot protocol 2.15 header, and a protected-mode
// part whose offset 0x200 (the 64-bit entry point) holds code.
func makeBzImage(code []byte) []byte {
	const setupSects = 1
	img := make([]byte, (setupSects+1)*512+0x200+len(code))
	le := binary.LittleEndian
	img[hdrSetupSects] = setupSects
	le.PutUint16(img[hdrBootFlag:], bootFlagMagic)
	img[hdrEnd] = 0x66
	le.PutUint32(img[hdrMagic:], bootMagic)
	le.PutUint16(img[hdrVersion:], 0x020f)
	img[hdrLoadFlags] = loadedHigh
	le.PutUint32(img[hdrInitrdAddrMax:], 0x7fffffff)
	le.PutUint16(img[hdrXLoadFlags:], xlfKernel64)
	le.PutUint32(img[hdrCmdlineSize:], 2048)
	le.PutUint32(img[hdrInitSize:], 0x100000)
	payload := img[(setupSects+1)*512:]
	for i := 0; i < 0x200; i++ {
		payload[i] = 0x90
	}
	copy(payload[0x200:], code)
	return img
}

// 64-bit code fragments for tiny guests.
var (
	// Print the four bytes at [rsi+0x202] ("HdrS" in boot_params) and the
	// first four bytes of the command line, then debug-exit with status 3.
	codeBootCheck = concat(
		[]byte{0x8b, 0x86, 0x02, 0x02, 0x00, 0x00}, // mov eax, [rsi+0x202]
		[]byte{0x66, 0xba, 0xf8, 0x03},             // mov dx, 0x3f8
		out4,
		[]byte{0x8b, 0x9e, 0x28, 0x02, 0x00, 0x00}, // mov ebx, [rsi+0x228]
		[]byte{0x8b, 0x03},                         // mov eax, [rbx]
		out4,
		debugExit(3),
	)
	// out dx, al; shr eax, 8 (four times)
	out4 = []byte{0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee}
	// jmp $
	codeSpin = []byte{0xeb, 0xfe}
	// mov al, 0xfe; out 0x64, al; jmp $
	codeKbdReset = []byte{0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe}
	// mov al, 6; mov dx, 0xcf9; out dx, al; jmp $
	codeCF9Reset = []byte{0xb0, 0x06, 0x66, 0xba, 0xf9, 0x0c, 0xee, 0xeb, 0xfe}
	// Read the host bridge's vendor/device ID through ports 0xcf8/0xcfc and
	// print it, then debug-exit 0.
	codePCIProbe = concat(
		[]byte{0xb8, 0x00, 0x00, 0x00, 0x80}, // mov eax, 0x80000000
		[]byte{0x66, 0xba, 0xf8, 0x0c},       // mov dx, 0xcf8
		[]byte{0xef},                         // out dx, eax
		[]byte{0x66, 0xba, 0xfc, 0x0c},       // mov dx, 0xcfc
		[]byte{0xed},                         // in eax, dx
		[]byte{0x66, 0xba, 0xf8, 0x03},       // mov dx, 0x3f8
		out4,
		debugExit(0),
	)
	// Write 0x12345678 to 0xd0000000 (a PCI BAR) and debug-exit with the
	// low byte of the dword read back from 0xd0000004.
	codeMMIO = concat(
		[]byte{0xb9, 0x00, 0x00, 0x00, 0xd0},       // mov ecx, 0xd0000000
		[]byte{0xc7, 0x01, 0x78, 0x56, 0x34, 0x12}, // mov dword [rcx], 0x12345678
		[]byte{0x8b, 0x41, 0x04},                   // mov eax, [rcx+4]
		[]byte{0xe6, 0xf4},                         // out 0xf4, al
		[]byte{0xeb, 0xfe},                         // jmp $
	)
)

func debugExit(v byte) []byte { return []byte{0xb0, v, 0xe6, 0xf4, 0xeb, 0xfe} }

func concat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func skipWithoutKVM(t *testing.T) {
	t.Helper()
	if err := kvm.Available(); err != nil {
		t.Skipf("no usable KVM: %v", err)
	}
}

// runTiny boots code as a kernel and returns the result and serial output.
// before, if set, runs between New and Run.
func runTiny(t *testing.T, code []byte, cpus int, before func(*Machine)) (Result, string) {
	t.Helper()
	skipWithoutKVM(t)
	var out, diag bytes.Buffer
	m, err := New(Config{
		Kernel:  BytesImage(makeBzImage(code)),
		Cmdline: "test cmdline",
		MemSize: 64 << 20,
		CPUs:    cpus,
		Output:  &out,
		Diag:    &diag,
	})
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(m)
	}
	res := runBounded(t, m)
	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if diag.Len() > 0 {
		t.Logf("diagnostics:\n%s", diag.String())
	}
	return res, out.String()
}

// runBounded runs m, stopping it (and failing the test) if the guest has
// not ended after 20 s.
func runBounded(t *testing.T, m *Machine) Result {
	t.Helper()
	timer := time.AfterFunc(20*time.Second, func() {
		t.Errorf("guest did not end within 20 s; stopping it")
		m.Stop(99)
	})
	defer timer.Stop()
	return m.Run()
}

func TestTinyGuestEndings(t *testing.T) {
	tests := []struct {
		name       string
		code       []byte
		cpus       int
		stopAfter  time.Duration
		wantKind   ExitKind
		wantStatus int
		wantOut    string
	}{
		{"boot protocol and debug exit", codeBootCheck, 1, 0, ExitDebugPort, 3, "HdrStest"},
		{"two vCPUs, AP waiting for SIPI", codeBootCheck, 2, 0, ExitDebugPort, 3, "HdrStest"},
		{"keyboard controller reset", codeKbdReset, 1, 0, ExitReboot, 0, ""},
		{"port 0xcf9 reset", codeCF9Reset, 1, 0, ExitReboot, 0, ""},
		{"Stop while the guest spins", codeSpin, 2, 100 * time.Millisecond, ExitQuit, 7, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before func(*Machine)
			if tc.stopAfter > 0 {
				before = func(m *Machine) {
					time.AfterFunc(tc.stopAfter, func() { m.Stop(tc.wantStatus) })
				}
			}
			res, out := runTiny(t, tc.code, tc.cpus, before)
			if res.Kind != tc.wantKind || res.Status != tc.wantStatus {
				t.Errorf("result = %+v, want kind %d status %d", res, tc.wantKind, tc.wantStatus)
			}
			if out != tc.wantOut {
				t.Errorf("serial output = %q, want %q", out, tc.wantOut)
			}
		})
	}
}

// fakeFunction is a PCI function with one BAR at barAddr that records
// writes and answers reads with a fixed pattern.
type fakeFunction struct {
	barAddr, barSize uint64
	writes           []string
	closed           bool
}

func (f *fakeFunction) ReadConfig(offset uint32, data []byte) {
	for i := range data {
		data[i] = byte(offset) + byte(i)
	}
}
func (f *fakeFunction) WriteConfig(offset uint32, data []byte) {}
func (f *fakeFunction) HandleMMIO(addr uint64, data []byte, write bool) bool {
	if addr < f.barAddr || addr >= f.barAddr+f.barSize {
		return false
	}
	if write {
		f.writes = append(f.writes, fmtHex(addr-f.barAddr, data))
		return true
	}
	for i := range data {
		data[i] = 0xa0 + byte(addr-f.barAddr) + byte(i)
	}
	return true
}
func (f *fakeFunction) Close() error { f.closed = true; return nil }

func fmtHex(off uint64, data []byte) string {
	var sb strings.Builder
	sb.WriteString(string(rune('0' + off)))
	sb.WriteString(":")
	for i := len(data) - 1; i >= 0; i-- {
		const hex = "0123456789abcdef"
		sb.WriteByte(hex[data[i]>>4])
		sb.WriteByte(hex[data[i]&15])
	}
	return sb.String()
}

func TestTinyGuestPCI(t *testing.T) {
	f := &fakeFunction{barAddr: 0xd0000000, barSize: 0x1000}
	res, _ := runTiny(t, codeMMIO, 1, func(m *Machine) {
		if err := m.bus.attach(1, f); err != nil {
			t.Fatal(err)
		}
	})
	if res.Kind != ExitDebugPort || res.Status != 0xa4 {
		t.Errorf("result = %+v, want debug exit 0xa4 (the BAR's byte at offset 4)", res)
	}
	if want := []string{"0:12345678"}; len(f.writes) != 1 || f.writes[0] != want[0] {
		t.Errorf("BAR writes = %q, want %q", f.writes, want)
	}
	if !f.closed {
		t.Error("Close did not close the PCI function")
	}
}

func TestTinyGuestPCIConfig(t *testing.T) {
	res, out := runTiny(t, codePCIProbe, 1, nil)
	if res.Kind != ExitDebugPort || res.Status != 0 {
		t.Errorf("result = %+v, want debug exit 0", res)
	}
	want := string([]byte{0x36, 0x1b, 0x08, 0x00}) // vendor 0x1b36, device 0x0008
	if out != want {
		t.Errorf("host bridge ID bytes = %q, want %q", out, want)
	}
}

// TestFatalExitDiagnostics runs an instruction PVM hosts cannot emulate; on
// hosts that run it, the guest simply exits and the test has nothing to
// check.
func TestFatalExitDiagnostics(t *testing.T) {
	skipWithoutKVM(t)
	// lea rdi, [rip+0x100]; and rdi, -16; lock cmpxchg16b [rdi]; then exit 0
	code := concat(
		[]byte{0x48, 0x8d, 0x3d, 0x00, 0x01, 0x00, 0x00},
		[]byte{0x48, 0x83, 0xe7, 0xf0},
		[]byte{0xf0, 0x48, 0x0f, 0xc7, 0x0f},
		debugExit(0),
	)
	var out, diag bytes.Buffer
	m, err := New(Config{Kernel: BytesImage(makeBzImage(code)), MemSize: 64 << 20, CPUs: 1, Output: &out, Diag: &diag})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	res := runBounded(t, m)
	if res.Kind != ExitError {
		t.Skipf("this host's KVM ran cmpxchg16b (result %+v); no fatal exit to diagnose", res)
	}
	if !errors.Is(res.Err, ErrGuestUnrunnable) {
		t.Errorf("error %v does not wrap ErrGuestUnrunnable", res.Err)
	}
	d := diag.String()
	t.Logf("diagnostics:\n%s", d)
	for _, want := range []string{"KVM exit", "RIP 0x", "code at RIP: f0 48 0f c7 0f", "could not run the guest"} {
		if !strings.Contains(d, want) {
			t.Errorf("diagnostics lack %q:\n%s", want, d)
		}
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count fds: %v", err)
	}
	return len(ents)
}

// TestCloseReleasesEverything checks that a machine that ran, and one whose
// construction failed half-way, leave no file descriptor behind.
func TestCloseReleasesEverything(t *testing.T) {
	skipWithoutKVM(t)
	before := openFDs(t)
	for i := 0; i < 3; i++ {
		runTiny(t, codeBootCheck, 2, nil)
	}
	if _, err := New(Config{Kernel: BytesImage([]byte("garbage")), MemSize: 64 << 20, CPUs: 2}); !errors.Is(err, ErrBadKernel) {
		t.Errorf("New with a bad kernel: %v, want ErrBadKernel", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d fds open before, %d after", before, after)
	}
}

// makeVmlinux wraps 64-bit code in a minimal x86-64 ELF executable whose one
// segment loads at physical 2 MiB, entry point at the code.
func makeVmlinux(code []byte) []byte {
	const base, ehsize, phsize = 0x200000, 64, 56
	img := make([]byte, ehsize+phsize+len(code))
	le := binary.LittleEndian
	copy(img, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1})
	le.PutUint16(img[16:], 2)  // ET_EXEC
	le.PutUint16(img[18:], 62) // EM_X86_64
	le.PutUint32(img[20:], 1)
	le.PutUint64(img[24:], base+ehsize+phsize) // entry
	le.PutUint64(img[32:], ehsize)             // phoff
	le.PutUint16(img[52:], ehsize)
	le.PutUint16(img[54:], phsize)
	le.PutUint16(img[56:], 1) // phnum
	ph := img[ehsize:]
	le.PutUint32(ph[0:], 1) // PT_LOAD
	le.PutUint32(ph[4:], 5) // R+X
	le.PutUint64(ph[16:], 0xffffffff80000000+base)
	le.PutUint64(ph[24:], base)
	le.PutUint64(ph[32:], uint64(len(img)))
	le.PutUint64(ph[40:], uint64(len(img))+0x1000) // some .bss
	copy(img[ehsize+phsize:], code)
	return img
}

func TestTinyGuestVmlinux(t *testing.T) {
	skipWithoutKVM(t)
	tests := []struct {
		name    string
		kernel  []byte
		wantErr string
	}{
		{"ELF vmlinux boots", makeVmlinux(codeBootCheck), ""},
		{"32-bit ELF", func() []byte { b := makeVmlinux(codeBootCheck); b[4] = 1; return b }(), "bootable"},
		{"segment past the end of the file", func() []byte {
			b := makeVmlinux(codeBootCheck)
			binary.LittleEndian.PutUint64(b[64+32:], uint64(len(b))+1)
			return b
		}(), "past the end"},
		{"segment outside RAM", func() []byte {
			b := makeVmlinux(codeBootCheck)
			binary.LittleEndian.PutUint64(b[64+24:], 1<<40)
			return b
		}(), "does not fit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			m, err := New(Config{Kernel: BytesImage(tc.kernel), Cmdline: "test", MemSize: 64 << 20, CPUs: 1, Output: &out})
			if tc.wantErr != "" {
				if !errors.Is(err, ErrBadKernel) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("New: %v, want ErrBadKernel mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			res := runBounded(t, m)
			if res.Kind != ExitDebugPort || res.Status != 3 || out.String() != "HdrStest" {
				t.Errorf("result %+v, output %q; want debug exit 3 and %q", res, out.String(), "HdrStest")
			}
		})
	}
}

// TestTinyGuestPause pauses a spinning two-vCPU guest (both vCPUs leave
// KVM_RUN and wait), resumes it, pauses it again and stops it while
// paused: Run ends with the stop's status, so a paused machine can always
// be stopped.
func TestTinyGuestPause(t *testing.T) {
	waitPaused := func(m *Machine, want int) {
		deadline := time.Now().Add(10 * time.Second)
		for m.pausedVCPUs() != want {
			if time.Now().After(deadline) {
				t.Errorf("%d vCPUs paused, want %d", m.pausedVCPUs(), want)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	res, _ := runTiny(t, codeSpin, 2, func(m *Machine) {
		go func() {
			time.Sleep(100 * time.Millisecond)
			m.Pause()
			waitPaused(m, 2)
			m.Resume()
			waitPaused(m, 0)
			if m.Paused() {
				t.Error("Paused after Resume")
			}
			m.Pause()
			waitPaused(m, 2)
			m.Stop(7)
		}()
	})
	if res.Kind != ExitQuit || res.Status != 7 {
		t.Errorf("result %+v, want ExitQuit 7", res)
	}
}
