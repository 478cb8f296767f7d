// Package vmm is a minimal x86-64 KVM machine that boots an unmodified Linux
// bzImage through the 64-bit boot protocol (or an uncompressed ELF vmlinux
// at its 64-bit entry point, which spares the guest its decompression).
//
// The machine has RAM (split around a hole below 4 GiB), ACPI tables and an
// MP table announcing its vCPUs, the IOAPIC and how ISA and PCI interrupts
// reach it, KVM's in-kernel PIC/IOAPIC/LAPIC and PIT, a CMOS clock, the ACPI
// PM1a registers, a pvpanic device, a 16550A serial port on 0x3f8 (IRQ 4) connected to the
// console, and a PCI bus (configuration mechanism #1) whose devices' 64-bit
// BARs lie above RAM.
//
// The guest ends the machine in one of these ways:
//
//   - reboot: a keyboard-controller reset (0xfe written to port 0x64), a
//     reset through port 0xcf9 (the FADT's reset register) or a KVM reset
//     event end Run with status 0;
//   - power-off: ACPI S5 (SLP_TYP 5 with SLP_EN written to PM1a_CNT) ends
//     Run with status 0;
//   - debug exit: a one-byte write of v to I/O port 0xf4 ends Run with exit
//     status v (0-255), so test guests can report a result;
//   - crash: a triple fault, or a kernel panic the guest reports through
//     the pvpanic device (port 0x505, ACPI _HID QEMU0001), ends Run with
//     protocol.ExitGuestCrash and a report line on Config.Diag; so does
//     Config.Watchdog, with protocol.ExitGuestHang, for a vCPU stalled with
//     an interrupt pending;
//   - Ctrl-A x on a terminal console ends Run with status 0.
//
// I/O ports nothing emulates read as 0xff and ignore writes. vmm must never
// turn a guest address into a host pointer except through
// virtio/guestmem.Memory, and never let a guest action panic the VMM.
package vmm
