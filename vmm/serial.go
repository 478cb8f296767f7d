package vmm

import (
	"bytes"
	"fmt"
	"io"
	"sync"
)

// 16550A UART registers (offsets from the base port) and bits.
const (
	uartRBR = 0 // receive buffer (read), THR transmit (write), DLL with DLAB
	uartIER = 1 // interrupt enable, DLM with DLAB
	uartIIR = 2 // interrupt identification (read), FCR (write)
	uartLCR = 3
	uartMCR = 4
	uartLSR = 5
	uartMSR = 6
	uartSCR = 7

	ierRDI  = 0x01 // received data available
	ierTHRI = 0x02 // transmitter holding register empty

	iirNone     = 0x01
	iirTHRI     = 0x02
	iirRDI      = 0x04
	iirFIFOsOn  = 0xc0
	fcrEnable   = 0x01
	fcrClearRX  = 0x02
	lcrDLAB     = 0x80
	lsrDR       = 0x01
	lsrTHRE     = 0x20
	lsrTEMT     = 0x40
	mcrLoop     = 0x10
	msrDefault  = 0xb0 // DCD, DSR, CTS: a cable that is always ready
	rxBufferMax = 1 << 16
)

// serial is a 16550A UART with a FIFO. What the guest transmits is queued
// and written to out by the serial's own goroutine, so a slow or blocked
// host output (a paused pager, a full pipe) never stalls a vCPU: the guest
// sees its transmitter busy (LSR THRE clear) while the queue is full, and a
// THRE interrupt once there is room again, as from a real UART at a slower
// line rate. What the host receives queues for the guest. The interrupt line
// is raised through irq whenever an enabled condition is pending.
type serial struct {
	mu    sync.Mutex
	out   io.Writer
	irq   func(level bool)
	ier   uint8
	lcr   uint8
	mcr   uint8
	scr   uint8
	fcr   uint8
	dll   uint8
	dlm   uint8
	rx    []byte
	thri  bool // THR-empty interrupt pending
	level bool // last level given to irq

	tx       []byte        // queued output, at most txBufferMax bytes
	txSpare  []byte        // the writer's buffer, swapped with tx
	txFull   bool          // the guest saw the queue full: interrupt when it drains
	txWake   chan struct{} // nudges the writer
	txDone   chan struct{} // closed when the writer returns
	txClosed bool

	raises int    // interrupt line raises, for debugging
	outN   int    // bytes transmitted
	first  func() // called at the first transmitted byte (debugging)

	// lineHook is Config.ConsoleLine (nil: none); line collects the
	// current line for it, at most MaxConsoleLine bytes.
	lineHook func(line []byte)
	line     []byte
}

// MaxConsoleLine is the longest line Config.ConsoleLine is given: the
// bytes of a longer line past it are dropped.
const MaxConsoleLine = 512

// txBufferMax bounds the output queue.
const txBufferMax = 1 << 16

func newSerial(out io.Writer, irq func(level bool)) *serial {
	return &serial{out: out, irq: irq, dll: 12,
		tx: make([]byte, 0, txBufferMax), txSpare: make([]byte, 0, txBufferMax)}
}

// startOutput launches the goroutine that writes queued output.
func (s *serial) startOutput() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.txWake != nil {
		return
	}
	s.txWake = make(chan struct{}, 1)
	s.txDone = make(chan struct{})
	go s.writeLoop()
}

// stopOutput writes what is still queued, then stops the writer and waits
// for it.
func (s *serial) stopOutput() {
	s.mu.Lock()
	if s.txWake == nil || s.txClosed {
		s.mu.Unlock()
		return
	}
	s.txClosed = true
	s.mu.Unlock()
	s.nudge()
	<-s.txDone
}

func (s *serial) nudge() {
	select {
	case s.txWake <- struct{}{}:
	default:
	}
}

func (s *serial) writeLoop() {
	defer close(s.txDone)
	for range s.txWake {
		for {
			s.mu.Lock()
			s.tx, s.txSpare = s.txSpare[:0], s.tx
			batch, closed := s.txSpare, s.txClosed
			if s.txFull && len(batch) > 0 {
				// Room again: the transmitter is empty from the
				// guest's point of view.
				s.txFull = false
				s.thri = true
				s.update()
			}
			s.mu.Unlock()
			if len(batch) == 0 {
				if closed {
					return
				}
				break
			}
			// Console output the host cannot take is not the guest's
			// concern; it is dropped like characters on a cut line.
			_, _ = s.out.Write(batch)
		}
	}
}

// Receive queues input for the guest; bytes beyond a 64 KiB backlog are
// dropped, as a real UART overruns.
func (s *serial) Receive(p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	room := rxBufferMax - len(s.rx)
	if len(p) > room {
		p = p[:room]
	}
	s.rx = append(s.rx, p...)
	s.update()
}

func (s *serial) iir() uint8 {
	id := uint8(iirNone)
	switch {
	case s.ier&ierRDI != 0 && len(s.rx) > 0:
		id = iirRDI
	case s.ier&ierTHRI != 0 && s.thri:
		id = iirTHRI
	}
	if s.fcr&fcrEnable != 0 {
		id |= iirFIFOsOn
	}
	return id
}

// update recomputes the interrupt line; the caller holds mu.
func (s *serial) update() {
	level := s.iir()&iirNone == 0
	if level != s.level {
		s.level = level
		if level {
			s.raises++
		}
		if s.irq != nil {
			s.irq(level)
		}
	}
}

// In is a guest read of register off.
func (s *serial) In(off uint16) uint8 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var v uint8
	switch off {
	case uartRBR:
		if s.lcr&lcrDLAB != 0 {
			return s.dll
		}
		if len(s.rx) > 0 {
			v = s.rx[0]
			s.rx = s.rx[1:]
			if len(s.rx) == 0 {
				s.rx = s.rx[:0:0]
			}
		}
	case uartIER:
		if s.lcr&lcrDLAB != 0 {
			return s.dlm
		}
		v = s.ier
	case uartIIR:
		v = s.iir()
		if v&0x0f == iirTHRI {
			s.thri = false // reading IIR acknowledges THRE
		}
	case uartLCR:
		v = s.lcr
	case uartMCR:
		v = s.mcr
	case uartLSR:
		// The transmitter is empty whenever the output queue has room:
		// a guest polling for TEMT (Linux's console does, for each
		// character) must not wait on the host writing the queue.
		if len(s.tx) < txBufferMax {
			v |= lsrTHRE | lsrTEMT
		}
		if len(s.rx) > 0 {
			v |= lsrDR
		}
	case uartMSR:
		if s.mcr&mcrLoop != 0 {
			// Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
			m := s.mcr
			v = (m&1)<<5 | (m&2)<<3 | (m&4)<<4 | (m&8)<<4
		} else {
			v = msrDefault
		}
	case uartSCR:
		v = s.scr
	}
	s.update()
	return v
}

// Out is a guest write of v to register off. When v ends a line and the
// serial has a line hook, Out calls it with the line after releasing the
// serial's lock, on the caller's goroutine (the vCPU's), so the hook runs
// before the guest's OUT instruction returns.
func (s *serial) Out(off uint16, v uint8) {
	if line := s.outLocked(off, v); line != nil {
		s.lineHook(line)
	}
}

// outLocked does Out's work under the lock and returns a completed line
// for the hook (nil: none).
func (s *serial) outLocked(off uint16, v uint8) (line []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch off {
	case uartRBR:
		if s.lcr&lcrDLAB != 0 {
			s.dll = v
			break
		}
		if s.mcr&mcrLoop != 0 {
			if len(s.rx) < rxBufferMax {
				s.rx = append(s.rx, v)
			}
		} else if line = s.collect(v); s.out != nil {
			if s.outN == 0 && s.first != nil {
				s.first()
			}
			if len(s.tx) >= txBufferMax {
				// A guest that ignores THRE overruns the queue.
				s.txFull = true
				break
			}
			s.outN++
			s.tx = append(s.tx, v)
			if s.txWake != nil {
				s.nudge()
			}
			if len(s.tx) >= txBufferMax {
				s.txFull = true
				break // THRE stays clear until the writer drains
			}
		}
		s.thri = true
	case uartIER:
		if s.lcr&lcrDLAB != 0 {
			s.dlm = v
			break
		}
		if v&ierTHRI != 0 && s.ier&ierTHRI == 0 && len(s.tx) < txBufferMax {
			s.thri = true // enabling THRI with an empty THR interrupts at once
		}
		s.ier = v & 0x0f
	case uartIIR:
		s.fcr = v
		if v&fcrClearRX != 0 {
			s.rx = s.rx[:0]
		}
	case uartLCR:
		s.lcr = v
	case uartMCR:
		s.mcr = v & 0x1f
	case uartSCR:
		s.scr = v
	}
	s.update()
	return line
}

// collect adds a transmitted byte to the current line and returns the line
// (a copy, without its "\n" or "\r\n") when v ends it. The caller holds
// mu.
func (s *serial) collect(v uint8) []byte {
	if s.lineHook == nil {
		return nil
	}
	if v != '\n' {
		if len(s.line) < MaxConsoleLine {
			s.line = append(s.line, v)
		}
		return nil
	}
	line := bytes.TrimSuffix(s.line, []byte{'\r'})
	line = append(make([]byte, 0, len(line)), line...)
	s.line = s.line[:0]
	return line
}

// printed reports whether the guest has sent any byte to the console.
func (s *serial) printed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outN > 0
}

func (s *serial) debugString() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("%d bytes out, %d interrupts, IER %#x, THRE pending %v, line %v", s.outN, s.raises, s.ier, s.thri, s.level)
}
