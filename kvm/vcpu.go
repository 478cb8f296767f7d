package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrInterrupted is returned by Run when KVM_RUN was cut short by a signal
// or by ImmediateExit (KVM_EXIT_INTR / EINTR), or returned EAGAIN after an
// INIT/SIPI: in every case the caller checks whether to stop, then runs again.
var ErrInterrupted = errors.New("KVM_RUN interrupted")

// VCPU is a virtual CPU. Run and the exit accessors must be called from one
// OS thread (the vmm locks a goroutine to it); SetImmediateExit may be called
// from anywhere.
type VCPU struct {
	id  int
	fd  int
	run []byte // the shared struct kvm_run
}

// ID returns the vCPU index it was created with (its initial APIC ID).
func (c *VCPU) ID() int { return c.id }

// FD returns the vCPU file descriptor.
func (c *VCPU) FD() int { return c.fd }

// Close unmaps kvm_run and closes the vCPU fd.
func (c *VCPU) Close() error {
	var errs []error
	if c.run != nil {
		errs = append(errs, unix.Munmap(c.run))
		c.run = nil
	}
	if c.fd >= 0 {
		errs = append(errs, unix.Close(c.fd))
		c.fd = -1
	}
	return errors.Join(errs...)
}

// Run enters the guest until the next exit that needs user space, and
// returns its reason. It returns ErrInterrupted when a signal or
// SetImmediateExit cut the run short.
func (c *VCPU) Run() (ExitReason, error) {
	_, err := ioctl(c.fd, kvmRun, 0)
	if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
		// EAGAIN: an application processor just left wait-for-SIPI and
		// must simply be run again.
		return ExitIntr, ErrInterrupted
	}
	if err != nil {
		return ExitUnknown, fmt.Errorf("KVM_RUN vCPU %d: %w", c.id, err)
	}
	r := ExitReason(binary.LittleEndian.Uint32(c.run[runExitReason:]))
	if r == ExitIntr {
		return r, ErrInterrupted
	}
	return r, nil
}

// SetImmediateExit sets kvm_run.immediate_exit: while it is set KVM_RUN
// returns EINTR at once instead of entering the guest. Together with a
// signal to the vCPU thread it stops a vCPU without a race.
func (c *VCPU) SetImmediateExit(on bool) {
	var b byte
	if on {
		b = 1
	}
	c.run[runImmediateExit] = b
}

// IOExit describes a KVM_EXIT_IO. Data holds Count*Size bytes inside the
// kvm_run area: fill it for an IN, read it for an OUT.
type IOExit struct {
	Out   bool
	Size  int
	Port  uint16
	Count int
	Data  []byte
}

// IO decodes the current KVM_EXIT_IO.
func (c *VCPU) IO() (IOExit, error) {
	u := c.run[runUnion:]
	e := IOExit{
		Out:   u[0] == 1,
		Size:  int(u[1]),
		Port:  binary.LittleEndian.Uint16(u[2:]),
		Count: int(binary.LittleEndian.Uint32(u[4:])),
	}
	off := binary.LittleEndian.Uint64(u[8:])
	n := uint64(e.Size) * uint64(e.Count)
	if off > uint64(len(c.run)) || n > uint64(len(c.run))-off {
		return e, fmt.Errorf("KVM_EXIT_IO data [%#x,+%#x) outside kvm_run", off, n)
	}
	e.Data = c.run[off : off+n]
	return e, nil
}

// MMIOExit describes a KVM_EXIT_MMIO. Data (inside kvm_run) is what the
// guest wrote, or must be filled with what it reads.
type MMIOExit struct {
	Addr  uint64
	Write bool
	Data  []byte
}

// MMIO decodes the current KVM_EXIT_MMIO.
func (c *VCPU) MMIO() MMIOExit {
	u := c.run[runUnion:]
	n := binary.LittleEndian.Uint32(u[16:])
	if n > 8 {
		n = 8
	}
	return MMIOExit{
		Addr:  binary.LittleEndian.Uint64(u[0:]),
		Data:  u[8 : 8+n],
		Write: u[20] != 0,
	}
}

// InternalError returns kvm_run.internal: the suberror and its data words.
func (c *VCPU) InternalError() (suberror uint32, data []uint64) {
	u := c.run[runUnion:]
	suberror = binary.LittleEndian.Uint32(u[0:])
	n := binary.LittleEndian.Uint32(u[4:])
	if n > 16 {
		n = 16
	}
	for i := uint32(0); i < n; i++ {
		data = append(data, binary.LittleEndian.Uint64(u[8+8*i:]))
	}
	return suberror, data
}

// HardwareReason returns the hardware-specific reason word of a
// KVM_EXIT_FAIL_ENTRY or KVM_EXIT_UNKNOWN.
func (c *VCPU) HardwareReason() uint64 {
	return binary.LittleEndian.Uint64(c.run[runUnion:])
}

// SystemEvent returns kvm_run.system_event.type (SystemEventShutdown, ...).
func (c *VCPU) SystemEvent() uint32 {
	return binary.LittleEndian.Uint32(c.run[runUnion:])
}

// Regs reads the general-purpose registers.
func (c *VCPU) Regs() (Regs, error) {
	var r Regs
	if err := ioctlPtr(c.fd, kvmGetRegs, &r); err != nil {
		return r, fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	return r, nil
}

// SetRegs writes the general-purpose registers.
func (c *VCPU) SetRegs(r Regs) error {
	if err := ioctlPtr(c.fd, kvmSetRegs, &r); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return nil
}

// Sregs reads the special registers.
func (c *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	if err := ioctlPtr(c.fd, kvmGetSregs, &s); err != nil {
		return s, fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	return s, nil
}

// SetSregs writes the special registers.
func (c *VCPU) SetSregs(s Sregs) error {
	if err := ioctlPtr(c.fd, kvmSetSregs, &s); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	return nil
}

// FPU reads the x87/SSE state.
func (c *VCPU) FPU() (FPU, error) {
	var f FPU
	if err := ioctlPtr(c.fd, kvmGetFPU, &f); err != nil {
		return f, fmt.Errorf("KVM_GET_FPU: %w", err)
	}
	return f, nil
}

// SetFPU writes the x87/SSE state.
func (c *VCPU) SetFPU(f FPU) error {
	if err := ioctlPtr(c.fd, kvmSetFPU, &f); err != nil {
		return fmt.Errorf("KVM_SET_FPU: %w", err)
	}
	return nil
}

// SetCPUID2 sets the CPUID leaves the guest sees on this vCPU.
func (c *VCPU) SetCPUID2(entries []CPUIDEntry) error {
	buf := makeVarStruct(len(entries), 40)
	binary.LittleEndian.PutUint32(buf[0:], uint32(len(entries)))
	copy(buf[8:], bytesOf(entries))
	if err := ioctlBuf(c.fd, kvmSetCPUID2, buf); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2 (%d entries): %w", len(entries), err)
	}
	return nil
}

// SetMSRs writes model-specific registers.
func (c *VCPU) SetMSRs(msrs []MSREntry) error {
	buf := makeVarStruct(len(msrs), 16)
	binary.LittleEndian.PutUint32(buf[0:], uint32(len(msrs)))
	copy(buf[8:], bytesOf(msrs))
	r, err := ioctlBufResult(c.fd, kvmSetMSRs, buf)
	if err != nil {
		return fmt.Errorf("KVM_SET_MSRS: %w", err)
	}
	if int(r) != len(msrs) {
		return fmt.Errorf("KVM_SET_MSRS: MSR %#x refused", msrs[r].Index)
	}
	return nil
}

// MSRs reads the model-specific registers whose indices are given.
func (c *VCPU) MSRs(indices ...uint32) ([]MSREntry, error) {
	buf := makeVarStruct(len(indices), 16)
	binary.LittleEndian.PutUint32(buf[0:], uint32(len(indices)))
	for i, idx := range indices {
		binary.LittleEndian.PutUint32(buf[8+16*i:], idx)
	}
	r, err := ioctlBufResult(c.fd, kvmGetMSRs, buf)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_MSRS: %w", err)
	}
	if int(r) != len(indices) {
		return nil, fmt.Errorf("KVM_GET_MSRS: MSR %#x unreadable", indices[r])
	}
	return append([]MSREntry(nil), entriesOf[MSREntry](buf[8:], len(indices))...), nil
}

// LAPIC reads the in-kernel local APIC registers.
func (c *VCPU) LAPIC() (LAPICState, error) {
	var l LAPICState
	if err := ioctlPtr(c.fd, kvmGetLAPIC, &l); err != nil {
		return l, fmt.Errorf("KVM_GET_LAPIC: %w", err)
	}
	return l, nil
}

// SetLAPIC writes the in-kernel local APIC registers.
func (c *VCPU) SetLAPIC(l LAPICState) error {
	if err := ioctlPtr(c.fd, kvmSetLAPIC, &l); err != nil {
		return fmt.Errorf("KVM_SET_LAPIC: %w", err)
	}
	return nil
}
