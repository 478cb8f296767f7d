package vhostuser

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// errDisconnected is io.EOF at a message boundary: the frontend went away.
var errDisconnected = io.EOF

// conn is one end of a vhost-user unix stream socket.
type conn struct {
	fd  int
	oob []byte
}

func newConn(fd int) *conn {
	return &conn{fd: fd, oob: make([]byte, unix.CmsgSpace(maxFDs*4))}
}

// readFull reads exactly len(p) bytes, collecting any descriptors that
// arrive alongside into fds. At a message boundary (atStart and nothing
// read yet) end of stream is errDisconnected; elsewhere it is a truncated
// message.
func (c *conn) readFull(p []byte, fds *[]int, atStart bool) error {
	got := 0
	for got < len(p) {
		n, oobn, flags, _, err := unix.Recvmsg(c.fd, p[got:], c.oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("vhost-user: recvmsg: %w", err)
		}
		if oobn > 0 {
			if err := collectFDs(c.oob[:oobn], fds); err != nil {
				return err
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return fmt.Errorf("%w: more than %d descriptors in one message", ErrBadFD, maxFDs)
		}
		if n == 0 {
			if atStart && got == 0 {
				return errDisconnected
			}
			return fmt.Errorf("%w: connection closed inside a message", ErrMalformed)
		}
		got += n
	}
	return nil
}

func collectFDs(oob []byte, fds *[]int) error {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return fmt.Errorf("%w: control message: %v", ErrBadFD, err)
	}
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return fmt.Errorf("%w: SCM_RIGHTS: %v", ErrBadFD, err)
		}
		*fds = append(*fds, got...)
	}
	return nil
}

// recv reads one message. On error every descriptor received is closed.
func (c *conn) recv() (*message, error) {
	var hb [headerSize]byte
	m := &message{}
	if err := c.readFull(hb[:], &m.FDs, true); err != nil {
		closeFDs(m.FDs)
		return nil, err
	}
	m.header = decodeHeader(hb[:])
	if m.Flags&flagVersionMask != flagVersion {
		closeFDs(m.FDs)
		return nil, fmt.Errorf("%w: %s with version %d, want 1", ErrMalformed, reqName(m.Request), m.Flags&flagVersionMask)
	}
	if m.Flags&flagReply != 0 {
		closeFDs(m.FDs)
		return nil, fmt.Errorf("%w: %s flagged as a reply", ErrMalformed, reqName(m.Request))
	}
	if m.Size > maxPayload {
		closeFDs(m.FDs)
		return nil, fmt.Errorf("%w: %s claims a %d-byte payload (at most %d)", ErrMalformed, reqName(m.Request), m.Size, maxPayload)
	}
	m.Payload = make([]byte, m.Size)
	if err := c.readFull(m.Payload, &m.FDs, false); err != nil {
		closeFDs(m.FDs)
		if errors.Is(err, errDisconnected) {
			err = fmt.Errorf("%w: connection closed inside a message", ErrMalformed)
		}
		return nil, err
	}
	if len(m.FDs) > maxFDs {
		closeFDs(m.FDs)
		return nil, fmt.Errorf("%w: %d descriptors in one message", ErrBadFD, len(m.FDs))
	}
	return m, nil
}

// send writes one message (header and payload) with optional descriptors.
func (c *conn) send(h header, payload []byte, fds []int) error {
	h.Size = uint32(len(payload))
	buf := make([]byte, headerSize+len(payload))
	h.encode(buf)
	copy(buf[headerSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for len(buf) > 0 {
		n, err := unix.SendmsgN(c.fd, buf, oob, nil, unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("vhost-user: sendmsg: %w", err)
		}
		buf, oob = buf[n:], nil
	}
	return nil
}

// reply answers m with payload.
func (c *conn) reply(m *message, payload []byte) error {
	return c.send(header{Request: m.Request, Flags: flagVersion | flagReply}, payload, nil)
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
