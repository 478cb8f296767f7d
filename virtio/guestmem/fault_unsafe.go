package guestmem

import "unsafe"

// guestAddr maps a host address back to the guest physical address of the
// region mapping it, reporting false when no region does.
func (m *Memory) guestAddr(host uintptr) (uint64, bool) {
	for _, r := range m.regions {
		base := uintptr(unsafe.Pointer(unsafe.SliceData(r.Host)))
		if host >= base && host-base < uintptr(len(r.Host)) {
			return r.GuestAddr + uint64(host-base), true
		}
	}
	return 0, false
}
