package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/kvm"
	"github.com/flushvm/flushvm/virtio/pci"
)

// PCIFunction is a function on the machine's PCI bus 0 as the bus sees it:
// configuration space, and MMIO inside its BARs. virtio/pci.Transport
// satisfies it through pciTransport.
type PCIFunction interface {
	// ReadConfig and WriteConfig access configuration space at offset.
	ReadConfig(offset uint32, data []byte)
	WriteConfig(offset uint32, data []byte)
	// HandleMMIO serves an access at guest address addr if it falls in one
	// of the function's BARs, and reports whether it did.
	HandleMMIO(addr uint64, data []byte, write bool) bool
	// Close releases the function.
	Close() error
}

// Host bridge identity (device 0): Red Hat's generic PCIe host bridge ID,
// for which no guest driver exists; its class (host bridge) is what Linux's
// configuration-mechanism probe looks for.
const (
	hostBridgeVendor = 0x1b36
	hostBridgeDevice = 0x0008
	pciClassHost     = 0x060000
	pciMaxSlots      = 32
	pciConfigSize    = 256
	pciEnableBit     = 1 << 31
)

// pciBus is bus 0: the host bridge at device 0, functions at devices 1...,
// reached through configuration mechanism #1 (ports 0xcf8/0xcfc) and MMIO
// exits.
type pciBus struct {
	mu      sync.Mutex
	address uint32
	bridge  [pciConfigSize]byte
	slots   [pciMaxSlots]PCIFunction
}

func newPCIBus() *pciBus {
	b := &pciBus{}
	le := binary.LittleEndian
	le.PutUint16(b.bridge[0x00:], hostBridgeVendor)
	le.PutUint16(b.bridge[0x02:], hostBridgeDevice)
	le.PutUint32(b.bridge[0x08:], pciClassHost<<8) // revision 0
	b.bridge[0x0e] = 0                             // header type 0, single function
	return b
}

// attach puts f at device slot.
func (b *pciBus) attach(slot int, f PCIFunction) error {
	if slot < 1 || slot >= pciMaxSlots {
		return fmt.Errorf("PCI slot %d out of range 1-%d", slot, pciMaxSlots-1)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.slots[slot] != nil {
		return fmt.Errorf("PCI slot %d in use", slot)
	}
	b.slots[slot] = f
	return nil
}

// target decodes the configuration address register: the function (nil for
// the host bridge or an empty slot), whether it is the bridge, and the
// register offset. The caller holds mu.
func (b *pciBus) target() (f PCIFunction, bridge bool, ok bool, reg uint32) {
	a := b.address
	if a&pciEnableBit == 0 {
		return nil, false, false, 0
	}
	bus, dev, fn := a>>16&0xff, a>>11&0x1f, a>>8&7
	reg = a & 0xfc
	if bus != 0 || fn != 0 {
		return nil, false, false, 0
	}
	if dev == 0 {
		return nil, true, true, reg
	}
	f = b.slots[dev]
	return f, false, f != nil, reg
}

// ioIn serves reads of ports 0xcf8-0xcff.
func (b *pciBus) ioIn(port uint16, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if port >= portPCIAddress && port < portPCIData {
		var a [4]byte
		binary.LittleEndian.PutUint32(a[:], b.address)
		off := int(port - portPCIAddress)
		fill(data, 0xff)
		copy(data, a[off:])
		return
	}
	f, bridge, ok, reg := b.target()
	off := reg + uint32(port-portPCIData)
	switch {
	case !ok:
		fill(data, 0xff)
	case bridge:
		fill(data, 0)
		if int(off) < pciConfigSize {
			copy(data, b.bridge[off:])
		}
	default:
		f.ReadConfig(off, data)
	}
}

// ioOut serves writes of ports 0xcf8-0xcff (0xcf9 is the reset register and
// is handled by the machine before it gets here).
func (b *pciBus) ioOut(port uint16, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if port == portPCIAddress && len(data) == 4 {
		b.address = binary.LittleEndian.Uint32(data)
		return
	}
	if port < portPCIData {
		return
	}
	f, bridge, ok, reg := b.target()
	if !ok || bridge {
		return // the host bridge has nothing writable
	}
	f.WriteConfig(reg+uint32(port-portPCIData), data)
}

// mmio dispatches an MMIO exit to the function whose BAR holds addr.
func (b *pciBus) mmio(addr uint64, data []byte, write bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, f := range b.slots {
		if f != nil && f.HandleMMIO(addr, data, write) {
			return true
		}
	}
	return false
}

func (b *pciBus) close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for i, f := range b.slots {
		if f != nil {
			if err := f.Close(); err != nil {
				errs = append(errs, fmt.Errorf("PCI slot %d: %w", i, err))
			}
			b.slots[i] = nil
		}
	}
	return errors.Join(errs...)
}

func fill(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}

// irqRouter owns the VM's GSI routing table: KVM_SET_GSI_ROUTING replaces the
// whole table, so every change rewrites the in-kernel chip routes plus every
// MSI route. It also ORs the INTx lines of functions sharing an IOAPIC pin.
type irqRouter struct {
	vm      *kvm.VM
	mu      sync.Mutex
	msi     map[uint32]*msiRoute // by GSI
	nextGSI uint32
	freeGSI []uint32
	pinRefs [ioapicPins]int
}

func newIRQRouter(vm *kvm.VM) *irqRouter {
	return &irqRouter{vm: vm, msi: map[uint32]*msiRoute{}, nextGSI: firstMSIGSI}
}

// chipRoutes is KVM's default routing: GSI n to IOAPIC pin n, and for n<16
// to the master or slave PIC too.
func chipRoutes() []kvm.RoutingEntry {
	var r []kvm.RoutingEntry
	for gsi := uint32(0); gsi < ioapicPins; gsi++ {
		r = append(r, kvm.IRQChipRoute(gsi, kvm.IRQChipIOAPIC, gsi))
		switch {
		case gsi < 8:
			r = append(r, kvm.IRQChipRoute(gsi, kvm.IRQChipPICMaster, gsi))
		case gsi < 16:
			r = append(r, kvm.IRQChipRoute(gsi, kvm.IRQChipPICSlave, gsi-8))
		}
	}
	return r
}

// commit rewrites the routing table; the caller holds mu.
func (r *irqRouter) commit() error {
	table := chipRoutes()
	for gsi, m := range r.msi {
		if m.valid {
			table = append(table, kvm.MSIRoute(gsi, m.addr, m.data))
		}
	}
	return r.vm.SetGSIRouting(table)
}

// newMSIRoute allocates a GSI and an eventfd bound to it by irqfd.
func (r *irqRouter) newMSIRoute() (*msiRoute, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var gsi uint32
	if n := len(r.freeGSI); n > 0 {
		gsi = r.freeGSI[n-1]
		r.freeGSI = r.freeGSI[:n-1]
	} else {
		gsi = r.nextGSI
		r.nextGSI++
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		r.freeGSI = append(r.freeGSI, gsi)
		return nil, fmt.Errorf("eventfd for MSI route: %w", err)
	}
	if err := r.vm.IRQFD(fd, gsi, false); err != nil {
		unix.Close(fd)
		r.freeGSI = append(r.freeGSI, gsi)
		return nil, err
	}
	m := &msiRoute{r: r, gsi: gsi, fd: fd}
	r.msi[gsi] = m
	return m, nil
}

// setINTx drives an IOAPIC pin shared by several sources: the pin is high
// while any source asserts it.
func (r *irqRouter) setINTx(pin uint8, was *bool, asserted bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if *was == asserted {
		return nil
	}
	*was = asserted
	if asserted {
		r.pinRefs[pin]++
	} else {
		r.pinRefs[pin]--
	}
	return r.vm.IRQLine(uint32(pin), r.pinRefs[pin] > 0)
}

// msiRoute is a pci.MSIRoute: an irqfd on a GSI routed to one MSI message.
type msiRoute struct {
	r     *irqRouter
	gsi   uint32
	fd    int
	valid bool
	addr  uint64
	data  uint32
}

// Set points the route at the message (addr, data).
func (m *msiRoute) Set(addr uint64, data uint32) error {
	m.r.mu.Lock()
	defer m.r.mu.Unlock()
	if m.fd < 0 {
		return errors.New("MSI route used after Close")
	}
	if m.valid && m.addr == addr && m.data == data {
		return nil
	}
	m.valid, m.addr, m.data = true, addr, data
	return m.r.commit()
}

// EventFD is the eventfd that injects the message.
func (m *msiRoute) EventFD() int { return m.fd }

// Close detaches the irqfd, frees the GSI and closes the eventfd.
func (m *msiRoute) Close() error {
	m.r.mu.Lock()
	defer m.r.mu.Unlock()
	if m.fd < 0 {
		return nil
	}
	errs := []error{m.r.vm.IRQFD(m.fd, m.gsi, true), unix.Close(m.fd)}
	m.fd = -1
	delete(m.r.msi, m.gsi)
	m.r.freeGSI = append(m.r.freeGSI, m.gsi)
	if m.valid {
		errs = append(errs, m.r.commit())
	}
	return errors.Join(errs...)
}

// slotPlatform is the pci.Platform of the function in one slot.
type slotPlatform struct {
	vm     *kvm.VM
	router *irqRouter
	pin    uint8
	intx   bool
}

var _ pci.Platform = (*slotPlatform)(nil)

// RegisterIOEventFD binds writes of any width to addr to eventfd fd.
func (p *slotPlatform) RegisterIOEventFD(addr uint64, fd int) error {
	return p.vm.IOEventFD(addr, 0, fd, false, false)
}

// UnregisterIOEventFD undoes RegisterIOEventFD.
func (p *slotPlatform) UnregisterIOEventFD(addr uint64, fd int) error {
	return p.vm.IOEventFD(addr, 0, fd, false, true)
}

// NewMSIRoute allocates an irqfd-backed MSI route.
func (p *slotPlatform) NewMSIRoute() (pci.MSIRoute, error) {
	m, err := p.router.newMSIRoute()
	if err != nil {
		return nil, err
	}
	return m, nil
}

// SetINTx drives the slot's INTA# line, the IOAPIC pin its MP table entry
// names.
func (p *slotPlatform) SetINTx(asserted bool) error {
	return p.router.setINTx(p.pin, &p.intx, asserted)
}
