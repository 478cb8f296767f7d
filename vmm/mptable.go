package vmm

import (
	"encoding/binary"
	"fmt"
)

// The Intel MultiProcessor Specification 1.4 table tells a kernel without
// ACPI (Debian's generic kernel has CONFIG_X86_MPPARSE) how many CPUs there
// are, where the IOAPIC is and how ISA and PCI interrupts reach its pins.
// Linux finds the floating pointer by scanning 0xf0000-0xfffff.

// MP table entry types and fields (MP spec 1.4, chapter 4).
const (
	mpEntryProcessor = 0
	mpEntryBus       = 1
	mpEntryIOAPIC    = 2
	mpEntryIOInt     = 3
	mpEntryLocalInt  = 4

	mpIntTypeINT    = 0
	mpIntTypeNMI    = 1
	mpIntTypeExtINT = 3

	mpCPUEnabled = 1
	mpCPUBSP     = 2

	mpAPICVersion = 0x14 // integrated APIC, as KVM's LAPIC reports
	mpIOAPICVer   = 0x11

	mpBusPCI = 0 // MP bus ids: the PCI bus must have its PCI bus number
	mpBusISA = 1

	// Interrupt flags: polarity bits 0-1, trigger bits 2-3.
	mpFlagsConform   = 0x0
	mpFlagsLevelHigh = 0x1 | 0x3<<2

	mpFloatingSize = 16
	mpHeaderSize   = 44
)

// mpConfig describes what the MP table announces.
type mpConfig struct {
	cpus       int
	cpuSig     uint32 // CPUID.1:EAX
	cpuFeature uint32 // CPUID.1:EDX
	pciSlots   []int  // PCI device numbers on bus 0 with INTA# wired
}

// ioapicID is the IOAPIC's APIC ID: after the CPUs', which are 0..cpus-1.
func (c mpConfig) ioapicID() uint8 { return uint8(c.cpus) }

// pciPin is the IOAPIC pin PCI slot's INTA# is wired to.
func pciPin(slot int) uint8 { return uint8(firstPCIPin + (slot-1)%(ioapicPins-firstPCIPin)) }

// buildMPTable returns the floating pointer structure followed by the
// configuration table, for placing at addr.
func buildMPTable(c mpConfig, addr uint32) ([]byte, error) {
	if c.cpus < 1 || c.cpus > 254 {
		return nil, fmt.Errorf("MP table: %d CPUs (1-254 supported)", c.cpus)
	}
	w := &mpEntries{ioapicID: c.ioapicID()}
	for i := 0; i < c.cpus; i++ {
		w.processor(uint8(i), c.cpuSig, c.cpuFeature)
	}
	w.bus(mpBusPCI, "PCI")
	w.bus(mpBusISA, "ISA")
	w.ioapic()
	// ISA IRQ n is IOAPIC pin n, as in KVM's default GSI routing (IRQ 2 is
	// the PIC cascade and has no device). The serial port's interrupt is
	// level-triggered: its line stays high while an interrupt is pending,
	// so none can be lost the way an edge arriving while the guest
	// reprograms the IOAPIC entry is.
	for irq := uint8(0); irq < 16; irq++ {
		flags := uint16(mpFlagsConform)
		switch irq {
		case 2:
			continue
		case irqCOM1:
			flags = mpFlagsLevelHigh
		}
		w.ioint(mpIntTypeINT, flags, mpBusISA, irq, irq)
	}
	for _, slot := range c.pciSlots {
		if slot < 1 || slot > 31 {
			return nil, fmt.Errorf("MP table: PCI slot %d out of range", slot)
		}
		// Source IRQ of a PCI interrupt: device number << 2 | pin (0 = INTA#).
		w.ioint(mpIntTypeINT, mpFlagsLevelHigh, mpBusPCI, uint8(slot)<<2, pciPin(slot))
	}
	w.lint(mpIntTypeExtINT, 0)
	w.lint(mpIntTypeNMI, 1)
	return w.table(addr), nil
}

// mpEntries collects the entries of an MP configuration table.
type mpEntries struct {
	ioapicID uint8
	b        []byte
	count    int
}

func (w *mpEntries) add(e []byte) { w.b = append(w.b, e...); w.count++ }

// processor adds CPU id (the first is the bootstrap processor).
func (w *mpEntries) processor(id uint8, sig, features uint32) {
	e := make([]byte, 20)
	e[0] = mpEntryProcessor
	e[1] = id
	e[2] = mpAPICVersion
	e[3] = mpCPUEnabled
	if id == 0 {
		e[3] |= mpCPUBSP
	}
	binary.LittleEndian.PutUint32(e[4:], sig)
	binary.LittleEndian.PutUint32(e[8:], features)
	w.add(e)
}

// bus adds bus id named name.
func (w *mpEntries) bus(id uint8, name string) {
	e := make([]byte, 8)
	e[0] = mpEntryBus
	e[1] = id
	copy(e[2:8], fmt.Sprintf("%-6s", name))
	w.add(e)
}

// ioapic adds the I/O APIC.
func (w *mpEntries) ioapic() {
	e := make([]byte, 8)
	e[0] = mpEntryIOAPIC
	e[1] = w.ioapicID
	e[2] = mpIOAPICVer
	e[3] = 1 // usable
	binary.LittleEndian.PutUint32(e[4:], ioapicAddr)
	w.add(e)
}

// ioint adds an I/O interrupt assignment: srcIRQ of srcBus is I/O APIC pin.
func (w *mpEntries) ioint(typ uint8, flags uint16, srcBus, srcIRQ, pin uint8) {
	e := make([]byte, 8)
	e[0] = mpEntryIOInt
	e[1] = typ
	binary.LittleEndian.PutUint16(e[2:], flags)
	e[4] = srcBus
	e[5] = srcIRQ
	e[6] = w.ioapicID
	e[7] = pin
	w.add(e)
}

// lint adds a local interrupt assignment to LINT pin of every local APIC.
func (w *mpEntries) lint(typ, pin uint8) {
	e := make([]byte, 8)
	e[0] = mpEntryLocalInt
	e[1] = typ
	e[4] = mpBusISA
	e[6] = 0xff // all local APICs
	e[7] = pin
	w.add(e)
}

// table returns the floating pointer structure at addr followed by the
// configuration table header and the entries.
func (w *mpEntries) table(addr uint32) []byte {
	le := binary.LittleEndian
	hdr := make([]byte, mpHeaderSize)
	copy(hdr[0:], "PCMP")
	le.PutUint16(hdr[4:], uint16(mpHeaderSize+len(w.b)))
	hdr[6] = 4 // spec revision 1.4
	copy(hdr[8:16], "FLUSHVM ")
	copy(hdr[16:28], "KVM GUEST   ")
	le.PutUint16(hdr[34:], uint16(w.count))
	le.PutUint32(hdr[36:], lapicAddr)
	table := append(hdr, w.b...)
	table[7] = checksum(table)

	fp := make([]byte, mpFloatingSize)
	copy(fp[0:], "_MP_")
	le.PutUint32(fp[4:], addr+mpFloatingSize)
	fp[8] = 1 // length in 16-byte units
	fp[9] = 4 // spec revision 1.4
	fp[10] = checksum(fp)
	return append(fp, table...)
}

// checksum returns the byte that makes the sum of b (whose checksum byte is
// still zero) zero modulo 256.
func checksum(b []byte) uint8 {
	var s uint8
	for _, v := range b {
		s += v
	}
	return -s
}
