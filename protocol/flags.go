package protocol

// The flags of flushvm's commands that take a value. Tools that rewrite a
// flushvm command line (the nested harness maps host paths to L1 paths)
// must know which words are values; these lists are that contract, and
// flushvm's own tests check that its flag sets declare exactly these.
var (
	// RunValueFlags are the value flags of `flushvm run`.
	RunValueFlags = []string{"kernel", "initrd", "append", "mem", "cpus", "disk", "stats",
		"write-log", "power-cut", "seed", "cache-bound", "api", "watchdog"}
	// CrashtestValueFlags are the value flags of `flushvm crashtest`.
	CrashtestValueFlags = []string{"kernel", "initrd", "disk-size", "workload", "cuts", "policy", "seed", "cache",
		"shard", "report", "dir", "mem", "cpus", "records", "at", "boot-timeout", "mode", "k", "max-states", "budget", "batch", "reproduce", "torn", "jobs",
		"checker", "workload-dir", "fs"}
)
