// Package blk is the virtio-blk device: it parses requests out of descriptor
// chains, applies the disk's cache mode (sync policy), executes I/O on a host
// file through an engine that reads and writes guest memory in place, and
// counts what it did. It serves any transport through virtio.Device and never
// imports vmm or kvm.
//
// The pieces, one file each:
//
//   - backend.go: Backend, where a disk's bytes live, and its durability
//     contract; file.go: FileBackend, a regular file or block device.
//   - request.go: parsing one request from a chain, with a typed error for
//     every guest fault. It knows nothing about files.
//   - policy.go: one type per cache mode.
//   - flush.go: turning FLUSHes and write-through writes into as few host
//     syncs as the virtio durability rule allows.
//   - engine.go: queue loops, the worker pool, batched completion.
//   - device.go: features, configuration space, activation; Open.
//
// What it must never do: trust the guest (every buffer is resolved through
// guestmem, every sector range is checked, a malformed chain is an error and
// never a panic), touch memory or disk ranges the guest does not own,
// acknowledge a FLUSH before the writes it covers are durable (except with
// cache=unsafe, whose point that is), or allocate per request on the hot
// path.
package blk
