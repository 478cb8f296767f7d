package vmm

import (
	"encoding/binary"
	"fmt"

	"github.com/flushvm/flushvm/virtio/guestmem"
)

// Minimal ACPI tables (ACPI 6.4): an RSDP pointing at an RSDT and an XSDT,
// which list a FADT and a MADT; the FADT points at a FACS and a DSDT.
// They tell an ACPI kernel what the MP table tells one without ACPI (the
// CPUs, the IOAPIC, how ISA and PCI interrupts reach it) plus what only
// ACPI can: the reset register, and the PM1 registers and \_S5 sleep type
// through which the guest powers the machine off, and the pvpanic device
// through which it reports a kernel panic. Linux finds the RSDP
// through boot_params.acpi_rsdp_addr, or by scanning 0xe0000-0xfffff.
//
// Interrupts are wired as the MP table says: ISA IRQ n on IOAPIC pin n
// (KVM's default GSI routing, so the PIT's IRQ 0 is GSI 0 and needs no
// override), the serial port's IRQ 4 level-triggered, PCI slot s's INTA#
// on pin pciPin(s) (the DSDT's _PRT). The SCI is IRQ 9, level-triggered;
// flushvm never raises it: the machine has no ACPI events to report.

// Where the tables live: below the MP table at biosStart, inside the range
// the e820 map reserves.
const (
	acpiBase = 0xe0000
	acpiEnd  = biosStart
)

// ACPI identity strings and fixed values.
const (
	acpiOEMID      = "FLSHVM"
	acpiOEMTableID = "FLUSHVM "
	acpiCreatorID  = "FVMM"
	sdtHeaderSize  = 36
	rsdpSize       = 36
	facsSize       = 64
	fadtSize       = 276 // ACPI 6.x, revision 6
	acpiSCIIRQ     = 9
)

// FADT fields (ACPI 6.4, table 5.9) by offset, and the values flushvm uses.
const (
	fadtFirmwareCtrl = 36
	fadtDSDT         = 40
	fadtSCIInt       = 46
	fadtPM1aEvtBlk   = 56
	fadtPM1aCntBlk   = 64
	fadtPM1EvtLen    = 88
	fadtPM1CntLen    = 89
	fadtPLvl2Lat     = 96
	fadtPLvl3Lat     = 98
	fadtCentury      = 108
	fadtBootArch     = 109
	fadtFlags        = 112
	fadtResetReg     = 116
	fadtResetValue   = 128
	fadtMinorVersion = 131
	fadtXDSDT        = 140

	fadtFlagWBINVD     = 1 << 0
	fadtFlagProcC1     = 1 << 2
	fadtFlagPwrButton  = 1 << 4 // no fixed-feature power button
	fadtFlagSlpButton  = 1 << 5 // no fixed-feature sleep button
	fadtFlagResetReg   = 1 << 10
	bootArchLegacyDevs = 1 << 0 // ISA devices (serial port, PIT, CMOS); no 8042 bit: only its reset line exists
	bootArchNoVGA      = 1 << 2
	gasSystemIO        = 1
	gasAccessByte      = 1
	resetValue         = 0x06 // CPU reset plus system reset, as portOut expects bit 2
)

// MADT entry types and fields (ACPI 6.4, 5.2.12).
const (
	madtLocalAPIC     = 0
	madtIOAPIC        = 1
	madtIntOverride   = 2
	madtLocalAPICNMI  = 4
	madtPCATCompat    = 1 // the 8259 PICs exist (KVM's in-kernel PIC)
	madtEnabled       = 1
	madtAllProcessors = 0xff
	madtLevelHigh     = 0x1 | 0x3<<2 // MPS INTI flags: active high, level
)

// acpiConfig describes what the tables announce.
type acpiConfig struct {
	cpus     int
	pciSlots []int  // PCI device numbers on bus 0 with INTA# wired
	mmioBase uint64 // where the 64-bit BARs are (memLayout.mmioBase)
}

// acpiImage lays tables out from base, each at an aligned address.
type acpiImage struct {
	base uint64
	buf  []byte
}

// add appends t at the next multiple of align and returns its address.
func (a *acpiImage) add(t []byte, align int) uint32 {
	for len(a.buf)%align != 0 {
		a.buf = append(a.buf, 0)
	}
	addr := a.base + uint64(len(a.buf))
	a.buf = append(a.buf, t...)
	return uint32(addr)
}

// buildACPI returns the tables for placing at base, RSDP first (so the
// RSDP is at base, which must be 16-byte aligned).
func buildACPI(c acpiConfig, base uint64) ([]byte, error) {
	if c.cpus < 1 || c.cpus > 254 {
		return nil, fmt.Errorf("ACPI tables: %d CPUs (1-254 supported)", c.cpus)
	}
	if base%16 != 0 || base+acpiEnd-acpiBase > 1<<32 {
		return nil, fmt.Errorf("ACPI tables: base %#x must be 16-byte aligned and below 4 GiB", base)
	}
	img := &acpiImage{base: base, buf: make([]byte, rsdpSize)}
	dsdt, err := buildDSDT(c)
	if err != nil {
		return nil, err
	}
	dsdtAddr := img.add(dsdt, 16)
	facsAddr := img.add(buildFACS(), 64)
	fadtAddr := img.add(buildFADT(facsAddr, dsdtAddr), 16)
	madtAddr := img.add(buildMADT(c), 16)
	tables := []uint32{fadtAddr, madtAddr}
	rsdtAddr := img.add(buildRSDT(tables), 16)
	xsdtAddr := img.add(buildXSDT(tables), 16)
	copy(img.buf, buildRSDP(rsdtAddr, xsdtAddr))
	if uint64(len(img.buf)) > acpiEnd-acpiBase {
		return nil, fmt.Errorf("ACPI tables: %d bytes do not fit in %d", len(img.buf), acpiEnd-acpiBase)
	}
	return img.buf, nil
}

// finishSDT fills the standard header of table t (whose body is in place)
// and its checksum.
func finishSDT(t []byte, sig string, rev uint8) []byte {
	le := binary.LittleEndian
	copy(t[0:4], sig)
	le.PutUint32(t[4:], uint32(len(t)))
	t[8] = rev
	t[9] = 0
	copy(t[10:16], acpiOEMID)
	copy(t[16:24], acpiOEMTableID)
	le.PutUint32(t[24:], 1)
	copy(t[28:32], acpiCreatorID)
	le.PutUint32(t[32:], 1)
	t[9] = checksum(t)
	return t
}

// buildRSDP is the ACPI 2.0+ root pointer.
func buildRSDP(rsdt, xsdt uint32) []byte {
	le := binary.LittleEndian
	p := make([]byte, rsdpSize)
	copy(p[0:8], "RSD PTR ")
	copy(p[9:15], acpiOEMID)
	p[15] = 2 // revision: ACPI 2.0 and later
	le.PutUint32(p[16:], rsdt)
	le.PutUint32(p[20:], rsdpSize)
	le.PutUint64(p[24:], uint64(xsdt))
	p[8] = checksum(p[:20])
	p[32] = checksum(p)
	return p
}

func buildRSDT(tables []uint32) []byte {
	t := make([]byte, sdtHeaderSize, sdtHeaderSize+4*len(tables))
	for _, a := range tables {
		t = binary.LittleEndian.AppendUint32(t, a)
	}
	return finishSDT(t, "RSDT", 1)
}

func buildXSDT(tables []uint32) []byte {
	t := make([]byte, sdtHeaderSize, sdtHeaderSize+8*len(tables))
	for _, a := range tables {
		t = binary.LittleEndian.AppendUint64(t, uint64(a))
	}
	return finishSDT(t, "XSDT", 1)
}

// buildFACS is a FACS with no waking vector and no global lock owner.
func buildFACS() []byte {
	f := make([]byte, facsSize)
	copy(f[0:4], "FACS")
	binary.LittleEndian.PutUint32(f[4:], facsSize)
	f[32] = 2 // version
	return f
}

// buildFADT describes the fixed hardware: the PM1a event and control
// blocks (pm.go), no PM timer or GPE blocks (Linux then keeps to
// kvm-clock and the TSC), the reset register at port 0xcf9, and no SMI
// command port, which means the machine is always in ACPI mode. The
// 64-bit X_ block fields stay zero: ACPICA derives them from the 32-bit
// ones.
func buildFADT(facs, dsdt uint32) []byte {
	le := binary.LittleEndian
	f := make([]byte, fadtSize)
	le.PutUint32(f[fadtFirmwareCtrl:], facs)
	le.PutUint32(f[fadtDSDT:], dsdt)
	le.PutUint16(f[fadtSCIInt:], acpiSCIIRQ)
	le.PutUint32(f[fadtPM1aEvtBlk:], portPM1aEvt)
	le.PutUint32(f[fadtPM1aCntBlk:], portPM1aCnt)
	f[fadtPM1EvtLen] = pm1EvtLen
	f[fadtPM1CntLen] = pm1CntLen
	le.PutUint16(f[fadtPLvl2Lat:], 101)  // > 100: no C2
	le.PutUint16(f[fadtPLvl3Lat:], 1001) // > 1000: no C3
	f[fadtCentury] = rtcCentury
	le.PutUint16(f[fadtBootArch:], bootArchLegacyDevs|bootArchNoVGA)
	le.PutUint32(f[fadtFlags:], fadtFlagWBINVD|fadtFlagProcC1|fadtFlagPwrButton|fadtFlagSlpButton|fadtFlagResetReg)
	// RESET_REG: a Generic Address Structure for one byte at port 0xcf9.
	r := f[fadtResetReg:]
	r[0], r[1], r[2], r[3] = gasSystemIO, 8, 0, gasAccessByte
	le.PutUint64(r[4:], portResetCtl)
	f[fadtResetValue] = resetValue
	f[fadtMinorVersion] = 0
	le.PutUint64(f[fadtXDSDT:], uint64(dsdt))
	return finishSDT(f, "FACP", 6)
}

// buildMADT announces the local APICs (IDs 0..cpus-1), the IOAPIC (ID
// cpus, GSIs from 0) with the same ISA wiring as the MP table, and NMI on
// every local APIC's LINT1.
func buildMADT(c acpiConfig) []byte {
	le := binary.LittleEndian
	t := make([]byte, sdtHeaderSize+8)
	le.PutUint32(t[36:], lapicAddr)
	le.PutUint32(t[40:], madtPCATCompat)
	for i := 0; i < c.cpus; i++ {
		t = append(t, madtLocalAPIC, 8, byte(i), byte(i))
		t = le.AppendUint32(t, madtEnabled)
	}
	t = append(t, madtIOAPIC, 12, uint8(c.cpus), 0)
	t = le.AppendUint32(t, ioapicAddr)
	t = le.AppendUint32(t, 0)
	for _, irq := range []uint8{irqCOM1, acpiSCIIRQ} {
		t = append(t, madtIntOverride, 10, 0, irq)
		t = le.AppendUint32(t, uint32(irq))
		t = le.AppendUint16(t, madtLevelHigh)
	}
	t = append(t, madtLocalAPICNMI, 6, madtAllProcessors, 0, 0, 1)
	return finishSDT(t, "APIC", 3)
}

// PCI host bridge windows the DSDT's _CRS offers: all I/O ports but the
// configuration ports, 32-bit memory from the hole below 4 GiB up to the
// IOAPIC, and the 1 GiB above RAM where the BARs are.
const (
	pciMem32Start = memHoleStart
	pciMem32End   = ioapicAddr - 1
	pciMem64Size  = mmioAlignment
)

// buildDSDT is the DSDT: \_SB.PCI0, the PCI host bridge (PNP0A03) with its
// windows and interrupt routing, \_SB.PEVT, the pvpanic device
// (pvpanic.go), and \_S5_, the soft-off sleep type.
func buildDSDT(c acpiConfig) ([]byte, error) {
	var prt [][]byte
	for _, slot := range c.pciSlots {
		if slot < 1 || slot > 31 {
			return nil, fmt.Errorf("ACPI tables: PCI slot %d out of range", slot)
		}
		// _PRT entry: address (device << 16 | any function), pin
		// (0 = INTA#), source (none: a GSI), GSI.
		prt = append(prt, amlPackage(amlInteger(uint64(slot)<<16|0xffff), amlInteger(0), amlInteger(0), amlInteger(uint64(pciPin(slot)))))
	}
	crs := concatBytes([][]byte{
		resBusNumbers(0, 0xff),
		resDWord(resTypeIO, resIOEntireRange, 0, portPCIAddress-1),
		resDWord(resTypeIO, resIOEntireRange, portPCIData+4, 0xffff),
		resDWord(resTypeMemory, resMemReadWrite, pciMem32Start, pciMem32End),
		resQWordMemory(c.mmioBase, c.mmioBase+pciMem64Size-1),
		resEnd(),
	})
	pci := amlDevice("PCI0",
		amlName("_HID", amlInteger(uint64(amlEISAID("PNP0A03")))),
		amlName("_UID", amlInteger(0)),
		amlName("_CRS", amlBuffer(crs)),
		amlName("_PRT", amlPackage(prt...)),
	)
	body := concatBytes([][]byte{
		amlScope(`\_SB_`, pci, amlPvpanic()),
		amlS5(),
	})
	t := append(make([]byte, sdtHeaderSize), body...)
	// Revision 2: 64-bit AML integers.
	return finishSDT(t, "DSDT", 2), nil
}

// amlS5 is Name(\_S5_, Package(){SLP_TYPa, SLP_TYPb, 0, 0}): the value the
// guest writes to PM1a_CNT.SLP_TYP to power off.
func amlS5() []byte {
	return amlName(`\_S5_`, amlPackage(amlInteger(pm1SlpTypS5), amlInteger(pm1SlpTypS5), amlInteger(0), amlInteger(0)))
}

// bpACPIRSDPAddr is boot_params.acpi_rsdp_addr (boot protocol 2.14), where
// Linux looks for the RSDP before it scans the BIOS area.
const bpACPIRSDPAddr = 0x070

// writeFirmwareTables writes the MP table (for kernels without ACPI) and
// the ACPI tables, and points boot_params (already at zeroPageAddr) at the
// RSDP. Both describe the same machine; a kernel with ACPI uses the ACPI
// tables and ignores the MP table.
func writeFirmwareTables(mem *guestmem.Memory, l memLayout, c mpConfig) error {
	mp, err := buildMPTable(c, mpTableAddr)
	if err != nil {
		return err
	}
	if err := mem.WriteAt(mp, mpTableAddr); err != nil {
		return fmt.Errorf("writing MP table: %w", err)
	}
	acpi, err := buildACPI(acpiConfig{cpus: c.cpus, pciSlots: c.pciSlots, mmioBase: l.mmioBase()}, acpiBase)
	if err != nil {
		return err
	}
	if err := mem.WriteAt(acpi, acpiBase); err != nil {
		return fmt.Errorf("writing ACPI tables: %w", err)
	}
	if err := mem.PutUint64(zeroPageAddr+bpACPIRSDPAddr, acpiBase); err != nil {
		return fmt.Errorf("writing boot_params.acpi_rsdp_addr: %w", err)
	}
	return nil
}
