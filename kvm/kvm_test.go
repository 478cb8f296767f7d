package kvm

import (
	"bytes"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testVM is a real-mode VM with memSize bytes of RAM at guest address 0 and
// one vCPU starting at codeAddr with code copied there.
type testVM struct {
	vm   *VM
	cpu  *VCPU
	mem  []byte
	sys  *System
	irqs bool
}

const (
	testMemSize  = 0x10000
	testCodeAddr = 0x1000
)

func newTestVM(t *testing.T, code []byte, irqchip bool) *testVM {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("no usable KVM: %v", err)
	}
	sys, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	tv := &testVM{sys: sys, irqs: irqchip}
	t.Cleanup(func() { tv.close(t) })
	if tv.vm, err = sys.CreateVM(); err != nil {
		t.Fatal(err)
	}
	if irqchip {
		if err := tv.vm.CreateIRQChip(); err != nil {
			t.Fatal(err)
		}
	}
	tv.mem, err = unix.Mmap(-1, 0, testMemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	copy(tv.mem[testCodeAddr:], code)
	if err := tv.vm.SetUserMemoryRegion(0, 0, tv.mem); err != nil {
		t.Fatal(err)
	}
	if tv.cpu, err = tv.vm.CreateVCPU(0); err != nil {
		t.Fatal(err)
	}
	s, err := tv.cpu.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	s.CS.Base, s.CS.Selector = 0, 0
	s.DS.Base, s.DS.Selector = 0, 0
	s.SS.Base, s.SS.Selector = 0, 0
	if err := tv.cpu.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := tv.cpu.SetRegs(Regs{RIP: testCodeAddr, RSP: 0x8000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	return tv
}

func (tv *testVM) close(t *testing.T) {
	if tv.cpu != nil {
		if err := tv.cpu.Close(); err != nil {
			t.Error(err)
		}
	}
	if tv.vm != nil {
		if err := tv.vm.Close(); err != nil {
			t.Error(err)
		}
	}
	if tv.mem != nil {
		unix.Munmap(tv.mem)
	}
	if err := tv.sys.Close(); err != nil {
		t.Error(err)
	}
}

// exitRecord is one user-space exit the test guest made.
type exitRecord struct {
	reason ExitReason
	port   uint16
	out    bool
	addr   uint64
	data   []byte
}

// run runs the guest until it writes to port 0xf4 or makes maxExits exits;
// inputs answers IN and MMIO reads in order.
func (tv *testVM) run(t *testing.T, maxExits int, inputs ...byte) []exitRecord {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// A guest that waits forever (say, for an interrupt that never comes)
	// is kicked out of KVM_RUN and fails the test.
	var expired atomic.Bool
	tid := unix.Gettid()
	timer := time.AfterFunc(10*time.Second, func() {
		expired.Store(true)
		tv.cpu.SetImmediateExit(true)
		unix.Tgkill(unix.Getpid(), tid, unix.SIGURG)
	})
	defer timer.Stop()
	var recs []exitRecord
	for len(recs) < maxExits {
		r, err := tv.cpu.Run()
		if errors.Is(err, ErrInterrupted) {
			if expired.Load() {
				t.Fatalf("guest still running after 10 s; exits so far: %+v", recs)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		rec := exitRecord{reason: r}
		switch r {
		case ExitIO:
			io, err := tv.cpu.IO()
			if err != nil {
				t.Fatal(err)
			}
			rec.port, rec.out = io.Port, io.Out
			if !io.Out && len(inputs) > 0 {
				io.Data[0], inputs = inputs[0], inputs[1:]
			}
			rec.data = append([]byte(nil), io.Data...)
		case ExitMMIO:
			m := tv.cpu.MMIO()
			rec.addr, rec.out = m.Addr, m.Write
			if !m.Write && len(inputs) > 0 {
				m.Data[0], inputs = inputs[0], inputs[1:]
			}
			rec.data = append([]byte(nil), m.Data...)
		case ExitHLT:
			recs = append(recs, rec)
			return recs
		default:
			sub, data := tv.cpu.InternalError()
			regs, _ := tv.cpu.Regs()
			t.Fatalf("unexpected exit %v (suberror %d %x) at RIP %#x", r, sub, data, regs.RIP)
		}
		recs = append(recs, rec)
		if rec.reason == ExitIO && rec.port == 0xf4 {
			return recs
		}
	}
	t.Fatalf("guest made more than %d exits", maxExits)
	return nil
}

// Real-mode code fragments.
var (
	// mov dx, 0x3f8; mov al, 'H'; out dx, al; mov al, 'i'; out dx, al;
	// in al, dx; out 0xf4, al
	codeSerial = []byte{0xba, 0xf8, 0x03, 0xb0, 'H', 0xee, 0xb0, 'i', 0xee, 0xec, 0xe6, 0xf4}
	// mov ax, 0x2000; mov ds, ax; mov byte [0x10], 0x5a; mov al, [0x11];
	// out 0xf4, al
	codeMMIO = []byte{0xb8, 0x00, 0x20, 0x8e, 0xd8, 0xc6, 0x06, 0x10, 0x00, 0x5a, 0xa0, 0x11, 0x00, 0xe6, 0xf4}
)

func TestRunExits(t *testing.T) {
	tests := []struct {
		name   string
		code   []byte
		inputs []byte
		want   []exitRecord
	}{
		{
			name:   "port I/O",
			code:   codeSerial,
			inputs: []byte{0x42},
			want: []exitRecord{
				{reason: ExitIO, port: 0x3f8, out: true, data: []byte{'H'}},
				{reason: ExitIO, port: 0x3f8, out: true, data: []byte{'i'}},
				{reason: ExitIO, port: 0x3f8, out: false, data: []byte{0x42}},
				{reason: ExitIO, port: 0xf4, out: true, data: []byte{0x42}},
			},
		},
		{
			name:   "MMIO outside memory slots",
			code:   codeMMIO,
			inputs: []byte{0x77},
			want: []exitRecord{
				{reason: ExitMMIO, addr: 0x20010, out: true, data: []byte{0x5a}},
				{reason: ExitMMIO, addr: 0x20011, out: false, data: []byte{0x77}},
				{reason: ExitIO, port: 0xf4, out: true, data: []byte{0x77}},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tv := newTestVM(t, tc.code, false)
			got := tv.run(t, 10, tc.inputs...)
			if len(got) != len(tc.want) {
				t.Fatalf("exits = %+v, want %+v", got, tc.want)
			}
			for i := range got {
				g, w := got[i], tc.want[i]
				if g.reason != w.reason || g.port != w.port || g.out != w.out || g.addr != w.addr || !bytes.Equal(g.data, w.data) {
					t.Errorf("exit %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

func TestIOEventFD(t *testing.T) {
	// mov dx, 0x500; mov al, 1; out dx, al (ioeventfd: no exit);
	// mov ax, 0x2000; mov ds, ax; mov byte [0], 1 (MMIO ioeventfd);
	// out 0xf4, al
	code := []byte{0xba, 0x00, 0x05, 0xb0, 0x01, 0xee, 0xb8, 0x00, 0x20, 0x8e, 0xd8, 0xc6, 0x06, 0x00, 0x00, 0x01, 0xe6, 0xf4}
	tv := newTestVM(t, code, false)
	var fds []int
	for _, reg := range []struct {
		addr uint64
		pio  bool
	}{{0x500, true}, {0x20000, false}} {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := tv.vm.IOEventFD(reg.addr, 0, fd, reg.pio, false); err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	got := tv.run(t, 5)
	if len(got) != 1 || got[0].port != 0xf4 {
		t.Fatalf("exits = %+v, want only the debug-exit OUT (ioeventfd writes must not exit)", got)
	}
	for i, fd := range fds {
		var b [8]byte
		if n, err := unix.Read(fd, b[:]); err != nil || n != 8 || b[0] != 1 {
			t.Errorf("eventfd %d: read %d %v %v, want a count of 1", i, n, b, err)
		}
	}
	if err := tv.vm.IOEventFD(0x500, 0, fds[0], true, true); err != nil {
		t.Errorf("deassign: %v", err)
	}
}

func TestIRQFDMSI(t *testing.T) {
	// IVT entry 0x40 -> 0:0x2000. Main: sti; hlt; (jmp back). Handler at
	// 0x2000: mov al, 0x99; out 0xf4, al.
	main := []byte{0xfb, 0xf4, 0xeb, 0xfd}
	tv := newTestVM(t, main, true)
	handler := []byte{0xb0, 0x99, 0xe6, 0xf4}
	copy(tv.mem[0x2000:], handler)
	tv.mem[0x40*4+0], tv.mem[0x40*4+1] = 0x00, 0x20 // offset 0x2000
	tv.mem[0x40*4+2], tv.mem[0x40*4+3] = 0, 0       // segment 0
	// Software-enable the local APIC (spurious vector register, 0xf0).
	l, err := tv.cpu.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	l.Regs[0xf0], l.Regs[0xf1] = 0xff, 0x01
	if err := tv.cpu.SetLAPIC(l); err != nil {
		t.Fatal(err)
	}
	// Default chip routes plus GSI 24 -> MSI to APIC 0, vector 0x40.
	var routes []RoutingEntry
	for gsi := uint32(0); gsi < 24; gsi++ {
		routes = append(routes, IRQChipRoute(gsi, IRQChipIOAPIC, gsi))
	}
	routes = append(routes, MSIRoute(24, 0xfee00000, 0x40))
	if err := tv.vm.SetGSIRouting(routes); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := tv.vm.IRQFD(fd, 24, false); err != nil {
		t.Fatal(err)
	}
	// Inject once the vCPU is (about to be) halted; an interrupt pending
	// before STI is also taken right after it.
	go func() {
		time.Sleep(20 * time.Millisecond)
		var one = []byte{1, 0, 0, 0, 0, 0, 0, 0}
		unix.Write(fd, one)
	}()
	got := tv.run(t, 5)
	if last := got[len(got)-1]; last.port != 0xf4 || !bytes.Equal(last.data, []byte{0x99}) {
		t.Fatalf("exits = %+v, want the interrupt handler's OUT 0x99 to 0xf4", got)
	}
	if err := tv.vm.IRQFD(fd, 24, true); err != nil {
		t.Errorf("irqfd deassign: %v", err)
	}
}

func TestSystemQueries(t *testing.T) {
	if err := Available(); err != nil {
		t.Skipf("no usable KVM: %v", err)
	}
	sys, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	for _, c := range []Cap{CapIRQChip, CapUserMemory, CapIOEventFD, CapIRQFD} {
		if sys.CheckExtension(c) <= 0 {
			t.Errorf("capability %d not reported", c)
		}
	}
	n, err := sys.VCPUMmapSize()
	if err != nil || n < 4096 {
		t.Errorf("VCPUMmapSize = %d, %v", n, err)
	}
	ids, err := sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range ids {
		if e.Function == 0 {
			found = true
		}
	}
	if !found {
		t.Errorf("supported CPUID (%d entries) lacks leaf 0", len(ids))
	}
}

func TestExitReasonString(t *testing.T) {
	tests := []struct {
		r    ExitReason
		want string
	}{
		{ExitIO, "IO"}, {ExitInternalError, "INTERNAL_ERROR"}, {ExitReason(99), "EXIT_99"},
	}
	for _, tc := range tests {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("%d.String() = %q, want %q", tc.r, got, tc.want)
		}
	}
}
