package main

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/guest/internal/pid1"
	"github.com/flushvm/flushvm/protocol"
)

// holdVM creates a KVM VM with an in-kernel irqchip and one vCPU, never
// run, and keeps it open until release is called (at power-off), unless
// the kernel command line says protocol.L1HoldVMParam=0.
//
// Why: KVM counts its VMs and vCPUs in static keys. Creating L1's first VM
// enables the scheduler's preempt-notifier key and closing its last
// disables it again, and a vCPU whose local APIC is software-disabled does
// the same to the APIC's apic_sw_disabled key; each change rewrites
// kernel code (text_poke_bp: an int3 over the site, the new bytes, then
// the int3 removed) while the other CPU may be executing it. Under QEMU
// TCG (L0) an L1 CPU was caught looping for ever on that int3 in
// __schedule after the site already held its new jump: TCG kept running
// its stale translation of the old bytes, and the kernel's int3 handler,
// finding no breakpoint there any more, sent it back to the same stale
// int3 (a fresh-clone CI run's NMI backtraces, both CPUs, every campaign
// boot creating and closing one VM). With this VM open, both counts stay
// above zero for the whole session, so flushvm's VMs come and go without
// patching any code.
func holdVM() (release func(), err error) {
	if cl, err := pid1.Cmdline(); err == nil && !wantHoldVM(cl) {
		pid1.Logf(prefix, "%s=0: no idle VM held; KVM's static keys flip with every VM", protocol.L1HoldVMParam)
		return func() {}, nil
	}
	kvm, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("hold an idle VM: open /dev/kvm: %w", err)
	}
	defer unix.Close(kvm)
	vm, err := unix.IoctlRetInt(kvm, kvmCreateVM)
	if err != nil {
		return nil, fmt.Errorf("hold an idle VM: KVM_CREATE_VM: %w", err)
	}
	if _, err := unix.IoctlRetInt(vm, kvmCreateIRQChip); err != nil {
		unix.Close(vm)
		return nil, fmt.Errorf("hold an idle VM: KVM_CREATE_IRQCHIP: %w", err)
	}
	cpu, err := unix.IoctlRetInt(vm, kvmCreateVCPU) // vCPU id 0
	if err != nil {
		unix.Close(vm)
		return nil, fmt.Errorf("hold an idle VM: KVM_CREATE_VCPU: %w", err)
	}
	return func() {
		unix.Close(cpu)
		unix.Close(vm)
	}, nil
}

// The KVM ioctls holdVM makes (_IO(KVMIO, nr), KVMIO = 0xAE; guest
// programs link no VMM package, so not the kvm package's).
const (
	kvmCreateVM      = 0xAE01
	kvmCreateVCPU    = 0xAE41
	kvmCreateIRQChip = 0xAE60
)

// wantHoldVM says whether the kernel command line cl leaves the idle VM on
// (everything but protocol.L1HoldVMParam=0 does).
func wantHoldVM(cl map[string]string) bool {
	return cl[protocol.L1HoldVMParam] != "0"
}
