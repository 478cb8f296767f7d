package vmm

import (
	"errors"

	"github.com/flushvm/flushvm/virtio"
)

// newVirtioFunction makes the PCI function of a virtio device.
func newVirtioFunction(d virtio.Device, p *slotPlatform, bar0, bar2 uint64) (PCIFunction, error) {
	return nil, errors.New("virtio-pci transport not built yet")
}
