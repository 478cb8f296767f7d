package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/guest/internal/pid1"
	"github.com/flushvm/flushvm/protocol"
)

// holdVM creates a KVM VM with an in-kernel irqchip and one vCPU, never
// run, and keeps it open until L1 powers off, unless the kernel command
// line says protocol.L1HoldVMParam=0. It makes it with every other CPU
// offline (alone).
//
// Why: KVM counts its VMs and vCPUs in static keys. Creating L1's first VM
// enables the scheduler's preempt-notifier key and closing its last
// disables it again, and a vCPU whose local APIC is software-disabled does
// the same to the APIC's apic_sw_disabled key; each change rewrites
// kernel code (text_poke_bp: an int3 over the site, the new bytes, then
// the int3 removed) while another CPU may be executing it. Under QEMU
// TCG (L0) an L1 CPU was caught looping for ever on that int3 in
// __schedule after the site already held its new jump: TCG kept running
// its stale translation of the old bytes, and the kernel's int3 handler,
// finding no breakpoint there any more, sent it back to the same stale
// int3 (a fresh-clone CI run's NMI backtraces, both CPUs, every campaign
// boot creating and closing one VM). With this VM open, both counts stay
// above zero for the whole session, so flushvm's VMs come and go without
// patching any code; and the one change left, this VM's creation, is
// made while no other CPU runs (ci13 caught an L1 stalled so as this
// VM was created with both CPUs online). It is never closed: closing it
// would patch again just before power-off.
func holdVM() error {
	if cl, err := pid1.Cmdline(); err == nil && !wantHoldVM(cl) {
		pid1.Logf(prefix, "%s=0: no idle VM held; KVM's static keys flip with every VM", protocol.L1HoldVMParam)
		return nil
	}
	n, err := alone(createIdleVM)
	if err == nil {
		pid1.Logf(prefix, "idle KVM VM held, made with %d other CPUs offline", n)
	}
	return err
}

// createIdleVM makes the idle VM and leaves its descriptors open.
func createIdleVM() error {
	kvm, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("hold an idle VM: open /dev/kvm: %w", err)
	}
	defer unix.Close(kvm)
	vm, err := unix.IoctlRetInt(kvm, kvmCreateVM)
	if err != nil {
		return fmt.Errorf("hold an idle VM: KVM_CREATE_VM: %w", err)
	}
	if _, err := unix.IoctlRetInt(vm, kvmCreateIRQChip); err != nil {
		unix.Close(vm)
		return fmt.Errorf("hold an idle VM: KVM_CREATE_IRQCHIP: %w", err)
	}
	if _, err := unix.IoctlRetInt(vm, kvmCreateVCPU); err != nil { // vCPU id 0
		unix.Close(vm)
		return fmt.Errorf("hold an idle VM: KVM_CREATE_VCPU: %w", err)
	}
	return nil
}

// alone runs f with every CPU but the boot CPU offline (those that can be
// taken offline: the ones with an "online" file), then brings them back,
// and says how many it took offline. A CPU it cannot take offline is
// logged and f runs all the same.
func alone(f func() error) (int, error) {
	paths, _ := filepath.Glob("/sys/devices/system/cpu/cpu[0-9]*/online")
	var off []string
	for _, p := range paths {
		if b, err := os.ReadFile(p); err != nil || strings.TrimSpace(string(b)) != "1" {
			continue
		}
		if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
			pid1.Logf(prefix, "take %s offline: %v", filepath.Base(filepath.Dir(p)), err)
			continue
		}
		off = append(off, p)
	}
	err := f()
	for _, p := range off {
		if werr := os.WriteFile(p, []byte("1"), 0o644); werr != nil {
			pid1.Logf(prefix, "bring %s back online: %v", filepath.Base(filepath.Dir(p)), werr)
		}
	}
	return len(off), err
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
