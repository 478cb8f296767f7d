package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flushvm/flushvm/kvm"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

func TestLayout(t *testing.T) {
	tests := []struct {
		size              uint64
		low, high, ramEnd uint64
		mmioBase          uint64
	}{
		{512 << 20, 512 << 20, 0, 512 << 20, 4 << 30},
		{3 << 30, 3 << 30, 0, 3 << 30, 4 << 30},
		{4 << 30, 3 << 30, 1 << 30, 5 << 30, 5 << 30},
		{(4 << 30) + 4096, 3 << 30, (1 << 30) + 4096, (5 << 30) + 4096, 6 << 30},
	}
	for _, tc := range tests {
		l := layoutFor(tc.size)
		if l.lowSize != tc.low || l.highSize != tc.high || l.ramEnd() != tc.ramEnd || l.mmioBase() != tc.mmioBase {
			t.Errorf("layoutFor(%#x) = %+v (end %#x, mmio %#x), want low %#x high %#x end %#x mmio %#x",
				tc.size, l, l.ramEnd(), l.mmioBase(), tc.low, tc.high, tc.ramEnd, tc.mmioBase)
		}
	}
}

func TestE820Map(t *testing.T) {
	tests := []struct {
		size uint64
		want []e820Entry
	}{
		{512 << 20, []e820Entry{{0, ebdaStart, e820RAM}, {ebdaStart, highMemStart - ebdaStart, e820Reserved}, {highMemStart, (512 << 20) - highMemStart, e820RAM}}},
		{4 << 30, []e820Entry{{0, ebdaStart, e820RAM}, {ebdaStart, highMemStart - ebdaStart, e820Reserved}, {highMemStart, memHoleStart - highMemStart, e820RAM}, {1 << 32, 1 << 30, e820RAM}}},
	}
	for _, tc := range tests {
		got := e820Map(layoutFor(tc.size))
		if len(got) != len(tc.want) {
			t.Fatalf("e820Map(%#x) = %+v, want %+v", tc.size, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("e820Map(%#x)[%d] = %+v, want %+v", tc.size, i, got[i], tc.want[i])
			}
		}
	}
}

func TestParseBzImageRejects(t *testing.T) {
	good := makeBzImage([]byte{0xf4})
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := []struct {
		name string
		img  []byte
		want string
	}{
		{"empty", nil, "too short"},
		{"ELF or text", mutate(func(b []byte) []byte { copy(b[hdrMagic:], "ELF!"); return b }), "no Linux boot header"},
		{"no boot flag", mutate(func(b []byte) []byte { b[hdrBootFlag] = 0; return b }), "no Linux boot header"},
		{"old protocol", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[hdrVersion:], 0x0204); return b }), "boot protocol"},
		{"zImage", mutate(func(b []byte) []byte { b[hdrLoadFlags] = 0; return b }), "zImage"},
		{"32-bit only", mutate(func(b []byte) []byte { b[hdrXLoadFlags] = 0; return b }), "64-bit entry"},
		{"setup past the end", mutate(func(b []byte) []byte { b[hdrSetupSects] = 200; return b }), "larger than the file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseBzImage(tc.img, int64(len(tc.img)))
			if !errors.Is(err, ErrBadKernel) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseBzImage: %v, want ErrBadKernel mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := parseBzImage(good, int64(len(good))); err != nil {
		t.Errorf("parseBzImage(good, int64(len(good))): %v", err)
	}
}

func testMemory(t *testing.T, size uint64) (*guestmem.Memory, memLayout) {
	t.Helper()
	l := layoutFor(size)
	mem, err := guestmem.New(guestmem.Region{GuestAddr: 0, Host: make([]byte, l.lowSize)})
	if err != nil {
		t.Fatal(err)
	}
	return mem, l
}

func TestLoadKernel(t *testing.T) {
	code := []byte{0xf4, 0xeb, 0xfe}
	tests := []struct {
		name       string
		mem        uint64
		initrd     int
		cmdline    string
		wantErr    string
		wantInitrd uint64
	}{
		{"no initrd", 64 << 20, 0, "console=ttyS0", "", 0},
		{"initrd at the top of memory", 64 << 20, 5000, "x", "", (64<<20 - 5000) &^ 0xfff},
		{"initrd too big", 32 << 20, 20 << 20, "", "do not fit", 0},
		{"memory too small", 16 << 20, 0, "", "give the guest more memory", 0},
		{"command line too long", 64 << 20, 0, strings.Repeat("a", 2048), "command line", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem, l := testMemory(t, tc.mem)
			initrd := bytes.Repeat([]byte{0xab}, tc.initrd)
			entry, err := loadKernel(mem, l, BytesImage(makeBzImage(code)), BytesImage(initrd), tc.cmdline)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("loadKernel: %v, want error mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if entry != kernelAddr+0x200 {
				t.Errorf("entry = %#x, want %#x", entry, kernelAddr+0x200)
			}
			zp := make([]byte, pageSize)
			if err := mem.ReadAt(zp, zeroPageAddr); err != nil {
				t.Fatal(err)
			}
			le := binary.LittleEndian
			if le.Uint32(zp[hdrMagic:]) != bootMagic || zp[hdrTypeOfLoader] != loaderUndefined {
				t.Errorf("zero page header not copied / loader type not set")
			}
			if got := le.Uint32(zp[hdrRamdiskImage:]); uint64(got) != tc.wantInitrd {
				t.Errorf("ramdisk_image = %#x, want %#x", got, tc.wantInitrd)
			}
			if got := le.Uint32(zp[hdrRamdiskSize:]); int(got) != tc.initrd {
				t.Errorf("ramdisk_size = %d, want %d", got, tc.initrd)
			}
			if tc.initrd > 0 {
				b := make([]byte, tc.initrd)
				mem.ReadAt(b, tc.wantInitrd)
				if !bytes.Equal(b, initrd) {
					t.Errorf("initrd not copied")
				}
			}
			cl := make([]byte, len(tc.cmdline)+1)
			mem.ReadAt(cl, uint64(le.Uint32(zp[hdrCmdLinePtr:])))
			if string(cl) != tc.cmdline+"\x00" {
				t.Errorf("command line = %q, want %q", cl, tc.cmdline)
			}
			if n := int(zp[bpE820Entries]); n != len(e820Map(l)) {
				t.Errorf("e820 entries = %d, want %d", n, len(e820Map(l)))
			}
			at := make([]byte, len(code))
			mem.ReadAt(at, entry)
			if !bytes.Equal(at, code) {
				t.Errorf("64-bit entry point holds % x, want % x", at, code)
			}
		})
	}
}

func TestBootPageTablesTranslate(t *testing.T) {
	mem, _ := testMemory(t, 64<<20)
	if err := writeBootTables(mem); err != nil {
		t.Fatal(err)
	}
	s := kvm.Sregs{CR0: cr0PE | cr0PG, CR3: pml4Addr, CR4: cr4PAE, EFER: eferLME | eferLMA}
	for _, lin := range []uint64{0, 0x1234, kernelAddr + 0x200, 0x3fffffff, 0xfee00000} {
		got, err := translate(mem, s, lin)
		if err != nil || got != lin {
			t.Errorf("translate(%#x) = %#x, %v; want the identity", lin, got, err)
		}
	}
	if _, err := translate(mem, s, 1<<32); err == nil {
		t.Errorf("translate(4 GiB) succeeded; the boot map covers only 4 GiB")
	}
	d := segmentFromDescriptor(bootCS, bootGDT[2])
	if d.L != 1 || d.Present != 1 || d.S != 1 || d.Type != 0xb || d.Limit != 0xffffffff {
		t.Errorf("boot code segment = %+v, want a present 64-bit code segment", d)
	}
}

// parseMP checks the floating pointer and table checksums and returns the
// entries by type.
func parseMP(t *testing.T, b []byte) map[byte][][]byte {
	t.Helper()
	if string(b[:4]) != "_MP_" || checksum(b[:16]) != 0 {
		t.Fatalf("bad floating pointer % x", b[:16])
	}
	table := b[16:]
	n := int(binary.LittleEndian.Uint16(table[4:]))
	if string(table[:4]) != "PCMP" || checksum(table[:n]) != 0 {
		t.Fatalf("bad configuration table header")
	}
	count := int(binary.LittleEndian.Uint16(table[34:]))
	out := map[byte][][]byte{}
	off := mpHeaderSize
	for i := 0; i < count; i++ {
		size := 8
		if table[off] == mpEntryProcessor {
			size = 20
		}
		out[table[off]] = append(out[table[off]], table[off:off+size])
		off += size
	}
	if off != n {
		t.Errorf("entries end at %d, table length %d", off, n)
	}
	return out
}

func TestMPTable(t *testing.T) {
	tests := []struct {
		cpus  int
		slots []int
	}{
		{1, nil},
		{2, []int{1}},
		{8, []int{1, 2, 3, 9}},
	}
	for _, tc := range tests {
		b, err := buildMPTable(mpConfig{cpus: tc.cpus, cpuSig: 0x600, pciSlots: tc.slots}, mpTableAddr)
		if err != nil {
			t.Fatal(err)
		}
		e := parseMP(t, b)
		if got := len(e[mpEntryProcessor]); got != tc.cpus {
			t.Errorf("%d CPUs: %d processor entries", tc.cpus, got)
		}
		for i, p := range e[mpEntryProcessor] {
			bsp := p[3]&mpCPUBSP != 0
			if int(p[1]) != i || p[3]&mpCPUEnabled == 0 || bsp != (i == 0) {
				t.Errorf("processor entry %d = % x", i, p)
			}
		}
		if len(e[mpEntryBus]) != 2 || len(e[mpEntryIOAPIC]) != 1 || len(e[mpEntryLocalInt]) != 2 {
			t.Errorf("buses %d, IOAPICs %d, local interrupts %d; want 2, 1, 2", len(e[mpEntryBus]), len(e[mpEntryIOAPIC]), len(e[mpEntryLocalInt]))
		}
		if id := e[mpEntryIOAPIC][0][1]; int(id) != tc.cpus {
			t.Errorf("IOAPIC id %d collides with CPU APIC IDs 0..%d", id, tc.cpus-1)
		}
		var isa, pci int
		for _, io := range e[mpEntryIOInt] {
			switch io[4] {
			case mpBusISA:
				isa++
				if io[5] != io[7] {
					t.Errorf("ISA IRQ %d routed to pin %d", io[5], io[7])
				}
			case mpBusPCI:
				pci++
				slot := int(io[5] >> 2)
				if io[7] != pciPin(slot) || binary.LittleEndian.Uint16(io[2:]) != mpFlagsLevelHigh {
					t.Errorf("PCI slot %d interrupt entry % x", slot, io)
				}
			}
		}
		if isa != 15 || pci != len(tc.slots) {
			t.Errorf("%d ISA and %d PCI interrupt entries, want 15 and %d", isa, pci, len(tc.slots))
		}
	}
	if _, err := buildMPTable(mpConfig{cpus: 0}, mpTableAddr); err == nil {
		t.Error("0 CPUs accepted")
	}
	if _, err := buildMPTable(mpConfig{cpus: 1, pciSlots: []int{32}}, mpTableAddr); err == nil {
		t.Error("PCI slot 32 accepted")
	}
}

func TestCPUIDFor(t *testing.T) {
	supported := []kvm.CPUIDEntry{
		{Function: 0, EAX: 0xd},
		{Function: cpuidFeatures, EAX: 0x600, EBX: 0xffff0800, ECX: 0},
		{Function: cpuidExtTopology, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex},
		{Function: cpuidExtTopology, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex},
		{Function: cpuidV2Topology},
		{Function: cpuidKVMSignature, EAX: cpuidKVMFeatures},
		{Function: cpuidKVMFeatures, EAX: 0x1234},
		{Function: cpuidExtFeatures, ECX: cpuidExtECXTopoExt | 1},
	}
	tests := []struct {
		id, n       int
		deadline    bool
		wantLeaf1   uint32 // EBX
		wantCores   uint32 // leaf 0xb subleaf 1 EBX
		wantLogical uint32 // bits of cores
	}{
		{0, 1, false, 0x00010800, 1, 0},
		{3, 4, true, 0x03040800, 4, 2},
	}
	for _, tc := range tests {
		got := cpuidFor(supported, tc.id, tc.n, tc.deadline)
		find := func(fn, idx uint32) *kvm.CPUIDEntry {
			for i := range got {
				if got[i].Function == fn && got[i].Index == idx {
					return &got[i]
				}
			}
			return nil
		}
		l1 := find(cpuidFeatures, 0)
		if l1.EBX != tc.wantLeaf1 || l1.ECX&cpuid1ECXHypervisor == 0 || (l1.ECX&cpuid1ECXTSCDeadline != 0) != tc.deadline {
			t.Errorf("vCPU %d/%d leaf 1 = %+v", tc.id, tc.n, *l1)
		}
		if e := find(cpuidExtTopology, 1); e.EBX != tc.wantCores || e.EDX != uint32(tc.id) || e.EAX != tc.wantLogical {
			t.Errorf("vCPU %d/%d leaf 0xb.1 = %+v", tc.id, tc.n, *e)
		}
		if find(cpuidV2Topology, 0) != nil {
			t.Errorf("leaf 0x1f kept")
		}
		if e := find(cpuidExtFeatures, 0); e.ECX&cpuidExtECXTopoExt != 0 {
			t.Errorf("TOPOEXT kept")
		}
		sig := find(cpuidKVMSignature, 0)
		var name [12]byte
		binary.LittleEndian.PutUint32(name[0:], sig.EBX)
		binary.LittleEndian.PutUint32(name[4:], sig.ECX)
		binary.LittleEndian.PutUint32(name[8:], sig.EDX)
		if string(name[:9]) != "KVMKVMKVM" || find(cpuidKVMFeatures, 0).EAX != 0x1234 {
			t.Errorf("KVM leaves = %+v %q", *sig, name)
		}
	}
	// Without KVM's leaves, they are added with no features.
	got := cpuidFor(supported[:2], 0, 1, false)
	if len(got) != 4 || got[2].Function != cpuidKVMSignature || got[3].Function != cpuidKVMFeatures || got[3].EAX != 0 {
		t.Errorf("leaves added for a host without KVM leaves: %+v", got)
	}
}

func TestSerial(t *testing.T) {
	type op struct {
		write bool
		reg   uint16
		val   uint8 // written, or expected when reading
	}
	tests := []struct {
		name      string
		input     string
		ops       []op
		wantOut   string
		wantLevel bool
	}{
		{"transmit", "", []op{{true, uartRBR, 'o'}, {true, uartRBR, 'k'}, {false, uartLSR, lsrTHRE | lsrTEMT}}, "ok", false},
		{"receive with interrupt", "ab", []op{{true, uartIER, ierRDI}, {false, uartIIR, iirRDI}, {false, uartLSR, lsrTHRE | lsrTEMT | lsrDR}, {false, uartRBR, 'a'}, {false, uartRBR, 'b'}, {false, uartIIR, iirNone}}, "", false},
		{"THRE interrupt on enable, cleared by IIR read", "", []op{{true, uartIER, ierTHRI}, {false, uartIIR, iirTHRI}, {false, uartIIR, iirNone}}, "", false},
		{"THRE pending after a write", "", []op{{true, uartIER, ierTHRI}, {false, uartIIR, iirTHRI}, {true, uartRBR, 'x'}}, "x", true},
		{"FIFO bits in IIR", "", []op{{true, uartIIR, fcrEnable}, {false, uartIIR, iirNone | iirFIFOsOn}}, "", false},
		{"divisor latch", "", []op{{true, uartLCR, lcrDLAB}, {true, uartRBR, 1}, {true, uartIER, 2}, {false, uartRBR, 1}, {false, uartIER, 2}, {true, uartLCR, 3}, {false, uartIER, 0}}, "", false},
		{"loopback modem status (Linux's probe)", "", []op{{true, uartMCR, mcrLoop | 0x0a}, {false, uartMSR, 0x90}}, "", false},
		{"loopback data", "", []op{{true, uartMCR, mcrLoop}, {true, uartRBR, 'z'}, {false, uartRBR, 'z'}}, "", false},
		{"scratch", "", []op{{true, uartSCR, 0x5a}, {false, uartSCR, 0x5a}}, "", false},
		{"FIFO clear drops input", "q", []op{{true, uartIIR, fcrEnable | fcrClearRX}, {false, uartLSR, lsrTHRE | lsrTEMT}}, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			var level bool
			s := newSerial(&out, func(l bool) { level = l })
			s.Receive([]byte(tc.input))
			for i, o := range tc.ops {
				if o.write {
					s.Out(o.reg, o.val)
				} else if got := s.In(o.reg); got != o.val {
					t.Errorf("op %d: read reg %d = %#x, want %#x", i, o.reg, got, o.val)
				}
			}
			s.startOutput()
			s.stopOutput() // flushes the queue
			if out.String() != tc.wantOut || level != tc.wantLevel {
				t.Errorf("output %q level %v, want %q %v", out.String(), level, tc.wantOut, tc.wantLevel)
			}
		})
	}
}

func TestSerialReceiveBound(t *testing.T) {
	s := newSerial(nil, nil)
	s.Receive(make([]byte, rxBufferMax+10))
	s.Receive([]byte{1})
	if len(s.rx) != rxBufferMax {
		t.Errorf("receive backlog %d, want it bounded at %d", len(s.rx), rxBufferMax)
	}
}

// TestSerialConsoleLine: the line hook gets each transmitted line, bounded,
// without its line end, and runs without the serial's lock held (it may
// touch the serial itself).
func TestSerialConsoleLine(t *testing.T) {
	long := strings.Repeat("x", MaxConsoleLine+88)
	tests := []struct {
		name string
		mcr  uint8 // set before transmitting
		lcr  uint8
		tx   string
		want []string
	}{
		{name: "one line", tx: "ACK x 1\n", want: []string{"ACK x 1"}},
		{name: "CRLF", tx: "ACK x 1\r\n", want: []string{"ACK x 1"}},
		{name: "two lines and a partial one", tx: "a\nb c\nd", want: []string{"a", "b c"}},
		{name: "empty line", tx: "\n", want: []string{""}},
		{name: "long line is cut", tx: long + "\nok\n", want: []string{long[:MaxConsoleLine], "ok"}},
		{name: "loopback is not transmitted", mcr: mcrLoop, tx: "a\n"},
		{name: "divisor latch is not transmitted", lcr: lcrDLAB, tx: "a\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			s := newSerial(&bytes.Buffer{}, nil)
			s.lineHook = func(line []byte) {
				s.In(uartLSR) // would deadlock with the lock held
				got = append(got, string(line))
			}
			s.Out(uartMCR, tc.mcr)
			s.Out(uartLCR, tc.lcr)
			for i := range len(tc.tx) {
				s.Out(uartRBR, tc.tx[i])
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") || len(got) != len(tc.want) {
				t.Errorf("lines %q, want %q", got, tc.want)
			}
		})
	}
}

func TestPCIBusConfig(t *testing.T) {
	b := newPCIBus()
	f := &fakeFunction{barAddr: 0x1000, barSize: 0x100}
	if err := b.attach(1, f); err != nil {
		t.Fatal(err)
	}
	if err := b.attach(1, f); err == nil {
		t.Error("slot 1 attached twice")
	}
	if err := b.attach(0, f); err == nil {
		t.Error("slot 0 (the host bridge) attached")
	}
	addr := func(dev, reg uint32) []byte {
		var a [4]byte
		binary.LittleEndian.PutUint32(a[:], pciEnableBit|dev<<11|reg)
		return a[:]
	}
	tests := []struct {
		name string
		addr []byte
		port uint16
		size int
		want []byte
	}{
		{"host bridge vendor/device", addr(0, 0), portPCIData, 4, []byte{0x36, 0x1b, 0x08, 0x00}},
		{"host bridge class, byte access", addr(0, 8), portPCIData + 3, 1, []byte{0x06}},
		{"function config", addr(1, 0x10), portPCIData + 2, 2, []byte{0x12, 0x13}},
		{"empty slot", addr(5, 0), portPCIData, 4, []byte{0xff, 0xff, 0xff, 0xff}},
		{"address register read back", addr(3, 0x44), portPCIAddress, 4, addr(3, 0x44)},
		{"disabled address", []byte{0, 0, 0, 0}, portPCIData, 4, []byte{0xff, 0xff, 0xff, 0xff}},
	}
	for _, tc := range tests {
		b.ioOut(portPCIAddress, tc.addr)
		got := make([]byte, tc.size)
		b.ioIn(tc.port, got)
		if !bytes.Equal(got, tc.want) {
			t.Errorf("%s: read % x, want % x", tc.name, got, tc.want)
		}
	}
	// Function 1 of slot 1 does not exist.
	var a [4]byte
	binary.LittleEndian.PutUint32(a[:], pciEnableBit|1<<11|1<<8)
	b.ioOut(portPCIAddress, a[:])
	got := make([]byte, 2)
	b.ioIn(portPCIData, got)
	if !bytes.Equal(got, []byte{0xff, 0xff}) {
		t.Errorf("function 1 reads % x, want ff ff", got)
	}
	if !b.mmio(0x1010, make([]byte, 4), true) || b.mmio(0x2000, make([]byte, 4), true) {
		t.Error("MMIO dispatch by BAR range wrong")
	}
	if err := b.close(); err != nil || !f.closed {
		t.Errorf("close: %v, function closed %v", err, f.closed)
	}
}

func TestCMOSClock(t *testing.T) {
	c := newCMOS()
	c.now = func() time.Time { return time.Date(2026, 11, 24, 3, 4, 59, 0, time.UTC) }
	tests := []struct {
		reg  uint8
		want uint8
	}{
		{rtcSeconds, 0x59}, {rtcMinutes, 0x04}, {rtcHours, 0x03}, {rtcDay, 0x24},
		{rtcMonth, 0x11}, {rtcYear, 0x26}, {rtcCentury, 0x20}, {rtcWeekday, 0x03},
		{rtcStatusA, rtcA32kHz}, {rtcStatusB, rtcB24Hour}, {rtcStatusD, rtcDValid},
	}
	for _, tc := range tests {
		c.Out(portCMOSIndex, tc.reg|cmosNMIMask)
		if got := c.In(portCMOSData); got != tc.want {
			t.Errorf("CMOS register %#x = %#x, want %#x", tc.reg, got, tc.want)
		}
	}
	c.Out(portCMOSIndex, 0x40)
	c.Out(portCMOSData, 0x77)
	if got := c.In(portCMOSData); got != 0x77 {
		t.Errorf("CMOS RAM byte = %#x, want 0x77", got)
	}
}

// blockingWriter blocks every Write until release is closed.
type blockingWriter struct {
	release chan struct{}
	mu      sync.Mutex
	got     []byte
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	w.got = append(w.got, p...)
	return len(p), nil
}

// TestSerialOutputBackpressure checks that a host output that does not take
// data never blocks the guest's register accesses, that the guest sees the
// transmitter busy once the queue is full, and that it gets a THRE interrupt
// when the queue drains.
func TestSerialOutputBackpressure(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	var mu sync.Mutex
	var level bool
	s := newSerial(w, func(l bool) { mu.Lock(); level = l; mu.Unlock() })
	s.startOutput()
	s.Out(uartIER, ierTHRI)
	s.In(uartIIR) // acknowledge the THRE interrupt of enabling it
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < txBufferMax+10; i++ {
			s.Out(uartRBR, 'a')
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("guest writes blocked on a blocked host output")
	}
	// The writer holds one batch; the queue behind it fills up.
	deadline := time.Now().Add(10 * time.Second)
	for s.In(uartLSR)&lsrTHRE != 0 {
		if time.Now().After(deadline) {
			t.Fatal("LSR still shows THRE with the output queue full")
		}
		s.Out(uartRBR, 'b')
	}
	s.In(uartIIR)
	mu.Lock()
	if level {
		t.Error("interrupt pending while the transmitter is full")
	}
	mu.Unlock()
	close(w.release)
	for deadline = time.Now().Add(10 * time.Second); ; {
		mu.Lock()
		l := level
		mu.Unlock()
		if l {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no THRE interrupt after the queue drained")
		}
		time.Sleep(time.Millisecond)
	}
	if got := s.In(uartIIR) & 0x0f; got != iirTHRI {
		t.Errorf("IIR = %#x, want THRE", got)
	}
	s.stopOutput()
	w.mu.Lock()
	n := len(w.got)
	w.mu.Unlock()
	if n < txBufferMax {
		t.Errorf("%d bytes written, want at least a full queue (%d)", n, txBufferMax)
	}
}

func TestGuestRAMResident(t *testing.T) {
	r, err := newGuestRAM(32 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	for _, addr := range []uint64{0, 5 << 20, 31 << 20} {
		if err := r.mem.PutUint32(addr, 1); err != nil {
			t.Fatal(err)
		}
	}
	n, err := guestResident(r.mapping)
	if err != nil {
		t.Fatal(err)
	}
	// Three touched pages, maybe as huge pages; never all of it.
	if n < 3*pageSize || n >= 32<<20 {
		t.Errorf("resident %d bytes after touching 3 pages of 32 MiB", n)
	}
	if _, err := newGuestRAM(1 << 20); err == nil {
		t.Error("1 MiB of guest RAM accepted")
	}
}

// TestLoadFromFiles loads a vmlinux and an initrd from files, as flushvm
// run does (read straight into guest memory), and refuses a file that
// shrank after it was opened.
func TestLoadFromFiles(t *testing.T) {
	dir := t.TempDir()
	code := []byte{0xf4, 0xeb, 0xfe}
	open := func(name string, b []byte) Image {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return io.NewSectionReader(f, 0, int64(len(b)))
	}
	kernel := open("vmlinux", makeVmlinux(code))
	initrdBytes := bytes.Repeat([]byte("initrd"), 1000)
	initrd := open("initrd", initrdBytes)
	mem, l := testMemory(t, 64<<20)
	entry, err := loadKernel(mem, l, kernel, initrd, "x")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(code))
	if err := mem.ReadAt(got, entry); err != nil || !bytes.Equal(got, code) {
		t.Errorf("code at the entry point %#x: %x, %v", entry, got, err)
	}
	addr := (l.lowSize - uint64(len(initrdBytes))) &^ 0xfff
	gotInitrd := make([]byte, len(initrdBytes))
	if err := mem.ReadAt(gotInitrd, addr); err != nil || !bytes.Equal(gotInitrd, initrdBytes) {
		t.Errorf("initrd not at %#x: %v", addr, err)
	}
	if err := os.Truncate(filepath.Join(dir, "initrd"), 100); err != nil {
		t.Fatal(err)
	}
	if _, err := loadKernel(mem, l, kernel, initrd, "x"); err == nil || !strings.Contains(err.Error(), "unexpected EOF") {
		t.Errorf("an initrd that shrank while loaded: %v, want an unexpected EOF", err)
	}
}
