package kvm

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// VM is a KVM virtual machine.
type VM struct {
	fd      int
	runSize int
}

// FD returns the VM file descriptor.
func (v *VM) FD() int { return v.fd }

// Close closes the VM fd. Close every VCPU first.
func (v *VM) Close() error {
	if v.fd < 0 {
		return nil
	}
	err := unix.Close(v.fd)
	v.fd = -1
	return err
}

// CheckExtension returns KVM_CHECK_EXTENSION's answer for c on this VM.
func (v *VM) CheckExtension(c Cap) int {
	r, err := ioctl(v.fd, kvmCheckExtension, uintptr(c))
	if err != nil {
		return 0
	}
	return int(r)
}

// SetUserMemoryRegion maps host memory mem at guest physical address gpa in
// memory slot slot. mem must be an mmap'ed region that stays mapped until the
// VM is closed.
func (v *VM) SetUserMemoryRegion(slot uint32, gpa uint64, mem []byte) error {
	r := userspaceMemoryRegion{
		Slot:          slot,
		GuestPhysAddr: gpa,
		MemorySize:    uint64(len(mem)),
		UserspaceAddr: hostAddr(mem),
	}
	if err := ioctlPtr(v.fd, kvmSetUserMemoryRegion, &r); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d at %#x: %w", slot, gpa, err)
	}
	return nil
}

// SetTSSAddr places the three pages KVM needs for real-mode emulation on
// Intel hosts at addr (which must not be RAM or MMIO).
func (v *VM) SetTSSAddr(addr uint32) error {
	if _, err := ioctl(v.fd, kvmSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
	}
	return nil
}

// SetIdentityMapAddr places KVM's one-page identity map (Intel EPT real
// mode) at addr.
func (v *VM) SetIdentityMapAddr(addr uint64) error {
	if err := ioctlPtr(v.fd, kvmSetIdentityMapAddr, &addr); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR: %w", err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PICs, IOAPIC and local APICs, with
// KVM's default GSI routing (GSI n -> IOAPIC pin n, and PIC pin n for n<16).
func (v *VM) CreateIRQChip() error {
	if _, err := ioctl(v.fd, kvmCreateIRQChip, 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel i8254 PIT (ports 0x40-0x43, and 0x61 as
// a dummy speaker port). Call after CreateIRQChip.
func (v *VM) CreatePIT2() error {
	c := pitConfig{Flags: pitSpeakerDummy}
	if err := ioctlPtr(v.fd, kvmCreatePIT2, &c); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// IRQLine sets the level of an interrupt line (a GSI) of the in-kernel IRQ
// chip.
func (v *VM) IRQLine(gsi uint32, level bool) error {
	l := irqLevel{IRQ: gsi}
	if level {
		l.Level = 1
	}
	if err := ioctlPtr(v.fd, kvmIRQLine, &l); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE %d: %w", gsi, err)
	}
	return nil
}

// IOEventFD makes guest writes of length bytes (0: any length) to addr (an
// MMIO address, or an I/O port when pio is set) signal eventfd fd in the
// kernel. With deassign it removes such a registration.
func (v *VM) IOEventFD(addr uint64, length uint32, fd int, pio, deassign bool) error {
	e := ioeventfd{Addr: addr, Len: length, FD: int32(fd)}
	if pio {
		e.Flags |= ioeventfdFlagPIO
	}
	if deassign {
		e.Flags |= ioeventfdFlagDeassign
	}
	if err := ioctlPtr(v.fd, kvmIOEventFD, &e); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD addr %#x fd %d: %w", addr, fd, err)
	}
	return nil
}

// IRQFD makes a write to eventfd fd raise interrupt gsi (routed through the
// GSI routing table). With deassign it detaches fd from gsi.
func (v *VM) IRQFD(fd int, gsi uint32, deassign bool) error {
	f := irqfd{FD: uint32(fd), GSI: gsi}
	if deassign {
		f.Flags = irqfdFlagDeassign
	}
	if err := ioctlPtr(v.fd, kvmIRQFD, &f); err != nil {
		return fmt.Errorf("KVM_IRQFD fd %d gsi %d: %w", fd, gsi, err)
	}
	return nil
}

// SetGSIRouting replaces the whole GSI routing table with entries.
func (v *VM) SetGSIRouting(entries []RoutingEntry) error {
	buf := makeVarStruct(len(entries), 48)
	binary.LittleEndian.PutUint32(buf[0:], uint32(len(entries)))
	copy(buf[8:], bytesOf(entries))
	if err := ioctlBuf(v.fd, kvmSetGSIRouting, buf); err != nil {
		return fmt.Errorf("KVM_SET_GSI_ROUTING (%d entries): %w", len(entries), err)
	}
	return nil
}

// SignalMSI injects the MSI message (addr, data) directly.
func (v *VM) SignalMSI(addr uint64, data uint32) error {
	m := msi{AddressLo: uint32(addr), AddressHi: uint32(addr >> 32), Data: data}
	r, err := ioctlPtrResult(v.fd, kvmSignalMSI, &m)
	if err != nil {
		return fmt.Errorf("KVM_SIGNAL_MSI: %w", err)
	}
	if r == 0 {
		return fmt.Errorf("KVM_SIGNAL_MSI: message %#x/%#x blocked by the guest", addr, data)
	}
	return nil
}

// CreateVCPU creates virtual CPU id and maps its kvm_run area.
func (v *VM) CreateVCPU(id int) (*VCPU, error) {
	r, err := ioctl(v.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	fd := int(r)
	run, err := unix.Mmap(fd, 0, v.runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mmap kvm_run of vCPU %d: %w", id, err)
	}
	return &VCPU{id: id, fd: fd, run: run}, nil
}

// IOAPICState reads the in-kernel IOAPIC's pending interrupts and
// redirection table (KVM_GET_IRQCHIP), for diagnostics.
func (v *VM) IOAPICState() (IOAPICState, error) {
	c := irqchipState{ChipID: IRQChipIOAPIC}
	var st IOAPICState
	if err := ioctlPtr(v.fd, kvmGetIRQChip, &c); err != nil {
		return st, fmt.Errorf("KVM_GET_IRQCHIP: %w", err)
	}
	// base_address u64, ioregsel u32, id u32, irr u32, pad u32, redirtbl.
	st.IRR = binary.LittleEndian.Uint32(c.Chip[16:])
	for i := range st.Redirection {
		st.Redirection[i] = binary.LittleEndian.Uint64(c.Chip[24+8*i:])
	}
	return st, nil
}
