package harness

import "strconv"

// QEMUCommand is a qemu-system-x86_64 command line that boots a Linux
// kernel directly, with no default devices and its serial console on
// stdio: the one place flushvm's tools build one (the nested harness's L1,
// the plain-QEMU stand-in, the soak's control monitor inside L1, the
// vhost-user benchmark and tests).
type QEMUCommand struct {
	// Exec is the argv that runs QEMU (default: qemu-system-x86_64 from
	// PATH); a loader and its flags may come first.
	Exec []string
	// Accel and CPU are -accel and -cpu (default: tcg,thread=multi and max).
	Accel, CPU string
	// Mem is -m (default 512); SMP is -smp (default 1).
	Mem string
	SMP int
	// BIOS is -bios ("": QEMU's default firmware).
	BIOS string
	// DebugExit adds isa-debug-exit at port 0xf4, the guest's exit-status
	// port (QEMU then exits with status*2+1).
	DebugExit bool
	// Kernel, Initrd and Append are the direct boot (Initrd optional).
	Kernel, Initrd, Append string
	// Extra are further arguments: -drive, -device, -object, -L, ...
	Extra []string
}

// Args returns the whole argv.
func (q QEMUCommand) Args() []string {
	or := func(s, def string) string {
		if s == "" {
			return def
		}
		return s
	}
	a := append([]string{}, q.Exec...)
	if len(a) == 0 {
		a = append(a, "qemu-system-x86_64")
	}
	a = append(a, "-accel", or(q.Accel, "tcg,thread=multi"), "-cpu", or(q.CPU, "max"),
		"-m", or(q.Mem, "512"), "-smp", strconv.Itoa(max(q.SMP, 1)),
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio")
	if q.BIOS != "" {
		a = append(a, "-bios", q.BIOS)
	}
	if q.DebugExit {
		a = append(a, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01")
	}
	a = append(a, "-kernel", q.Kernel)
	if q.Initrd != "" {
		a = append(a, "-initrd", q.Initrd)
	}
	a = append(a, "-append", q.Append)
	return append(a, q.Extra...)
}
