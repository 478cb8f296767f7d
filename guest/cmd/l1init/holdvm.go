package main

import (
	"fmt"

	"github.com/flushvm/flushvm/guest/internal/pid1"
	"github.com/flushvm/flushvm/kvm"
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
	sys, err := kvm.Open()
	if err != nil {
		return nil, fmt.Errorf("hold an idle VM: %w", err)
	}
	defer sys.Close()
	vm, err := sys.CreateVM()
	if err != nil {
		return nil, fmt.Errorf("hold an idle VM: %w", err)
	}
	if err := vm.CreateIRQChip(); err != nil {
		vm.Close()
		return nil, fmt.Errorf("hold an idle VM: %w", err)
	}
	cpu, err := vm.CreateVCPU(0)
	if err != nil {
		vm.Close()
		return nil, fmt.Errorf("hold an idle VM: %w", err)
	}
	return func() {
		cpu.Close()
		vm.Close()
	}, nil
}

// wantHoldVM says whether the kernel command line cl leaves the idle VM on
// (everything but protocol.L1HoldVMParam=0 does).
func wantHoldVM(cl map[string]string) bool {
	return cl[protocol.L1HoldVMParam] != "0"
}
