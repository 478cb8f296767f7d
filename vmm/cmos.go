package vmm

import (
	"sync"
	"time"
)

// cmos is the MC146818 real-time clock and CMOS RAM at ports 0x70/0x71,
// enough for the guest to read the wall-clock time at boot. The clock is
// read-only: guest writes to time registers are ignored.
type cmos struct {
	mu    sync.Mutex
	index uint8
	ram   [128]uint8
	now   func() time.Time
}

// RTC registers.
const (
	rtcSeconds  = 0x00
	rtcMinutes  = 0x02
	rtcHours    = 0x04
	rtcWeekday  = 0x06
	rtcDay      = 0x07
	rtcMonth    = 0x08
	rtcYear     = 0x09
	rtcStatusA  = 0x0a
	rtcStatusB  = 0x0b
	rtcStatusC  = 0x0c
	rtcStatusD  = 0x0d
	rtcCentury  = 0x32
	rtcA32kHz   = 0x26 // 32.768 kHz time base, 1024 Hz rate, no update in progress
	rtcB24Hour  = 0x02 // BCD, 24-hour mode
	rtcDValid   = 0x80 // battery good
	cmosNMIMask = 0x80
)

func newCMOS() *cmos { return &cmos{now: time.Now} }

func bcd(v int) uint8 { return uint8(v/10<<4 | v%10) }

func (c *cmos) In(port uint16) uint8 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if port == portCMOSIndex {
		return 0xff
	}
	t := c.now().UTC()
	switch c.index {
	case rtcSeconds:
		return bcd(t.Second())
	case rtcMinutes:
		return bcd(t.Minute())
	case rtcHours:
		return bcd(t.Hour())
	case rtcWeekday:
		return bcd(int(t.Weekday()) + 1)
	case rtcDay:
		return bcd(t.Day())
	case rtcMonth:
		return bcd(int(t.Month()))
	case rtcYear:
		return bcd(t.Year() % 100)
	case rtcCentury:
		return bcd(t.Year() / 100)
	case rtcStatusA:
		return rtcA32kHz
	case rtcStatusB:
		return rtcB24Hour
	case rtcStatusC:
		return 0
	case rtcStatusD:
		return rtcDValid
	}
	return c.ram[c.index]
}

func (c *cmos) Out(port uint16, v uint8) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if port == portCMOSIndex {
		c.index = v &^ cmosNMIMask
		return
	}
	if c.index > rtcStatusD && c.index != rtcCentury {
		c.ram[c.index] = v
	}
}
