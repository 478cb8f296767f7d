package vmm

import (
	"github.com/flushvm/flushvm/virtio"
	"github.com/flushvm/flushvm/virtio/guestmem"
	"github.com/flushvm/flushvm/virtio/pci"
)

// *pci.Transport is what the bus plugs in for every virtio device.
var _ PCIFunction = (*pci.Transport)(nil)

// newVirtioFunction makes the modern virtio-pci function of device d, its
// BARs at bar0 and bar2, its interrupts and notifications through p.
func newVirtioFunction(d virtio.Device, p *slotPlatform, mem *guestmem.Memory, bar0, bar2 uint64) (PCIFunction, error) {
	t, err := pci.New(d, p, bar0, bar2)
	if err != nil {
		return nil, err
	}
	t.SetMemory(mem)
	return t, nil
}
