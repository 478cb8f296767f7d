package vmm

import (
	"math/bits"

	"github.com/flushvm/flushvm/kvm"
)

// CPUID leaves and bits the VMM adjusts.
const (
	cpuidFeatures     = 0x1
	cpuidExtTopology  = 0xb
	cpuidV2Topology   = 0x1f
	cpuidKVMSignature = 0x40000000
	cpuidKVMFeatures  = 0x40000001
	cpuidExtFeatures  = 0x80000001
	cpuidAddrSizes    = 0x80000008
	cpuidAMDTopology  = 0x8000001e

	cpuid1ECXHypervisor  = 1 << 31
	cpuid1ECXTSCDeadline = 1 << 24
	cpuid1EDXHTT         = 1 << 28
	cpuidExtECXTopoExt   = 1 << 22
)

// kvmSignature is "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
var kvmSignature = [3]uint32{0x4b4d564b, 0x564b4d56, 0x0000004d}

// cpuidFor returns the CPUID table of vCPU id in a machine of n vCPUs: what
// KVM supports, with the vCPU's APIC ID, a flat topology of n cores in one
// package, the hypervisor bit, and KVM's paravirtual leaves (kvm-clock)
// under the KVM signature.
//
// KVM leaves the TSC-deadline timer out of its supported list because it is
// a property of the in-kernel LAPIC; tscDeadline (KVM_CAP_TSC_DEADLINE_TIMER)
// adds it, which spares the guest a LAPIC timer calibration that nested
// virtualization's timing can make fail.
func cpuidFor(supported []kvm.CPUIDEntry, id, n int, tscDeadline bool) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(supported)+1)
	coreBits := uint32(bits.Len(uint(n - 1)))
	haveSig := false
	for _, e := range supported {
		switch e.Function {
		case cpuidFeatures:
			e.EBX = e.EBX&0xffff | uint32(n&0xff)<<16 | uint32(id)<<24
			e.ECX |= cpuid1ECXHypervisor
			if tscDeadline {
				e.ECX |= cpuid1ECXTSCDeadline
			}
			if n > 1 {
				e.EDX |= cpuid1EDXHTT
			}
		case cpuidExtTopology:
			e.EDX = uint32(id)
			switch e.Index {
			case 0: // SMT level: one thread per core
				e.EAX, e.EBX, e.ECX = 0, 1, 1<<8
			case 1: // core level: n cores
				e.EAX, e.EBX, e.ECX = coreBits, uint32(n), 2<<8|1
			default:
				e.EAX, e.EBX, e.ECX = 0, 0, e.Index
			}
		case cpuidV2Topology, cpuidAMDTopology:
			continue // leaf 0xb says it all
		case cpuidExtFeatures:
			e.ECX &^= cpuidExtECXTopoExt
		case cpuidAddrSizes:
			e.ECX = e.ECX&^0xf0ff | coreBits<<12 | uint32(n-1)&0xff
		case cpuidKVMSignature:
			e.EBX, e.ECX, e.EDX = kvmSignature[0], kvmSignature[1], kvmSignature[2]
			if e.EAX < cpuidKVMFeatures {
				e.EAX = cpuidKVMFeatures
			}
			haveSig = true
		}
		out = append(out, e)
	}
	if !haveSig {
		// KVM always offers these leaves; if a host does not, announce KVM
		// with no paravirtual features rather than let the guest read the
		// leaves as garbage.
		out = append(out,
			kvm.CPUIDEntry{Function: cpuidKVMSignature, EAX: cpuidKVMFeatures,
				EBX: kvmSignature[0], ECX: kvmSignature[1], EDX: kvmSignature[2]},
			kvm.CPUIDEntry{Function: cpuidKVMFeatures})
	}
	return out
}

// cpuLeaf1 returns CPUID.1 EAX and EDX from the table, for the MP table.
func cpuLeaf1(entries []kvm.CPUIDEntry) (eax, edx uint32) {
	for _, e := range entries {
		if e.Function == cpuidFeatures {
			return e.EAX, e.EDX
		}
	}
	return 0, 0
}
