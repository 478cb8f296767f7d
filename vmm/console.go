package vmm

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ctrlA is the console escape key: Ctrl-A x quits, Ctrl-A Ctrl-A sends a
// Ctrl-A to the guest, as in QEMU.
const ctrlA = 0x01

// console feeds the host terminal (or any input file) to the guest's serial
// port. When the input is a terminal it is switched to raw mode for the life
// of the console, and the escape sequence is honoured.
type console struct {
	in       *os.File
	tty      bool
	saved    *unix.Termios
	wake     [2]int // a pipe: closing wake[1] stops the reader
	done     chan struct{}
	escaping bool
	started  bool
}

// newConsole prepares in; start launches the reader.
func newConsole(in *os.File) (*console, error) {
	c := &console{in: in, wake: [2]int{-1, -1}, done: make(chan struct{})}
	if in == nil {
		return c, nil
	}
	fd := int(in.Fd())
	if t, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
		saved := *t
		c.saved = &saved
		c.tty = true
		raw := *t
		raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		raw.Oflag &^= unix.OPOST
		raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		raw.Cflag &^= unix.CSIZE | unix.PARENB
		raw.Cflag |= unix.CS8
		raw.Cc[unix.VMIN] = 1
		raw.Cc[unix.VTIME] = 0
		if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
			return nil, err
		}
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		c.restore()
		return nil, err
	}
	c.wake = p
	return c, nil
}

// start reads input until EOF or stop, handing bytes to deliver and calling
// quit on Ctrl-A x.
func (c *console) start(deliver func([]byte), quit func()) {
	if c.in == nil {
		return
	}
	c.started = true
	go func() {
		defer close(c.done)
		fd := int(c.in.Fd())
		buf := make([]byte, 256)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(c.wake[0]), Events: unix.POLLIN}}
		for {
			fds[0].Revents, fds[1].Revents = 0, 0
			if _, err := unix.Poll(fds, -1); err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				return
			}
			if fds[1].Revents != 0 {
				return
			}
			if fds[0].Revents == 0 {
				continue
			}
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			if n <= 0 || err != nil {
				return // EOF: the guest simply gets no more input
			}
			out := c.filter(buf[:n], quit)
			if len(out) > 0 {
				deliver(out)
			}
		}
	}()
}

// filter applies the escape sequence on a terminal; it rewrites p in place.
func (c *console) filter(p []byte, quit func()) []byte {
	if !c.tty {
		return p
	}
	out := p[:0]
	for _, b := range p {
		if c.escaping {
			c.escaping = false
			switch b {
			case 'x', 'X':
				quit()
				return out
			case ctrlA:
				out = append(out, ctrlA)
			}
			continue
		}
		if b == ctrlA {
			c.escaping = true
			continue
		}
		out = append(out, b)
	}
	return out
}

// stop ends the reader, waits for it, and restores the terminal.
func (c *console) stop() {
	if c.wake[1] >= 0 {
		unix.Close(c.wake[1])
		c.wake[1] = -1
	}
	if c.started {
		<-c.done
	}
	if c.wake[0] >= 0 {
		unix.Close(c.wake[0])
		c.wake[0] = -1
	}
	c.restore()
}

func (c *console) restore() {
	if c.saved != nil {
		unix.IoctlSetTermios(int(c.in.Fd()), unix.TCSETS, c.saved)
		c.saved = nil
	}
}

// writerOrDiscard returns w, or io.Discard when w is nil.
func writerOrDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
