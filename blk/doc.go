// Package blk is the virtio-blk device: it parses requests out of descriptor
// chains, applies the disk's cache mode (sync policy), executes I/O on a host
// file through an engine that reads and writes guest memory in place, and
// counts what it did. It serves any transport through virtio.Device and never
// imports vmm or kvm.
package blk
