package blk

// Stats is one disk's entry in the --stats JSON document. Field names are a
// contract with tools that read the file: add fields, never rename them.
type Stats struct {
	Path  string    `json:"path"`
	Cache CacheMode `json:"cache"`
	// WCE is the write cache state the guest currently sees (true: write
	// back).
	WCE bool `json:"wce"`

	Reads       uint64 `json:"reads"`
	Writes      uint64 `json:"writes"`
	Flushes     uint64 `json:"flushes"`
	Discards    uint64 `json:"discards"`
	WriteZeroes uint64 `json:"write_zeroes"`
	GetIDs      uint64 `json:"get_ids"`
	Unsupported uint64 `json:"unsupported"`

	BytesRead    uint64 `json:"bytes_read"`
	BytesWritten uint64 `json:"bytes_written"`

	// Errors counts requests completed with VIRTIO_BLK_S_IOERR, guest- or
	// host-caused; InvalidRequests counts the guest-caused ones among them
	// and malformed chains.
	Errors          uint64 `json:"errors"`
	InvalidRequests uint64 `json:"invalid_requests"`

	// WCEChanges counts guest writes to the config writeback field that
	// changed it.
	WCEChanges uint64 `json:"wce_changes"`
	// HostSyncs counts fdatasync/fsync calls issued to the host file.
	HostSyncs uint64 `json:"host_syncs"`
	// FlushesElided counts guest FLUSHes answered without a host sync because
	// nothing was written since the last one; FlushesMerged those that shared
	// a host sync with another FLUSH.
	FlushesElided uint64 `json:"flushes_elided"`
	FlushesMerged uint64 `json:"flushes_merged"`

	// Held is the number of requests an error policy of stop holds now
	// (werror=/rerror=); ErrorStops counts every request it ever held
	// (a retried request that fails again counts again); ErrorsIgnored
	// counts failed requests werror=/rerror=ignore completed as
	// successful.
	Held          uint64 `json:"held"`
	ErrorStops    uint64 `json:"error_stops"`
	ErrorsIgnored uint64 `json:"errors_ignored"`

	// AIO is the I/O engine serving the disk (aio=; "threads" where
	// io_uring was asked for and the kernel or the disk's layers refused
	// it, AIOFallback then saying why); RingRequests counts the reads and
	// writes io_uring completed.
	AIO          AIOEngine `json:"aio"`
	AIOFallback  string    `json:"aio_fallback,omitempty"`
	RingRequests uint64    `json:"ring_requests"`

	// UsedBatches counts used-ring publications (one used->idx update
	// each, for every completion that was ready together); Interrupts
	// counts the notifications among them that the driver asked for
	// (EVENT_IDX or the no-interrupt flag) and got: MSI-X messages on PCI,
	// call eventfd writes on vhost-user. Interrupts over completed
	// requests is the interrupt rate the guest sees.
	UsedBatches uint64 `json:"used_batches"`
	Interrupts  uint64 `json:"interrupts"`
}
