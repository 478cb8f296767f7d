package vhostuser

import "errors"

// Frontend-caused faults. Each ends the session (Serve returns an error
// wrapping one of them); none is a host fault, so the process carries on.
var (
	// ErrMalformed reports a message whose header, size or payload does not
	// match the request it claims to be.
	ErrMalformed = errors.New("vhost-user: malformed message")
	// ErrBadFD reports a message carrying the wrong number of file
	// descriptors, or ones that are not what the request needs.
	ErrBadFD = errors.New("vhost-user: bad file descriptor")
	// ErrBadMemory reports a memory table whose regions overlap, wrap, are
	// empty, or cannot be mapped from the descriptors that came with them.
	ErrBadMemory = errors.New("vhost-user: bad memory table")
	// ErrBadRing reports a vring index, size or address the device cannot
	// use: out of range, not a power of two, or outside guest memory.
	ErrBadRing = errors.New("vhost-user: bad vring")
	// ErrMemoryFault reports an access to the frontend's memory that
	// faulted after SET_MEM_TABLE had accepted it: the frontend shrank a
	// region's file under the mapping (possible when the memfd lacks
	// F_SEAL_SHRINK). The backend survives it, but the session cannot go
	// on with memory that is gone.
	ErrMemoryFault = errors.New("vhost-user: frontend memory fault")
	// ErrBadFeatures reports a frontend acking features the backend did not
	// offer.
	ErrBadFeatures = errors.New("vhost-user: features not offered")
	// ErrNoBackendChannel reports a configuration-change notification with
	// no backend request channel to send it on.
	ErrNoBackendChannel = errors.New("vhost-user: frontend set up no backend request channel")
)
