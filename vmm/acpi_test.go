package vmm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/flushvm/flushvm/virtio/guestmem"
)

// sum8 is the byte sum of b; ACPI checksums make it zero.
func sum8(b []byte) uint8 {
	var s uint8
	for _, v := range b {
		s += v
	}
	return s
}

// findRSDP scans the BIOS area on 16-byte boundaries for a root pointer
// with a valid checksum, as Linux does without boot_params.acpi_rsdp_addr.
func findRSDP(t *testing.T, mem *guestmem.Memory) uint64 {
	t.Helper()
	b := make([]byte, 0x100000-0xe0000)
	if err := mem.ReadAt(b, 0xe0000); err != nil {
		t.Fatal(err)
	}
	for off := 0; off+rsdpSize <= len(b); off += 16 {
		if string(b[off:off+8]) == "RSD PTR " && sum8(b[off:off+20]) == 0 {
			return 0xe0000 + uint64(off)
		}
	}
	t.Fatal("no RSDP in 0xe0000-0xfffff")
	return 0
}

// readTable reads the system description table at addr and checks its
// length and checksum.
func readTable(t *testing.T, mem *guestmem.Memory, addr uint64) []byte {
	t.Helper()
	hdr := make([]byte, sdtHeaderSize)
	if err := mem.ReadAt(hdr, addr); err != nil {
		t.Fatalf("table at %#x: %v", addr, err)
	}
	n := binary.LittleEndian.Uint32(hdr[4:])
	if n < sdtHeaderSize || n > acpiEnd-acpiBase {
		t.Fatalf("table %q at %#x: length %d", hdr[:4], addr, n)
	}
	tb := make([]byte, n)
	if err := mem.ReadAt(tb, addr); err != nil {
		t.Fatal(err)
	}
	if sum8(tb) != 0 {
		t.Errorf("table %q: checksum does not sum to 0", tb[:4])
	}
	if addr < acpiBase || addr+uint64(n) > acpiEnd {
		t.Errorf("table %q at [%#x, %#x) outside the ACPI area", tb[:4], addr, addr+uint64(n))
	}
	return tb
}

// parseACPI follows RSDP -> XSDT (and RSDT) -> tables and returns them by
// signature, checking every checksum and that both roots list the same
// tables.
func parseACPI(t *testing.T, mem *guestmem.Memory) map[string][]byte {
	t.Helper()
	le := binary.LittleEndian
	rsdpAddr := findRSDP(t, mem)
	p := make([]byte, rsdpSize)
	if err := mem.ReadAt(p, rsdpAddr); err != nil {
		t.Fatal(err)
	}
	if p[15] != 2 || le.Uint32(p[20:]) != rsdpSize || sum8(p) != 0 {
		t.Fatalf("RSDP revision %d, length %d, extended checksum sum %d", p[15], le.Uint32(p[20:]), sum8(p))
	}
	xsdt := readTable(t, mem, le.Uint64(p[24:]))
	rsdt := readTable(t, mem, uint64(le.Uint32(p[16:])))
	if string(xsdt[:4]) != "XSDT" || string(rsdt[:4]) != "RSDT" {
		t.Fatalf("roots are %q and %q", xsdt[:4], rsdt[:4])
	}
	tables := map[string][]byte{}
	n := (len(xsdt) - sdtHeaderSize) / 8
	if (len(rsdt)-sdtHeaderSize)/4 != n {
		t.Errorf("XSDT lists %d tables, RSDT %d", n, (len(rsdt)-sdtHeaderSize)/4)
	}
	for i := 0; i < n; i++ {
		a := le.Uint64(xsdt[sdtHeaderSize+8*i:])
		if r := le.Uint32(rsdt[sdtHeaderSize+4*i:]); uint64(r) != a {
			t.Errorf("entry %d: XSDT %#x, RSDT %#x", i, a, r)
		}
		tb := readTable(t, mem, a)
		tables[string(tb[:4])] = tb
	}
	fadt := tables["FACP"]
	if fadt == nil {
		t.Fatal("no FADT")
	}
	dsdt := uint64(le.Uint32(fadt[fadtDSDT:]))
	if x := le.Uint64(fadt[fadtXDSDT:]); x != dsdt {
		t.Errorf("FADT DSDT %#x, X_DSDT %#x", dsdt, x)
	}
	tables["DSDT"] = readTable(t, mem, dsdt)
	facs := make([]byte, facsSize)
	fa := uint64(le.Uint32(fadt[fadtFirmwareCtrl:]))
	if err := mem.ReadAt(facs, fa); err != nil {
		t.Fatal(err)
	}
	if string(facs[:4]) != "FACS" || le.Uint32(facs[4:]) != facsSize || fa%64 != 0 {
		t.Errorf("FACS at %#x: % x", fa, facs[:8])
	}
	return tables
}

func TestACPITables(t *testing.T) {
	all := make([]int, 31)
	for i := range all {
		all[i] = i + 1
	}
	tests := []struct {
		name  string
		cpus  int
		slots []int
		mem   uint64
	}{
		{"one CPU, no PCI device", 1, nil, 64 << 20},
		{"two CPUs, one disk", 2, []int{1}, 512 << 20},
		{"64 CPUs, every slot, RAM above 4 GiB", 64, all, 5 << 30},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem, l := testMemory(t, tc.mem)
			if err := writeFirmwareTables(mem, l, mpConfig{cpus: tc.cpus, pciSlots: tc.slots}); err != nil {
				t.Fatal(err)
			}
			if rsdp, err := mem.Uint64(zeroPageAddr + bpACPIRSDPAddr); err != nil || rsdp != findRSDP(t, mem) {
				t.Errorf("boot_params.acpi_rsdp_addr = %#x (%v), want the RSDP", rsdp, err)
			}
			if mp := make([]byte, 4); mem.ReadAt(mp, mpTableAddr) != nil || string(mp) != "_MP_" {
				t.Errorf("MP floating pointer at %#x overwritten: %q", mpTableAddr, mp)
			}
			reserved := false
			for _, e := range e820Map(l) {
				reserved = reserved || e.typ == e820Reserved && e.addr <= acpiBase && e.addr+e.size >= acpiEnd
			}
			if !reserved {
				t.Errorf("e820 map %v does not reserve the ACPI area [%#x, %#x)", e820Map(l), acpiBase, acpiEnd)
			}
			tables := parseACPI(t, mem)
			checkFADT(t, tables["FACP"])
			checkMADT(t, tables["APIC"], tc.cpus)
			checkDSDT(t, tables["DSDT"], tc.slots, l.mmioBase())
		})
	}
}

func checkFADT(t *testing.T, f []byte) {
	t.Helper()
	le := binary.LittleEndian
	if len(f) != fadtSize || f[8] != 6 {
		t.Errorf("FADT length %d revision %d, want %d and 6", len(f), f[8], fadtSize)
	}
	if got := le.Uint16(f[fadtSCIInt:]); got != 9 {
		t.Errorf("SCI_INT %d, want 9", got)
	}
	if evt, cnt := le.Uint32(f[fadtPM1aEvtBlk:]), le.Uint32(f[fadtPM1aCntBlk:]); evt != portPM1aEvt || cnt != portPM1aCnt || f[fadtPM1EvtLen] != 4 || f[fadtPM1CntLen] != 2 {
		t.Errorf("PM1a_EVT %#x/%d, PM1a_CNT %#x/%d", evt, f[fadtPM1EvtLen], cnt, f[fadtPM1CntLen])
	}
	flags := le.Uint32(f[fadtFlags:])
	if flags&fadtFlagResetReg == 0 || flags&(1<<20) != 0 {
		t.Errorf("flags %#x: want RESET_REG_SUP, not HW_REDUCED_ACPI", flags)
	}
	reset := f[fadtResetReg : fadtResetReg+12]
	if reset[0] != gasSystemIO || reset[1] != 8 || le.Uint64(reset[4:]) != 0xcf9 || f[fadtResetValue]&0x4 == 0 {
		t.Errorf("RESET_REG % x value %#x: want one byte at I/O port 0xcf9, bit 2 set", reset, f[fadtResetValue])
	}
	if smi := le.Uint32(f[48:]); smi != 0 {
		t.Errorf("SMI_CMD %#x: want 0 (always in ACPI mode)", smi)
	}
}

func checkMADT(t *testing.T, m []byte, cpus int) {
	t.Helper()
	le := binary.LittleEndian
	if m == nil {
		t.Fatal("no MADT")
	}
	if le.Uint32(m[36:]) != lapicAddr || le.Uint32(m[40:])&1 == 0 {
		t.Errorf("MADT local APIC address %#x flags %#x", le.Uint32(m[36:]), le.Uint32(m[40:]))
	}
	var lapics []int
	overrides := map[uint8][2]uint32{} // source IRQ -> GSI, flags
	var ioapics, nmis int
	for off := 44; off < len(m); {
		typ, n := m[off], int(m[off+1])
		if n < 2 || off+n > len(m) {
			t.Fatalf("MADT entry at %d: length %d", off, n)
		}
		e := m[off : off+n]
		switch typ {
		case madtLocalAPIC:
			if le.Uint32(e[4:])&1 == 0 || e[2] != e[3] {
				t.Errorf("local APIC entry % x", e)
			}
			lapics = append(lapics, int(e[3]))
		case madtIOAPIC:
			ioapics++
			if int(e[2]) != cpus || le.Uint32(e[4:]) != ioapicAddr || le.Uint32(e[8:]) != 0 {
				t.Errorf("IOAPIC entry % x", e)
			}
		case madtIntOverride:
			overrides[e[3]] = [2]uint32{le.Uint32(e[4:]), uint32(le.Uint16(e[8:]))}
		case madtLocalAPICNMI:
			nmis++
			if e[2] != 0xff || e[5] != 1 {
				t.Errorf("NMI entry % x: want all processors, LINT1", e)
			}
		}
		off += n
	}
	if len(lapics) != cpus || lapics[cpus-1] != cpus-1 || ioapics != 1 || nmis != 1 {
		t.Errorf("local APICs %v, %d IOAPICs, %d NMI entries", lapics, ioapics, nmis)
	}
	// As the MP table: ISA IRQ n on pin n (no IRQ 0 override: the PIT is
	// GSI 0 in KVM's routing), serial and SCI level-triggered.
	want := map[uint8][2]uint32{4: {4, madtLevelHigh}, 9: {9, madtLevelHigh}}
	if fmt.Sprint(overrides) != fmt.Sprint(want) {
		t.Errorf("interrupt source overrides %v, want %v", overrides, want)
	}
}

// amlLength decodes the PkgLength at b and returns it and its size.
func amlLength(b []byte) (int, int) {
	n := int(b[0] >> 6)
	if n == 0 {
		return int(b[0] & 0x3f), 1
	}
	v := int(b[0] & 0xf)
	for i := 1; i <= n; i++ {
		v |= int(b[i]) << (4 + 8*(i-1))
	}
	return v, n + 1
}

// amlDevices splits the body of Scope(\_SB_){...} into its Device terms
// by name, checking that their package lengths tile the scope exactly.
func amlDevices(t *testing.T, scope []byte) map[string][]byte {
	t.Helper()
	devs := map[string][]byte{}
	for off := 0; off < len(scope); {
		if len(scope)-off < 7 || scope[off] != amlExtOpPrefix || scope[off+1] != amlDeviceOp {
			t.Fatalf("scope term at %d: % x, want a Device", off, scope[off:])
		}
		n, size := amlLength(scope[off+2:])
		end := off + 2 + n
		if end > len(scope) || n < size+4 {
			t.Fatalf("Device at %d: length %d, ends at %d of the scope's %d bytes", off, n, end, len(scope))
		}
		name := string(scope[off+2+size : off+2+size+4])
		devs[name] = scope[off+2+size+4 : end]
		off = end
	}
	return devs
}

func checkDSDT(t *testing.T, d []byte, slots []int, mmioBase uint64) {
	t.Helper()
	body := d[sdtHeaderSize:]
	// Scope(\_SB_){Device(PCI0){...} Device(PEVT){...}} then
	// Name(\_S5_, ...): the package lengths must nest exactly.
	if body[0] != amlScopeOp {
		t.Fatalf("DSDT starts with % x, want Scope", body[:4])
	}
	scopeLen, size := amlLength(body[1:])
	s5 := []byte{0x08, '\\', '_', 'S', '5', '_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00}
	if !bytes.Equal(body[1+scopeLen:], s5) {
		t.Errorf("after the scope: % x, want Name(\\_S5_, Package(){5, 5, 0, 0}) = % x", body[1+scopeLen:], s5)
	}
	if name := string(body[1+size : 1+size+5]); name != `\_SB_` {
		t.Fatalf("scope %q, want \\_SB_", name)
	}
	devs := amlDevices(t, body[1+size+5:1+scopeLen])
	if len(devs) != 2 || devs["PCI0"] == nil || devs["PEVT"] == nil {
		t.Fatalf("devices in \\_SB_: %d, want PCI0 and PEVT", len(devs))
	}
	pci := devs["PCI0"]
	if !bytes.HasPrefix(pci, []byte{0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03}) {
		t.Error("PCI0 does not start with Name(_HID, EisaId(\"PNP0A03\"))")
	}
	for _, s := range slots {
		// Package(){0xSSSSFFFF, 0, 0, GSI}
		want := []byte{0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, byte(s), 0, 0, 0, 0x0a, pciPin(s)}
		if !bytes.Contains(pci, want) {
			t.Errorf("no _PRT entry % x for slot %d", want, s)
		}
	}
	checkCRS(t, pci, mmioBase)
	checkPvpanic(t, devs["PEVT"])
}

// checkPvpanic parses the pvpanic device: Name(_HID, "QEMU0001") and a
// _CRS with one I/O port descriptor for the port portIn and portOut serve,
// which is what Linux's pvpanic-mmio driver binds to and maps.
func checkPvpanic(t *testing.T, dev []byte) {
	t.Helper()
	hid, crs, ok := bytes.Cut(dev, []byte{amlNameOp, '_', 'C', 'R', 'S'})
	if !ok {
		t.Fatalf("pvpanic device % x: no Name(_CRS)", dev)
	}
	if want := append([]byte{amlNameOp, '_', 'H', 'I', 'D', amlStringPrefix}, "QEMU0001\x00"...); !bytes.Equal(hid, want) {
		t.Errorf("pvpanic device starts % x, want Name(_HID, \"QEMU0001\") = % x", hid, want)
	}
	if crs[0] != amlBufferOp {
		t.Fatalf("_CRS % x is not a Buffer", crs)
	}
	pl, ps := amlLength(crs[1:])
	if 1+pl != len(crs) {
		t.Fatalf("_CRS buffer ends at %d, the device at %d", 1+pl, len(crs))
	}
	buf := crs[1+ps:]
	if buf[0] != amlBytePrefix || int(buf[1]) != len(buf)-2 {
		t.Fatalf("_CRS buffer size % x for %d bytes", buf[:2], len(buf)-2)
	}
	var ports []string
	res := buf[2:]
	for off := 0; off < len(res); {
		tag := res[off]
		if tag&0x80 != 0 {
			t.Fatalf("large resource descriptor %#x in the pvpanic _CRS", tag)
		}
		item, n := tag>>3, int(tag&7)
		e := res[off+1 : off+1+n]
		switch item {
		case 0x08: // I/O port
			min, max := binary.LittleEndian.Uint16(e[1:]), binary.LittleEndian.Uint16(e[3:])
			ports = append(ports, fmt.Sprintf("decode %d %#x-%#x align %d len %d", e[0], min, max, e[5], e[6]))
		case 0x0f: // end tag
			if off+1+n != len(res) {
				t.Errorf("end tag at %d of %d", off, len(res))
			}
		default:
			t.Errorf("unexpected small resource item %#x", item)
		}
		off += 1 + n
	}
	if want := []string{"decode 1 0x505-0x505 align 1 len 1"}; fmt.Sprint(ports) != fmt.Sprint(want) {
		t.Errorf("pvpanic ports %v, want %v", ports, want)
	}
}

// checkCRS walks the host bridge's resource template.
func checkCRS(t *testing.T, body []byte, mmioBase uint64) {
	t.Helper()
	le := binary.LittleEndian
	i := bytes.Index(body, []byte("_CRS"))
	if i < 0 || body[i+4] != amlBufferOp {
		t.Fatal("no Name(_CRS, Buffer)")
	}
	pl, ps := amlLength(body[i+5:])
	buf := body[i+5+ps : i+5+pl]
	if buf[0] != amlBytePrefix || int(buf[1]) != len(buf)-2 {
		t.Fatalf("_CRS buffer size % x for %d bytes", buf[:2], len(buf)-2)
	}
	res := buf[2:]
	var windows []string
	for off := 0; off < len(res); {
		if res[off] == resEndTag {
			if off+2 != len(res) {
				t.Errorf("end tag at %d of %d", off, len(res))
			}
			break
		}
		n := int(le.Uint16(res[off+1:]))
		e := res[off+3 : off+3+n]
		switch res[off] {
		case resWordAddress:
			windows = append(windows, fmt.Sprintf("bus %d-%d", le.Uint16(e[5:]), le.Uint16(e[7:])))
		case resDWordAddress:
			windows = append(windows, fmt.Sprintf("type %d %#x-%#x", e[0], le.Uint32(e[7:]), le.Uint32(e[11:])))
		case resQWordAddress:
			windows = append(windows, fmt.Sprintf("type %d %#x-%#x", e[0], le.Uint64(e[11:]), le.Uint64(e[19:])))
		default:
			t.Fatalf("unexpected resource descriptor %#x", res[off])
		}
		if e[1] != resProducerFixed {
			t.Errorf("descriptor %d: general flags %#x", len(windows), e[1])
		}
		off += 3 + n
	}
	want := []string{"bus 0-255", "type 1 0x0-0xcf7", "type 1 0xd00-0xffff", "type 0 0xc0000000-0xfebfffff",
		fmt.Sprintf("type 0 %#x-%#x", mmioBase, mmioBase+1<<30-1)}
	if fmt.Sprint(windows) != fmt.Sprint(want) {
		t.Errorf("host bridge windows %v, want %v", windows, want)
	}
	if last := mmioBase + 30*2*barWindow + 2*barWindow; last > mmioBase+1<<30 {
		t.Errorf("slot 31's BARs end at %#x, past the 64-bit window", last)
	}
}

func TestAMLEncoding(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want []byte
	}{
		{"short PkgLength", amlPkgLength(10), []byte{11}},
		{"longest one-byte PkgLength", amlPkgLength(62), []byte{63}},
		{"two-byte PkgLength", amlPkgLength(63), []byte{0x41, 0x04}},
		{"two-byte PkgLength 0x123", amlPkgLength(0x121), []byte{0x43, 0x12}},
		{"three-byte PkgLength", amlPkgLength(0x12345), []byte{0x88, 0x34, 0x12}},
		{"zero", amlInteger(0), []byte{0x00}},
		{"one", amlInteger(1), []byte{0x01}},
		{"byte", amlInteger(5), []byte{0x0a, 0x05}},
		{"word", amlInteger(0x1234), []byte{0x0b, 0x34, 0x12}},
		{"dword", amlInteger(0x1ffff), []byte{0x0c, 0xff, 0xff, 0x01, 0x00}},
		{"qword", amlInteger(1 << 32), []byte{0x0e, 0, 0, 0, 0, 1, 0, 0, 0}},
		{"name segment padded", amlNameString("S5"), []byte("S5__")},
		{"root path", amlNameString(`\_SB_`), []byte(`\_SB_`)},
		{"dual path", amlNameString(`\_SB_.PCI0`), append([]byte{'\\', 0x2e}, "_SB_PCI0"...)},
		{"multi path", amlNameString("A.B.C"), append([]byte{0x2f, 3}, "A___B___C___"...)},
		{"EisaId", binary.LittleEndian.AppendUint32(nil, amlEISAID("PNP0A03")), []byte{0x41, 0xd0, 0x0a, 0x03}},
		{"_S5_ package", amlS5(), []byte{0x08, '\\', '_', 'S', '5', '_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00}},
		{"buffer", amlBuffer([]byte{0x79, 0}), []byte{0x11, 0x05, 0x0a, 0x02, 0x79, 0x00}},
		{"string", amlString("QEMU0001"), append([]byte{0x0d}, "QEMU0001\x00"...)},
		{"IO port descriptor", resIOPort(0x505, 1), []byte{0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01}},
	}
	for _, tc := range tests {
		if !bytes.Equal(tc.got, tc.want) {
			t.Errorf("%s: % x, want % x", tc.name, tc.got, tc.want)
		}
	}
	// A PkgLength decodes back to what it encodes, at every size.
	for _, n := range []int{0, 62, 63, 4000, 4093, 4094, 1 << 19, 1<<20 - 4, 1 << 24} {
		b := amlPkgLength(n)
		if v, size := amlLength(b); v != n+size || size != len(b) {
			t.Errorf("PkgLength(%d) = % x decodes to %d (%d bytes)", n, b, v, size)
		}
	}
}

func TestBuildACPIRejects(t *testing.T) {
	tests := []struct {
		name string
		c    acpiConfig
		base uint64
	}{
		{"no CPU", acpiConfig{cpus: 0}, acpiBase},
		{"PCI slot 32", acpiConfig{cpus: 1, pciSlots: []int{32}}, acpiBase},
		{"unaligned base", acpiConfig{cpus: 1}, acpiBase + 4},
	}
	for _, tc := range tests {
		if _, err := buildACPI(tc.c, tc.base); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

func TestPMRegisters(t *testing.T) {
	slp := func(typ uint16) uint16 { return typ<<pm1CntSlpTypShift | pm1CntSlpEn }
	w16 := func(v uint16) []byte { return []byte{byte(v), byte(v >> 8)} }
	tests := []struct {
		name     string
		port     uint16
		data     []byte
		powerOff bool
	}{
		{"S5 with SLP_EN, 16-bit", portPM1aCnt, w16(slp(pm1SlpTypS5)), true},
		{"S5 with SLP_EN, high byte alone", portPM1aCnt + 1, w16(slp(pm1SlpTypS5) >> 8)[:1], true},
		{"PM1a_EN and S5 in one 32-bit write", portPM1aEvt + 2, []byte{0x20, 0x01, byte(slp(5)), byte(slp(5) >> 8)}, true},
		{"PM1a_STS and PM1a_EN only", portPM1aEvt, []byte{0, 0, byte(slp(5)), byte(slp(5) >> 8)}, false},
		{"S5 type without SLP_EN", portPM1aCnt, w16(pm1SlpTypS5 << pm1CntSlpTypShift), false},
		{"another sleep type", portPM1aCnt, w16(slp(1)), false},
		{"PM1a_EN", portPM1aEvt + 2, w16(0x0120), false},
		{"PM1a_STS clear", portPM1aEvt, w16(0xffff), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &pmRegs{}
			if got := p.Out(tc.port, tc.data); got != tc.powerOff {
				t.Errorf("Out(%#x, % x) = %v, want %v", tc.port, tc.data, got, tc.powerOff)
			}
			regs := make([]byte, 6)
			p.In(portPM1aEvt, regs)
			if regs[0] != 0 || regs[1] != 0 || regs[4]&pm1CntSCIEn == 0 || regs[5]&(pm1CntSlpEn>>8) != 0 {
				t.Errorf("registers read % x: want STS 0, SCI_EN set, SLP_EN never read back", regs)
			}
		})
	}
	p := &pmRegs{}
	p.Out(portPM1aEvt+2, w16(0x0120))
	got := make([]byte, 2)
	p.In(portPM1aEvt+2, got)
	if !bytes.Equal(got, w16(0x0120)) {
		t.Errorf("PM1a_EN reads % x after writing 0x0120", got)
	}
}
