package kvm

import "unsafe"

// Compile-time checks that the Go structures have the kernel's sizes: a
// mismatch makes one of these array lengths negative or non-constant-equal.
var (
	_ [144]byte  = [unsafe.Sizeof(Regs{})]byte{}
	_ [312]byte  = [unsafe.Sizeof(Sregs{})]byte{}
	_ [24]byte   = [unsafe.Sizeof(Segment{})]byte{}
	_ [16]byte   = [unsafe.Sizeof(DTable{})]byte{}
	_ [416]byte  = [unsafe.Sizeof(FPU{})]byte{}
	_ [40]byte   = [unsafe.Sizeof(CPUIDEntry{})]byte{}
	_ [16]byte   = [unsafe.Sizeof(MSREntry{})]byte{}
	_ [1024]byte = [unsafe.Sizeof(LAPICState{})]byte{}
	_ [32]byte   = [unsafe.Sizeof(userspaceMemoryRegion{})]byte{}
	_ [8]byte    = [unsafe.Sizeof(irqLevel{})]byte{}
	_ [64]byte   = [unsafe.Sizeof(pitConfig{})]byte{}
	_ [64]byte   = [unsafe.Sizeof(ioeventfd{})]byte{}
	_ [32]byte   = [unsafe.Sizeof(irqfd{})]byte{}
	_ [48]byte   = [unsafe.Sizeof(RoutingEntry{})]byte{}
	_ [32]byte   = [unsafe.Sizeof(msi{})]byte{}
	_ [520]byte  = [unsafe.Sizeof(irqchipState{})]byte{}
)
