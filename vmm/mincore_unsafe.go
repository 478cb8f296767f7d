package vmm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// guestResident returns how many bytes of the guest RAM mapping are
// resident, from mincore(2), for diagnostics.
func guestResident(mapping []byte) (uint64, error) {
	vec := make([]byte, (len(mapping)+pageSize-1)/pageSize)
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(mapping))),
		uintptr(len(mapping)), uintptr(unsafe.Pointer(unsafe.SliceData(vec))))
	if errno != 0 {
		return 0, errno
	}
	var n uint64
	for _, v := range vec {
		n += uint64(v & 1)
	}
	return n * pageSize, nil
}
