// Package kvm is a typed wrapper over the Linux KVM ioctl API (x86-64) built
// on golang.org/x/sys/unix: the system handle (/dev/kvm), virtual machines
// (memory slots, in-kernel IRQ chip and PIT, ioeventfd, irqfd, GSI routing,
// MSI injection) and virtual CPUs (registers, CPUID, MSRs, LAPIC, KVM_RUN and
// the shared kvm_run area).
//
// It only translates: it holds no policy about machine layout (that is the
// vmm package) and never interprets guest memory. Kernel structures and ioctl
// numbers live in types.go, mirroring include/uapi/linux/kvm.h and
// arch/x86/include/uapi/asm/kvm.h; every use of unsafe is in *_unsafe.go.
package kvm
