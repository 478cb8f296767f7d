package kvm

// Kernel ABI of KVM on x86-64: ioctl numbers, capability and exit-reason
// numbers and the ioctl argument structures. Names follow
// include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h (Linux 6.1);
// field order and padding are those of the kernel, and types_unsafe.go checks
// every structure size at compile time.

const kvmio = 0xAE

const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | kvmio<<8 | nr }
func io(nr uintptr) uintptr             { return ioc(iocNone, nr, 0) }
func iow(nr, size uintptr) uintptr      { return ioc(iocWrite, nr, size) }
func ior(nr, size uintptr) uintptr      { return ioc(iocRead, nr, size) }
func iowr(nr, size uintptr) uintptr     { return ioc(iocRead|iocWrite, nr, size) }

// ioctl request numbers (include/uapi/linux/kvm.h).
var (
	kvmGetAPIVersion       = io(0x00)
	kvmCreateVM            = io(0x01)
	kvmCheckExtension      = io(0x03)
	kvmGetVCPUMmapSize     = io(0x04)
	kvmGetSupportedCPUID   = iowr(0x05, 8) // struct kvm_cpuid2 header
	kvmCreateVCPU          = io(0x41)
	kvmSetUserMemoryRegion = iow(0x46, 32) // struct kvm_userspace_memory_region
	kvmSetTSSAddr          = io(0x47)
	kvmSetIdentityMapAddr  = iow(0x48, 8) // __u64
	kvmCreateIRQChip       = io(0x60)
	kvmIRQLine             = iow(0x61, 8)    // struct kvm_irq_level
	kvmSetGSIRouting       = iow(0x6a, 8)    // struct kvm_irq_routing header
	kvmIRQFD               = iow(0x76, 32)   // struct kvm_irqfd
	kvmCreatePIT2          = iow(0x77, 64)   // struct kvm_pit_config
	kvmIOEventFD           = iow(0x79, 64)   // struct kvm_ioeventfd
	kvmSignalMSI           = iow(0xa5, 32)   // struct kvm_msi
	kvmGetIRQChip          = iowr(0x62, 520) // struct kvm_irqchip
	kvmRun                 = io(0x80)
	kvmGetRegs             = ior(0x81, 144) // struct kvm_regs
	kvmSetRegs             = iow(0x82, 144)
	kvmGetSregs            = ior(0x83, 312) // struct kvm_sregs
	kvmSetSregs            = iow(0x84, 312)
	kvmGetMSRs             = iowr(0x88, 8) // struct kvm_msrs header
	kvmSetMSRs             = iow(0x89, 8)
	kvmGetFPU              = ior(0x8c, 416) // struct kvm_fpu
	kvmSetFPU              = iow(0x8d, 416)
	kvmGetLAPIC            = ior(0x8e, 1024) // struct kvm_lapic_state
	kvmSetLAPIC            = iow(0x8f, 1024)
	kvmSetCPUID2           = iow(0x90, 8)    // struct kvm_cpuid2 header
	kvmGetVCPUEvents       = ior(0x9f, 64)   // struct kvm_vcpu_events
	kvmGetNestedState      = iowr(0xbe, 128) // struct kvm_nested_state header
)

// APIVersion is the only KVM API version there has ever been (KVM_API_VERSION).
const APIVersion = 12

// Cap is a KVM capability number for KVM_CHECK_EXTENSION (KVM_CAP_*).
type Cap uintptr

// Capabilities the vmm relies on.
const (
	CapIRQChip            Cap = 0
	CapUserMemory         Cap = 3
	CapSetTSSAddr         Cap = 4
	CapExtCPUID           Cap = 7
	CapNrVCPUs            Cap = 9
	CapIRQRouting         Cap = 25
	CapIRQFD              Cap = 32
	CapPIT2               Cap = 33
	CapIOEventFD          Cap = 36
	CapSetIdentityMapAddr Cap = 37
	CapMaxVCPUs           Cap = 66
	CapTSCDeadlineTimer   Cap = 72
	CapSignalMSI          Cap = 77
	CapImmediateExit      Cap = 136
)

// ExitReason is kvm_run.exit_reason (KVM_EXIT_*).
type ExitReason uint32

// Exit reasons a x86 VMM meets.
const (
	ExitUnknown       ExitReason = 0
	ExitException     ExitReason = 1
	ExitIO            ExitReason = 2
	ExitHypercall     ExitReason = 3
	ExitDebug         ExitReason = 4
	ExitHLT           ExitReason = 5
	ExitMMIO          ExitReason = 6
	ExitIRQWindowOpen ExitReason = 7
	ExitShutdown      ExitReason = 8
	ExitFailEntry     ExitReason = 9
	ExitIntr          ExitReason = 10
	ExitNMI           ExitReason = 16
	ExitInternalError ExitReason = 17
	ExitSystemEvent   ExitReason = 24
)

var exitNames = map[ExitReason]string{
	ExitUnknown: "UNKNOWN", ExitException: "EXCEPTION", ExitIO: "IO",
	ExitHypercall: "HYPERCALL", ExitDebug: "DEBUG", ExitHLT: "HLT",
	ExitMMIO: "MMIO", ExitIRQWindowOpen: "IRQ_WINDOW_OPEN",
	ExitShutdown: "SHUTDOWN", ExitFailEntry: "FAIL_ENTRY", ExitIntr: "INTR",
	ExitNMI: "NMI", ExitInternalError: "INTERNAL_ERROR",
	ExitSystemEvent: "SYSTEM_EVENT",
}

// String returns the kernel's name for the exit reason without KVM_EXIT_.
func (r ExitReason) String() string {
	if s, ok := exitNames[r]; ok {
		return s
	}
	return "EXIT_" + itoa(uint64(r))
}

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

// Internal error sub-reasons (kvm_run.internal.suberror).
const (
	InternalErrorEmulation       = 1
	InternalErrorSimulEx         = 2
	InternalErrorDeliveryEv      = 3
	InternalErrorUnexpectedExitR = 4
)

// System event types (kvm_run.system_event.type).
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
)

// Offsets inside struct kvm_run (include/uapi/linux/kvm.h).
const (
	runImmediateExit = 1
	runExitReason    = 8
	runUnion         = 32 // the exit-specific union
)

// Segment is struct kvm_segment.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable is struct kvm_dtable (GDTR/IDTR).
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Regs is struct kvm_regs.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// Sregs is struct kvm_sregs.
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64
}

// FPU is struct kvm_fpu.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// CPUIDEntry is struct kvm_cpuid_entry2.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// CPUIDFlagSignificantIndex marks a leaf whose Index (ECX input) matters
// (KVM_CPUID_FLAG_SIGNIFCANT_INDEX).
const CPUIDFlagSignificantIndex = 1

// MSREntry is struct kvm_msr_entry.
type MSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// LAPICState is struct kvm_lapic_state: the local APIC register page.
type LAPICState struct {
	Regs [1024]byte
}

type userspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

type irqLevel struct {
	IRQ   uint32
	Level uint32
}

type pitConfig struct {
	Flags uint32
	_     [15]uint32
}

// pitSpeakerDummy makes the in-kernel PIT emulate port 0x61 (KVM_PIT_SPEAKER_DUMMY).
const pitSpeakerDummy = 1

type ioeventfd struct {
	Datamatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]uint8
}

// kvm_ioeventfd flags.
const (
	ioeventfdFlagDatamatch = 1 << 0
	ioeventfdFlagPIO       = 1 << 1
	ioeventfdFlagDeassign  = 1 << 2
)

type irqfd struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]uint8
}

const irqfdFlagDeassign = 1 << 0

// RoutingEntry is struct kvm_irq_routing_entry. Build values with
// IRQChipRoute and MSIRoute.
type RoutingEntry struct {
	GSI   uint32
	Type  uint32
	Flags uint32
	_     uint32
	U     [8]uint32
}

// Routing entry types (KVM_IRQ_ROUTING_*).
const (
	RoutingIRQChip = 1
	RoutingMSI     = 2
)

// In-kernel interrupt controllers (KVM_IRQCHIP_*).
const (
	IRQChipPICMaster = 0
	IRQChipPICSlave  = 1
	IRQChipIOAPIC    = 2
)

// IRQChipRoute routes gsi to pin of an in-kernel interrupt controller.
func IRQChipRoute(gsi, chip, pin uint32) RoutingEntry {
	e := RoutingEntry{GSI: gsi, Type: RoutingIRQChip}
	e.U[0], e.U[1] = chip, pin
	return e
}

// MSIRoute routes gsi to the MSI message (addr, data).
func MSIRoute(gsi uint32, addr uint64, data uint32) RoutingEntry {
	e := RoutingEntry{GSI: gsi, Type: RoutingMSI}
	e.U[0], e.U[1], e.U[2] = uint32(addr), uint32(addr>>32), data
	return e
}

type msi struct {
	AddressLo uint32
	AddressHi uint32
	Data      uint32
	Flags     uint32
	DevID     uint32
	_         [12]uint8
}

// irqchipState is struct kvm_irqchip: a chip id and 512 bytes of state.
type irqchipState struct {
	ChipID uint32
	_      uint32
	Chip   [512]byte
}

// IOAPICState is the in-kernel IOAPIC's state (struct kvm_ioapic_state).
type IOAPICState struct {
	// IRR has a bit set for every pin whose interrupt is pending.
	IRR uint32
	// Redirection are the 24 redirection table entries.
	Redirection [24]uint64
}
