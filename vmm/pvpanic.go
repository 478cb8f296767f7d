package vmm

// The pvpanic device, as QEMU's pvpanic-isa defines it
// (docs/specs/pvpanic.txt in QEMU): one I/O port that reads back the
// events the device supports and to which the guest writes the event
// bits. Linux's pvpanic-mmio driver binds to it through the ACPI _HID
// QEMU0001 and writes PANICKED from its panic notifier, which runs before
// panic= reboots the machine: without the device a panic with panic=-1
// would look like a clean reboot.
//
// flushvm supports PANICKED only. CRASH_LOADED (a kdump kernel is about
// to take over) is not offered, so Linux never writes it and reports a
// panic as PANICKED even with a crash kernel loaded.
const (
	portPvpanic        = 0x505 // QEMU's default ioport
	pvpanicPanicked    = 1 << 0
	pvpanicCrashLoaded = 1 << 1
	pvpanicSupported   = pvpanicPanicked
	pvpanicHID         = "QEMU0001"
)

// pvpanicIn answers a read of the port: the supported events.
func pvpanicIn(data []byte) {
	fill(data, 0)
	data[0] = pvpanicSupported
}

// pvpanicPanic reports whether a write to the port announces a panic.
// Other bits (CRASH_LOADED alone, bits no spec defines) are ignored, as
// QEMU ignores them.
func pvpanicPanic(data []byte) bool {
	return data[0]&pvpanicPanicked != 0
}

// amlPvpanic is the device's DSDT entry:
//
//	Device(PEVT){Name(_HID, "QEMU0001"),
//	  Name(_CRS, ResourceTemplate(){IO(Decode16, 0x505, 0x505, 1, 1)})}
func amlPvpanic() []byte {
	return amlDevice("PEVT",
		amlName("_HID", amlString(pvpanicHID)),
		amlName("_CRS", amlBuffer(concatBytes([][]byte{resIOPort(portPvpanic, 1), resEnd()}))),
	)
}
