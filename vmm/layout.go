package vmm

import "github.com/flushvm/flushvm/protocol"

// Guest physical memory map. Everything the VMM builds before the first
// instruction (GDT, page tables, boot_params, command line, MP table) sits in
// the first megabyte, the kernel is loaded at 1 MiB, the initrd as high as
// the kernel allows, and RAM above 3 GiB continues at 4 GiB so that the
// interrupt controllers and KVM's private pages have a hole to live in.
const (
	gdtAddr       = 0x500
	bootStackTop  = 0x8ff0
	zeroPageAddr  = 0x7000
	pml4Addr      = 0x9000
	pdptAddr      = 0xa000
	pdAddr        = 0xb000 // four page directories, 0xb000-0xefff: 0-4 GiB in 2 MiB pages
	cmdlineAddr   = 0x20000
	cmdlineMax    = 0x10000
	ebdaStart     = 0x9fc00
	biosStart     = 0xf0000 // reserved; the MP table lives here
	mpTableAddr   = biosStart
	highMemStart  = 0x100000
	kernelAddr    = highMemStart
	memHoleStart  = 0xc0000000 // RAM stops here below 4 GiB
	memHoleEnd    = 1 << 32
	ioapicAddr    = 0xfec00000
	lapicAddr     = 0xfee00000
	identityAddr  = 0xfffbc000 // KVM_SET_IDENTITY_MAP_ADDR, one page
	tssAddr       = 0xfffbd000 // KVM_SET_TSS_ADDR, three pages
	pageSize      = 0x1000
	hugePageSize  = 0x200000
	mmioAlignment = 1 << 30
)

// Fixed I/O ports.
const (
	portCOM1        = 0x3f8
	portDebugExit   = protocol.DebugExitPort
	portPCIAddress  = 0xcf8
	portPCIData     = 0xcfc
	portResetCtl    = 0xcf9
	portKbdData     = 0x60
	portKbdStatus   = 0x64
	portCMOSIndex   = 0x70
	portCMOSData    = 0x71
	irqCOM1         = 4
	ioapicPins      = 24
	firstPCIPin     = 16 // IOAPIC pins 16-23 carry PCI INTx
	firstMSIGSI     = 24 // GSIs from here are MSI routes
	kbdResetCommand = 0xfe
	kbdStatusOBF    = 0x01
)

// memLayout is where the RAM of a machine of a given size goes.
type memLayout struct {
	lowSize  uint64 // RAM at [0, lowSize)
	highSize uint64 // RAM at [4 GiB, 4 GiB+highSize)
}

func layoutFor(size uint64) memLayout {
	if size <= memHoleStart {
		return memLayout{lowSize: size}
	}
	return memLayout{lowSize: memHoleStart, highSize: size - memHoleStart}
}

// ramEnd is the first guest address above all RAM.
func (l memLayout) ramEnd() uint64 {
	if l.highSize == 0 {
		return l.lowSize
	}
	return memHoleEnd + l.highSize
}

// mmioBase is where 64-bit PCI BARs start: the first 1 GiB boundary at or
// above 4 GiB that is above all RAM (so within any CPU's physical address
// width from 36 bits up for small guests).
func (l memLayout) mmioBase() uint64 {
	b := l.ramEnd()
	if b < memHoleEnd {
		b = memHoleEnd
	}
	return (b + mmioAlignment - 1) &^ (mmioAlignment - 1)
}
