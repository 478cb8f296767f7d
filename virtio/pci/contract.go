// Package pci is the modern virtio-pci transport (virtio 1.2, section 4.1):
// a PCI function with common, notify, ISR and device configuration
// capabilities in one 64-bit memory BAR, and MSI-X in another. It emulates
// the function's configuration space and BAR registers and drives a
// virtio.Device; it does not know about KVM: what it needs from the machine
// (ioeventfd, irqfd-backed MSI routes, the INTx line) comes through Platform.
package pci

// CONTRACT: the vmm package implements Platform and calls the Transport
// methods listed below; the virtio helper implements Transport. Change these
// only together with vmm.

// Platform is what the transport needs from the machine it is plugged into.
type Platform interface {
	// RegisterIOEventFD makes guest writes of any value and width to the
	// MMIO address addr signal eventfd fd in the kernel, without an exit to
	// user space.
	RegisterIOEventFD(addr uint64, fd int) error
	// UnregisterIOEventFD undoes RegisterIOEventFD.
	UnregisterIOEventFD(addr uint64, fd int) error
	// NewMSIRoute allocates an interrupt route whose eventfd injects an MSI
	// message into the guest (KVM irqfd + GSI routing).
	NewMSIRoute() (MSIRoute, error)
	// SetINTx drives the function's legacy interrupt line (INTA#) level.
	SetINTx(asserted bool) error
}

// MSIRoute is one MSI message the guest can be sent by writing an eventfd.
type MSIRoute interface {
	// Set points the route at the MSI message (address, data).
	Set(addr uint64, data uint32) error
	// EventFD is the fd to write an 8-byte 1 to, to inject the message.
	EventFD() int
	// Close releases the route and its eventfd.
	Close() error
}

// The Transport type (in transport.go) offers vmm's PCI bus:
//
//	func New(dev virtio.Device, p Platform, bar0, bar2 uint64) (*Transport, error)
//	    // bar0: guest address for the 64-bit virtio-structures BAR;
//	    // bar2: guest address for the 64-bit MSI-X table/PBA BAR.
//	func (t *Transport) ReadConfig(offset uint32, data []byte)   // PCI config space
//	func (t *Transport) WriteConfig(offset uint32, data []byte)
//	func (t *Transport) BARs() []BAR                              // current ranges (guest may move them)
//	func (t *Transport) ReadBAR(bar int, offset uint64, data []byte)
//	func (t *Transport) WriteBAR(bar int, offset uint64, data []byte)
//	func (t *Transport) Close() error                             // Reset the device, release fds
//	func (t *Transport) SetMemory(m *guestmem.Memory)             // guest memory for Activation; call before the guest runs
//	func (t *Transport) HandleMMIO(addr uint64, data []byte, write bool) bool // dispatch by guest address; no allocation
//	func (t *Transport) LastError() error                         // last host/activation fault (guest accesses cannot return errors)
//
// BAR is {Index int; Addr, Size uint64}. The bus dispatches an MMIO access
// at addr to the function whose BAR contains it, with offset = addr-BAR.Addr.
//
// BARs allocates; call it after PCI config writes (the only way BARs move),
// not on every access. It lists nothing while the guest has memory decoding
// off (command register bit 1), e.g. during BAR sizing. New starts with
// memory decoding on and the BARs at bar0/bar2, as firmware would leave them.
