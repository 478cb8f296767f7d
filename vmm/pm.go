package vmm

import "sync"

// ACPI fixed-hardware PM1a registers (ACPI 6.4, 4.8.3.1 and 4.8.3.2), as
// the FADT places them: the event block (PM1a_STS, PM1a_EN) at
// portPM1aEvt, the control block (PM1a_CNT) at portPM1aCnt. The machine
// raises no ACPI events, so PM1a_STS reads 0 and PM1a_EN only remembers
// what the guest wrote. Writing PM1a_CNT with SLP_EN set and the \_S5_
// sleep type powers the machine off.
const (
	portPM1aEvt = 0x600
	portPM1aCnt = portPM1aEvt + pm1EvtLen
	pm1EvtLen   = 4
	pm1CntLen   = 2

	pm1CntSCIEn       = 1 << 0 // always set: the machine is always in ACPI mode
	pm1CntSlpTypShift = 10
	pm1CntSlpTypMask  = 7 << pm1CntSlpTypShift
	pm1CntSlpEn       = 1 << 13 // write-only: starts the sleep transition
	pm1SlpTypS5       = 5       // the DSDT's \_S5_ value
)

// pmRegs is the PM1a register block: bytes 0-1 PM1a_STS, 2-3 PM1a_EN, 4-5
// PM1a_CNT, accessed at any width.
type pmRegs struct {
	mu  sync.Mutex
	en  uint16
	cnt uint16
}

// inRange reports whether port is one of the block's ports.
func (p *pmRegs) inRange(port uint16) bool {
	return port >= portPM1aEvt && port < portPM1aCnt+pm1CntLen
}

// In serves a read of len(data) bytes at port.
func (p *pmRegs) In(port uint16, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	regs := p.bytes()
	for i := range data {
		off := int(port-portPM1aEvt) + i
		data[i] = 0xff
		if off < len(regs) {
			data[i] = regs[off]
		}
	}
}

// Out serves a write of data at port and reports whether it asked for
// soft-off (S5).
func (p *pmRegs) Out(port uint16, data []byte) (powerOff bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	regs := p.bytes()
	wroteCnt := false
	for i, b := range data {
		off := int(port-portPM1aEvt) + i
		if off >= len(regs) {
			break
		}
		regs[off] = b
		wroteCnt = wroteCnt || off >= pm1EvtLen
	}
	// PM1a_STS bits are write-one-to-clear and none is ever set.
	p.en = uint16(regs[2]) | uint16(regs[3])<<8
	cnt := uint16(regs[4]) | uint16(regs[5])<<8
	p.cnt = cnt &^ pm1CntSlpEn
	return wroteCnt && cnt&pm1CntSlpEn != 0 && cnt&pm1CntSlpTypMask>>pm1CntSlpTypShift == pm1SlpTypS5
}

// bytes returns the block as the guest reads it. The caller holds mu.
func (p *pmRegs) bytes() [pm1EvtLen + pm1CntLen]byte {
	cnt := p.cnt | pm1CntSCIEn
	return [...]byte{0, 0, byte(p.en), byte(p.en >> 8), byte(cnt), byte(cnt >> 8)}
}
