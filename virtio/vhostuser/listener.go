package vhostuser

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrListenerClosed is what Accept returns once Close has been called.
var ErrListenerClosed = errors.New("vhost-user: listener closed")

// Listener is a listening vhost-user unix socket.
type Listener struct {
	path   string
	fd     int
	lockFd int // holds PATH.lock for the listener's lifetime
	mu     sync.Mutex
	closed bool
}

// ErrSocketInUse reports a socket path another backend is listening on.
var ErrSocketInUse = errors.New("in use by a running backend (stop it, or choose another --socket)")

// Listen creates the unix socket at path and listens on it. The listener
// holds a lock on PATH.lock until Release, so a second backend given the
// same path is refused with ErrSocketInUse (even once the first, serving
// its one frontend, has removed the socket file). A stale socket file left
// by a previous run is replaced; any other existing file is an error, so a
// typo cannot delete a user's file.
func Listen(path string) (*Listener, error) {
	lockFd, err := lockPath(path + ".lock")
	if err != nil {
		return nil, err
	}
	l, err := listen(path)
	if err != nil {
		os.Remove(path + ".lock")
		unix.Close(lockFd)
		return nil, err
	}
	l.lockFd = lockFd
	return l, nil
}

// lockPath opens (creating) the lock file and takes its exclusive lock.
func lockPath(lock string) (int, error) {
	fd, err := unix.Open(lock, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return -1, fmt.Errorf("vhost-user: lock %s: %w", lock, err)
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case err == unix.EWOULDBLOCK:
		unix.Close(fd)
		return -1, fmt.Errorf("vhost-user: %s: %w", lock[:len(lock)-len(".lock")], ErrSocketInUse)
	case err != nil:
		unix.Close(fd)
		return -1, fmt.Errorf("vhost-user: lock %s: %w", lock, err)
	}
	return fd, nil
}

// listen creates and listens on the socket (path's lock already held).
func listen(path string) (*Listener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("vhost-user: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("vhost-user: removing stale socket: %w", err)
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vhost-user: socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vhost-user: bind %s: %w", path, err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		unix.Close(fd)
		os.Remove(path)
		return nil, fmt.Errorf("vhost-user: listen %s: %w", path, err)
	}
	return &Listener{path: path, fd: fd, lockFd: -1}, nil
}

// Path returns the socket's path.
func (l *Listener) Path() string { return l.path }

// Accept waits for a frontend and returns the connected socket, which the
// caller closes. It returns ErrListenerClosed after Close.
func (l *Listener) Accept() (int, error) {
	for {
		fd, _, err := unix.Accept4(l.fd, unix.SOCK_CLOEXEC)
		if err == unix.EINTR || err == unix.ECONNABORTED {
			continue
		}
		if err != nil {
			l.mu.Lock()
			closed := l.closed
			l.mu.Unlock()
			if closed {
				return -1, ErrListenerClosed
			}
			return -1, fmt.Errorf("vhost-user: accept: %w", err)
		}
		return fd, nil
	}
}

// Close stops listening and removes the socket file. It wakes a blocked
// Accept (shutdown, unlike close, does that on Linux).
func (l *Listener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	unix.Shutdown(l.fd, unix.SHUT_RDWR)
	os.Remove(l.path)
	return nil
}

// Release closes the listening descriptor; call it once no Accept can be
// running any more.
func (l *Listener) Release() {
	l.Close()
	unix.Close(l.fd)
	if l.lockFd >= 0 {
		os.Remove(l.path + ".lock")
		unix.Close(l.lockFd)
		l.lockFd = -1
	}
}
