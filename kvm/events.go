package kvm

import (
	"encoding/binary"
	"fmt"
)

// Events is what KVM_GET_VCPU_EVENTS says about whether the vCPU can take an
// interrupt now: an event KVM is injecting, the interrupt shadow (an STI or
// MOV SS that blocks interrupts for one instruction), and the NMI state.
type Events struct {
	// ExceptionInjected and ExceptionPending, with ExceptionNr.
	ExceptionInjected, ExceptionPending bool
	ExceptionNr                         uint8
	// InterruptInjected: KVM is delivering external interrupt InterruptNr.
	InterruptInjected bool
	InterruptNr       uint8
	// Shadow is the interrupt shadow (KVM_X86_SHADOW_INT_MOV_SS 1,
	// KVM_X86_SHADOW_INT_STI 2); non-zero blocks interrupts.
	Shadow uint8
	// NMIInjected, NMIPending and NMIMasked are the NMI state.
	NMIInjected, NMIPending, NMIMasked bool
}

// String is a compact form for diagnostic lines.
func (e Events) String() string {
	s := fmt.Sprintf("shadow %d", e.Shadow)
	if e.InterruptInjected {
		s += fmt.Sprintf(", injecting vector %d", e.InterruptNr)
	}
	if e.ExceptionInjected || e.ExceptionPending {
		s += fmt.Sprintf(", exception %d (injected %v, pending %v)", e.ExceptionNr, e.ExceptionInjected, e.ExceptionPending)
	}
	if e.NMIInjected || e.NMIPending || e.NMIMasked {
		s += fmt.Sprintf(", NMI injected %v pending %v masked %v", e.NMIInjected, e.NMIPending, e.NMIMasked)
	}
	return s
}

// parseEvents reads a struct kvm_vcpu_events.
func parseEvents(b *[64]byte) Events {
	return Events{
		ExceptionInjected: b[0] != 0, ExceptionNr: b[1], ExceptionPending: b[3] != 0,
		InterruptInjected: b[8] != 0, InterruptNr: b[9], Shadow: b[11],
		NMIInjected: b[12] != 0, NMIPending: b[13] != 0, NMIMasked: b[14] != 0,
	}
}

// Events reads the vCPU's event state (KVM_GET_VCPU_EVENTS). Like every
// vCPU ioctl it must come from the vCPU's own thread, outside KVM_RUN.
func (c *VCPU) Events() (Events, error) {
	var b [64]byte
	if err := ioctlPtr(c.fd, kvmGetVCPUEvents, &b); err != nil {
		return Events{}, fmt.Errorf("KVM_GET_VCPU_EVENTS: %w", err)
	}
	return parseEvents(&b), nil
}

// kvm_nested_state flags and formats.
const (
	nestedFormatSVM = 1
	nestedGIFSet    = 0x100
	// nestedStateMax holds the header and an SVM guest's VMCB (4 KiB).
	nestedStateMax = 128 + 4096
)

// GIF reads the vCPU's global interrupt flag as KVM on AMD keeps it (from
// KVM_GET_NESTED_STATE): with GIF clear, KVM injects no interrupt. ok is
// false where KVM has no such state (Intel, nested virtualization off).
func (c *VCPU) GIF() (set, ok bool) {
	b := make([]byte, nestedStateMax)
	binary.LittleEndian.PutUint32(b[4:], nestedStateMax)
	if err := ioctlBuf(c.fd, kvmGetNestedState, b); err != nil {
		return false, false
	}
	return parseGIF(b)
}

// parseGIF reads the GIF flag of a struct kvm_nested_state header.
func parseGIF(b []byte) (set, ok bool) {
	flags, format := binary.LittleEndian.Uint16(b[0:]), binary.LittleEndian.Uint16(b[2:])
	if format != nestedFormatSVM {
		return false, false
	}
	return flags&nestedGIFSet != 0, true
}
