package vhostuser

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// callNotifier signals a ring's call eventfd. The frontend may replace the
// fd while the device runs (QEMU does when the guest masks an MSI-X
// vector), so it is read under a lock the swap takes exclusively.
type callNotifier struct {
	mu sync.RWMutex
	fd int
}

// one is the 8-byte eventfd increment.
var one = [8]byte{1}

// Notify implements virtio.Notifier. With no call fd (the frontend polls)
// it does nothing. It never blocks: the fd is an eventfd made non-blocking
// by checkEventFD.
func (c *callNotifier) Notify() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.fd < 0 {
		return nil
	}
	for {
		_, err := unix.Write(c.fd, one[:])
		switch err {
		case nil, unix.EAGAIN: // EAGAIN: the counter is saturated, the frontend will wake anyway
			return nil
		case unix.EINTR:
			continue
		default:
			return fmt.Errorf("vhost-user: call eventfd: %w", err)
		}
	}
}

// set replaces the fd, closing the previous one.
func (c *callNotifier) set(fd int) {
	c.mu.Lock()
	old := c.fd
	c.fd = fd
	c.mu.Unlock()
	if old >= 0 {
		unix.Close(old)
	}
}

// configNotifier sends VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the backend
// request channel, the vhost-user form of a configuration interrupt.
type configNotifier struct {
	mu sync.Mutex
	fd int
}

// Notify implements virtio.Notifier.
func (c *configNotifier) Notify() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return ErrNoBackendChannel
	}
	bc := conn{fd: c.fd}
	return bc.send(header{Request: backendReqConfigChangeMsg, Flags: flagVersion}, nil, nil)
}

func (c *configNotifier) set(fd int) {
	c.mu.Lock()
	old := c.fd
	c.fd = fd
	c.mu.Unlock()
	if old >= 0 {
		unix.Close(old)
	}
}
