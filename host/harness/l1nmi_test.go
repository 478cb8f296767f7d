package harness

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// TestL1MonitorBacktrace plays QEMU's monitor: the harness must send "nmi"
// to a stuck L1 and wait for QEMU to end, and must go on without a
// monitor.
func TestL1MonitorBacktrace(t *testing.T) {
	m, err := newL1Monitor()
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	if a := strings.Join(m.args(), " "); !strings.HasPrefix(a, "-monitor unix:/") || !strings.HasSuffix(a, "/m.sock,server=on,wait=off") {
		t.Errorf("monitor args %q", a)
	}
	var out strings.Builder
	exited := make(chan struct{})
	close(exited)
	m.backtrace(&out, exited)
	if !strings.Contains(out.String(), "stopping L1 without a backtrace") {
		t.Errorf("no monitor: %q", out.String())
	}

	l, err := net.Listen("unix", m.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan string, 1)
	exited = make(chan struct{})
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		c.Write([]byte("QEMU 7.2.22 monitor - type 'help' for more information\r\n" + monitorPrompt))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Write([]byte("nmi\r\n" + monitorPrompt))
		c.Close()
		got <- line
		close(exited) // the panic ends QEMU
	}()
	out.Reset()
	start := time.Now()
	m.backtrace(&out, exited)
	if line := <-got; line != "nmi\n" {
		t.Errorf("monitor got %q, want nmi", line)
	}
	if time.Since(start) > l1NMIWait/2 || !strings.Contains(out.String(), "sent it an NMI") {
		t.Errorf("backtrace took %v, said %q", time.Since(start), out.String())
	}
}

// TestL1MonitorQuit plays QEMU's monitor for the L1 fault: "quit" ends
// QEMU, which closes the monitor without a prompt, and that is success;
// with no monitor it is an error.
func TestL1MonitorQuit(t *testing.T) {
	m, err := newL1Monitor()
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	if err := m.quit(); err == nil {
		t.Error("quit without a monitor succeeded")
	}
	l, err := net.Listen("unix", m.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		c.Write([]byte("QEMU 10.0.2 monitor - type 'help' for more information\r\n" + monitorPrompt))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close() // QEMU has gone
		got <- line
	}()
	if err := m.quit(); err != nil {
		t.Errorf("quit: %v", err)
	}
	if line := <-got; line != "quit\n" {
		t.Errorf("monitor got %q, want quit", line)
	}
}
