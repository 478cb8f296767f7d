package vmm

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/flushvm/flushvm/kvm"
	"github.com/flushvm/flushvm/protocol"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// ErrGuestUnrunnable reports a KVM exit the machine cannot continue from
// (internal error, emulation failure, failed VM entry).
var ErrGuestUnrunnable = errors.New("KVM cannot run this guest")

// pvmHint is the one-sentence explanation printed with fatal exits.
const pvmHint = "This host's KVM could not run the guest: on hosts whose /dev/kvm is PVM (no vmx/svm) or otherwise lacks full hardware virtualization, stock kernels fail like this; run flushvm inside a QEMU TCG -cpu max guest (make run does so automatically)."

// fatalExit prints the exit reason, RIP and the instruction bytes at RIP to
// the diagnostic writer and returns an error wrapping ErrGuestUnrunnable.
func (m *Machine) fatalExit(c *kvm.VCPU, reason kvm.ExitReason) error {
	detail := ""
	switch reason {
	case kvm.ExitInternalError:
		sub, data := c.InternalError()
		detail = fmt.Sprintf(" suberror %d", sub)
		if sub == kvm.InternalErrorEmulation {
			detail += " (emulation failure)"
		}
		if len(data) > 0 {
			detail += fmt.Sprintf(" data %#x", data)
		}
	case kvm.ExitFailEntry, kvm.ExitUnknown:
		detail = fmt.Sprintf(" hardware reason %#x", c.HardwareReason())
	}
	regs, rerr := c.Regs()
	sregs, serr := c.Sregs()
	fmt.Fprintf(m.diag, "flushvm: vCPU %d: KVM exit %s%s\n", c.ID(), reason, detail)
	if rerr == nil && serr == nil {
		fmt.Fprintf(m.diag, "flushvm: RIP %#x (CS base %#x, CR0 %#x, CR3 %#x, EFER %#x)\n",
			regs.RIP, sregs.CS.Base, sregs.CR0, sregs.CR3, sregs.EFER)
		if code, err := instructionBytes(m.ram.mem, regs, sregs, 16); err == nil {
			fmt.Fprintf(m.diag, "flushvm: code at RIP: % x\n", code)
		} else {
			fmt.Fprintf(m.diag, "flushvm: code at RIP unreadable: %v\n", err)
		}
	}
	fmt.Fprintf(m.diag, "flushvm: %s\n", pvmHint)
	return fmt.Errorf("vCPU %d: KVM exit %s%s: %w", c.ID(), reason, detail, ErrGuestUnrunnable)
}

// guestFailed ends the machine because vCPU c crashed or hung (status
// protocol.ExitGuestCrash or GuestHang): it prints the one-line report, the
// event and c's registers (and extra, if any), to the diagnostic writer,
// unless the machine was already stopping. It runs on c's thread.
func (m *Machine) guestFailed(c *kvm.VCPU, status int, event, extra string) {
	kind, base := ExitGuestCrash, ErrGuestCrashed
	if status == protocol.ExitGuestHang {
		kind, base = ExitGuestHang, ErrGuestHung
	}
	detail := fmt.Sprintf("vCPU %d %s: %s", c.ID(), event, m.regsLine(c))
	if extra != "" {
		detail += "; " + extra
	}
	if m.stop(Result{Kind: kind, Status: status, Err: fmt.Errorf("%s: %w", detail, base)}) {
		fmt.Fprintln(m.diag, protocol.CrashReport{Status: status, Detail: detail})
	}
}

// regsLine describes vCPU c's state in one line: instruction and stack
// pointers, flags, control registers, and the code bytes at RIP. It runs
// on c's thread.
func (m *Machine) regsLine(c *kvm.VCPU) string {
	r, err := c.Regs()
	if err != nil {
		return err.Error()
	}
	s, err := c.Sregs()
	if err != nil {
		return fmt.Sprintf("RIP %#x RSP %#x RFLAGS %#x; %v", r.RIP, r.RSP, r.RFLAGS, err)
	}
	code := "unreadable"
	if b, err := instructionBytes(m.ram.mem, r, s, 16); err != nil {
		code += " (" + err.Error() + ")"
	} else {
		code = fmt.Sprintf("% x", b)
	}
	return fmt.Sprintf("RIP %#x RSP %#x RFLAGS %#x (IF %d) CS %#x CR0 %#x CR2 %#x CR3 %#x CR4 %#x EFER %#x; code at RIP: %s",
		r.RIP, r.RSP, r.RFLAGS, r.RFLAGS>>9&1, s.CS.Selector, s.CR0, s.CR2, s.CR3, s.CR4, s.EFER, code)
}

// resetStateNote returns a warning when vCPU c is in the power-on state
// (CS:IP f000:fff0), which is what KVM on AMD (SVM) leaves after a triple
// fault: the VMCB is undefined after a shutdown intercept, so KVM resets
// the vCPU before it reports the exit, and the registers at the fault are
// lost (Intel's VMX keeps them).
func resetStateNote(c *kvm.VCPU) string {
	r, err := c.Regs()
	if err != nil {
		return ""
	}
	s, err := c.Sregs()
	if err != nil || r.RIP != 0xfff0 || s.CS.Selector != 0xf000 || s.CR0&cr0PE != 0 {
		return ""
	}
	return "these are the vCPU's power-on registers: KVM on AMD (SVM) resets a vCPU before it reports a triple fault, so the state at the fault is lost"
}

// instructionBytes reads n bytes at CS:RIP, translating through the guest's
// page tables when paging is on. Every access goes through guestmem.
func instructionBytes(mem *guestmem.Memory, r kvm.Regs, s kvm.Sregs, n int) ([]byte, error) {
	lin := s.CS.Base + r.RIP
	if s.EFER&eferLMA != 0 {
		lin = r.RIP
	}
	phys, err := translate(mem, s, lin)
	if err != nil {
		return nil, err
	}
	// Stay inside the page so the translation holds for every byte.
	if room := pageSize - phys%pageSize; uint64(n) > room {
		n = int(room)
	}
	b := make([]byte, n)
	if err := mem.ReadAt(b, phys); err != nil {
		return nil, err
	}
	return b, nil
}

// translate walks the guest page tables (32-bit, PAE or 4-level) for linear
// address lin.
func translate(mem *guestmem.Memory, s kvm.Sregs, lin uint64) (uint64, error) {
	if s.CR0&cr0PG == 0 {
		return lin, nil
	}
	const present, huge = 1, 0x80
	addrMask := uint64(0x000ffffffffff000)
	if s.CR4&cr4PAE == 0 {
		// 32-bit paging, 4 KiB or 4 MiB pages.
		pde, err := mem.Uint32((s.CR3 &^ 0xfff) + (lin>>22&0x3ff)*4)
		if err != nil {
			return 0, err
		}
		if pde&present == 0 {
			return 0, fmt.Errorf("linear %#x not mapped", lin)
		}
		if pde&huge != 0 && s.CR4&0x10 != 0 {
			return uint64(pde&0xffc00000) | lin&0x3fffff, nil
		}
		pte, err := mem.Uint32(uint64(pde&^0xfff) + (lin>>12&0x3ff)*4)
		if err != nil {
			return 0, err
		}
		if pte&present == 0 {
			return 0, fmt.Errorf("linear %#x not mapped", lin)
		}
		return uint64(pte&^0xfff) | lin&0xfff, nil
	}
	var levels []uint
	table := s.CR3 & addrMask
	if s.EFER&eferLMA != 0 {
		levels = []uint{39, 30, 21, 12}
		if s.CR4&(1<<12) != 0 { // LA57
			levels = append([]uint{48}, levels...)
		}
	} else {
		levels = []uint{30, 21, 12}
		table = s.CR3 &^ 0x1f
	}
	for i, shift := range levels {
		idx := lin >> shift & 0x1ff
		if shift == 30 && len(levels) == 3 {
			idx = lin >> 30 & 3
		}
		var e uint64
		var err error
		if e, err = mem.Uint64(table + idx*8); err != nil {
			return 0, err
		}
		if e&present == 0 {
			return 0, fmt.Errorf("linear %#x not mapped", lin)
		}
		last := i == len(levels)-1
		if last || (e&huge != 0 && (shift == 30 || shift == 21)) {
			size := uint64(1) << shift
			return e&addrMask&^(size-1) | lin&(size-1), nil
		}
		table = e & addrMask
	}
	return 0, fmt.Errorf("linear %#x: page walk did not finish", lin)
}

// dumpVCPUs logs each vCPU's RIP, RFLAGS and local APIC interrupt state
// (debug mode). The vCPUs must be stopped.
func (m *Machine) dumpVCPUs() {
	if st, err := m.vm.IOAPICState(); err == nil {
		m.debugf("IOAPIC IRR %#x, pin 4 %#x, pin 16 %#x", st.IRR, st.Redirection[4], st.Redirection[16])
	}
	for _, c := range m.vcpus {
		r, err := c.Regs()
		if err != nil {
			m.debugf("vCPU %d: %v", c.ID(), err)
			continue
		}
		l, err := c.LAPIC()
		if err != nil {
			m.debugf("vCPU %d: %v", c.ID(), err)
			continue
		}
		code := "unreadable"
		if s, err := c.Sregs(); err == nil {
			r2 := r
			r2.RIP -= 8
			if b, err := instructionBytes(m.ram.mem, r2, s, 16); err == nil {
				code = fmt.Sprintf("% x", b)
			}
		}
		tr := &m.trace[c.ID()]
		now := time.Now().UnixNano()
		m.debugf("vCPU %d: %d exits; last entered KVM_RUN %.3f s ago, last left it %.3f s ago",
			c.ID(), tr.exits.Load(), float64(now-tr.entered.Load())/1e9, float64(now-tr.exited.Load())/1e9)
		m.debugf("vCPU %d: RIP %#x RFLAGS %#x (IF %v), %s, code at RIP-8: %s",
			c.ID(), r.RIP, r.RFLAGS, r.RFLAGS&0x200 != 0, lapicLine(&l), code)
	}
}

// memoryUsage returns the VMM's resident set size and its peak, from
// /proc/self/status, for diagnostics.
func memoryUsage() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") || strings.HasPrefix(line, "VmHWM:") {
			parts = append(parts, strings.Join(strings.Fields(line), " "))
		}
	}
	return strings.Join(parts, ", ")
}
