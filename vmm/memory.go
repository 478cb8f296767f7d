package vmm

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/kvm"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// guestRAM is the anonymous mapping backing guest RAM and its view as
// guestmem.Memory, the only way the VMM turns guest addresses into host
// memory.
type guestRAM struct {
	mapping []byte
	layout  memLayout
	mem     *guestmem.Memory
}

// MinMemSize is the least guest memory a machine can have.
const MinMemSize = 16 << 20

// CheckMemSize checks a guest memory size: at least MinMemSize, a whole
// number of 4 KiB pages.
func CheckMemSize(size uint64) error {
	if size < MinMemSize {
		return fmt.Errorf("guest memory %d bytes: at least 16M needed", size)
	}
	if size%pageSize != 0 {
		return fmt.Errorf("guest memory %d bytes: not a multiple of 4K", size)
	}
	return nil
}

func newGuestRAM(size uint64) (*guestRAM, error) {
	if err := CheckMemSize(size); err != nil {
		return nil, err
	}
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes of guest memory: %w", size, err)
	}
	// Transparent huge pages shorten guest page walks; failure is harmless.
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
	l := layoutFor(size)
	regions := []guestmem.Region{{GuestAddr: 0, Host: b[:l.lowSize]}}
	if l.highSize > 0 {
		regions = append(regions, guestmem.Region{GuestAddr: memHoleEnd, Host: b[l.lowSize:]})
	}
	mem, err := guestmem.New(regions...)
	if err != nil {
		unix.Munmap(b)
		return nil, err
	}
	return &guestRAM{mapping: b, layout: l, mem: mem}, nil
}

// register gives the RAM regions to the VM as memory slots 0, 1.
func (r *guestRAM) register(vm *kvm.VM) error {
	for i, reg := range r.mem.Regions() {
		if err := vm.SetUserMemoryRegion(uint32(i), reg.GuestAddr, reg.Host); err != nil {
			return err
		}
	}
	return nil
}

func (r *guestRAM) close() error {
	if r.mapping == nil {
		return nil
	}
	err := unix.Munmap(r.mapping)
	r.mapping = nil
	return err
}
