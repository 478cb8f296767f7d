package harness

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// l1Monitor is L1's QEMU human monitor on a unix socket, through which the
// harness asks a stuck L1 for a backtrace before it stops it.
type l1Monitor struct {
	dir  string // a private directory holding the socket
	sock string
}

// newL1Monitor makes the socket's directory (outside the job directory,
// which L1 sees, and short: a socket path has at most 107 bytes).
func newL1Monitor() (*l1Monitor, error) {
	dir, err := os.MkdirTemp("", "flushvm-l1mon-")
	if err != nil {
		return nil, fmt.Errorf("L1 monitor: %w", err)
	}
	return &l1Monitor{dir: dir, sock: filepath.Join(dir, "m.sock")}, nil
}

// args are QEMU's arguments for the monitor.
func (m *l1Monitor) args() []string {
	return []string{"-monitor", "unix:" + qemuEscape(m.sock) + ",server=on,wait=off"}
}

func (m *l1Monitor) close() { os.RemoveAll(m.dir) }

// monitorPrompt ends the monitor's greeting and each command's answer.
const monitorPrompt = "(qemu) "

// command runs one monitor command: it waits for the greeting's prompt,
// sends cmd and waits for the next prompt, so that the monitor has read
// the whole line before the connection closes (closing at once can lose
// it).
func (m *l1Monitor) command(cmd string) error {
	c, err := net.DialTimeout("unix", m.sock, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := readPrompt(c); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return err
	}
	if err := readPrompt(c); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	return nil
}

// quit tells QEMU to quit at once; the monitor then closes without a
// prompt, which is success.
func (m *l1Monitor) quit() error {
	err := m.command("quit")
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	return err
}

// readPrompt reads until the monitor's prompt (at most 64 KiB).
func readPrompt(r io.Reader) error {
	var seen []byte
	buf := make([]byte, 512)
	for len(seen) < 64<<10 {
		n, err := r.Read(buf)
		seen = append(seen, buf[:n]...)
		if bytes.Contains(seen, []byte(monitorPrompt)) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return fmt.Errorf("no prompt in %d bytes", len(seen))
}

// l1NMIWait bounds how long a stuck L1 has, after the NMI, to print its
// panic and backtrace and end.
const l1NMIWait = 20 * time.Second

// backtrace sends L1 an NMI ("nmi": every CPU). L1 boots with
// unknown_nmi_panic=1 and panic_print=0x40, so its kernel panics on it,
// printing on the console, whatever the log level, the registers and
// stack of the CPU that took it and then every other CPU's backtrace, and
// then ends QEMU (panic=-1, -no-reboot). It waits
// until exited is closed or l1NMIWait passes, and says what it did on out.
func (m *l1Monitor) backtrace(out io.Writer, exited <-chan struct{}) {
	if err := m.command("nmi"); err != nil {
		fmt.Fprintf(out, "flushvm-harness: L1 monitor: %v; stopping L1 without a backtrace\n", err)
		return
	}
	fmt.Fprintln(out, "flushvm-harness: L1 is stuck: sent it an NMI, so that its kernel panics with a backtrace (unknown_nmi_panic=1)")
	select {
	case <-exited:
	case <-time.After(l1NMIWait):
		fmt.Fprintf(out, "flushvm-harness: L1 did not end within %v of the NMI\n", l1NMIWait)
	}
}
