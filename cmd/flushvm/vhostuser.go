package main

// The `flushvm vhost-user-blk` subcommand: serve one disk to one vhost-user
// frontend (QEMU's vhost-user-blk-pci, Cloud Hypervisor, crosvm).

import (
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/virtio/vhostuser"
)

// vhostUserFlags are the flags of `flushvm vhost-user-blk`.
type vhostUserFlags struct {
	fs        *pflag.FlagSet
	socket    string
	disks     []string
	queues    int
	queueSize int
	stats     string
}

func newVhostUserFlags() *vhostUserFlags {
	f := &vhostUserFlags{fs: pflag.NewFlagSet("vhost-user-blk", pflag.ContinueOnError)}
	fs := f.fs
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.socket, "socket", "", "unix socket PATH to listen on (required)\n  e.g. --socket /tmp/vhu.sock")
	fs.StringArrayVar(&f.disks, "disk", nil, "disk SPEC, as in flushvm run: path=FILE[,cache=MODE][,readonly=on|off][,serial=S]\n"+
		"  (required)\n  e.g. --disk path=disk.img,cache=writeback")
	fs.IntVar(&f.queues, "queues", 1, fmt.Sprintf("number of request queues (1..%d)\n  e.g. --queues 2", blk.MaxQueues))
	fs.IntVar(&f.queueSize, "queue-size", 128, "ring size of every queue; must equal the frontend's (QEMU vhost-user-blk-pci\n"+
		"  queue-size): the device tells the guest how long a request may be from it\n  e.g. --queue-size 256")
	fs.StringVar(&f.stats, "stats", "", "write the statistics JSON document to FILE at exit\n  e.g. --stats stats.json")
	fs.Usage = func() {}
	return f
}

func (f *vhostUserFlags) usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: flushvm vhost-user-blk --socket PATH --disk SPEC [--queues N] [--queue-size N] [--stats FILE]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Serves the disk SPEC to one vhost-user frontend connecting to the unix socket PATH.")
	fmt.Fprintln(w, "When the frontend disconnects, or on SIGINT/SIGTERM, writes --stats and exits 0. A")
	fmt.Fprintln(w, "frontend that breaks the protocol ends the session: the reason is logged, --stats")
	fmt.Fprintln(w, "written, exit 1. A crashed frontend is not served again (no inflight tracking): start")
	fmt.Fprintln(w, "a new backend. FLUSHVM_VHOST_TRACE=1 in the environment logs every protocol message.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Flags:")
	fmt.Fprint(w, f.fs.FlagUsagesWrapped(0))
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Exit status: 0 clean session, 1 protocol or I/O failure, 2 usage error.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Example:")
	fmt.Fprintln(w, "  flushvm vhost-user-blk --socket /tmp/vhu.sock --disk path=disk.img,cache=writeback --stats stats.json &")
	fmt.Fprintln(w, "  qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \\")
	fmt.Fprintln(w, "      -chardev socket,id=vhu,path=/tmp/vhu.sock -device vhost-user-blk-pci,chardev=vhu,num-queues=1")
}

func init() {
	registerCommand(command{
		name:    "vhost-user-blk",
		summary: "serve a disk to QEMU (or another VMM) as a vhost-user-blk backend",
		run:     runVhostUserBlk,
		usage:   func(w io.Writer) { newVhostUserFlags().usage(w) },
	})
}

// runVhostUserBlk runs `flushvm vhost-user-blk args...` and returns the
// process exit status: 0 after a clean session, 1 when the frontend broke
// the protocol or the stats could not be written, 2 on a usage error.
func runVhostUserBlk(args []string, stdout, stderr io.Writer) int {
	f := newVhostUserFlags()
	if status, ok := parseCommandFlags("vhost-user-blk", f.fs, f.usage, args, stdout, stderr); !ok {
		return status
	}
	if err := f.serve(log.New(stderr, "flushvm vhost-user-blk: ", 0)); err != nil {
		return commandFailed("vhost-user-blk", err, stderr)
	}
	return exitOK
}

// check validates the flags and returns the disk's spec.
func (f *vhostUserFlags) check() (blk.Spec, error) {
	switch {
	case f.socket == "":
		return blk.Spec{}, userErrorf("--socket PATH is required")
	case len(f.disks) == 0:
		return blk.Spec{}, userErrorf("--disk SPEC is required")
	case len(f.disks) > 1:
		return blk.Spec{}, userErrorf("--disk given %d times: a backend serves one disk (start one per disk)", len(f.disks))
	case f.queues < 1 || f.queues > blk.MaxQueues:
		return blk.Spec{}, userErrorf("--queues %d: want 1..%d", f.queues, blk.MaxQueues)
	case f.queueSize < 4 || f.queueSize > int(blk.MaxQueueSizeLimit) || f.queueSize&(f.queueSize-1) != 0:
		return blk.Spec{}, userErrorf("--queue-size %d: want a power of two, 4..%d", f.queueSize, blk.MaxQueueSizeLimit)
	}
	spec, err := blk.ParseSpec(f.disks[0])
	if err != nil {
		return spec, userErrorf("--disk: %v", err)
	}
	if spec.HasPowerCut() {
		// The backend has no power to cut: only flushvm run stops a
		// machine at the instant of a cut.
		return spec, userErrorf("--disk: powercut= works with flushvm run only")
	}
	if f.stats != "" {
		if st, err := os.Stat(filepath.Dir(f.stats)); err != nil || !st.IsDir() {
			return spec, userErrorf("--stats %s: directory does not exist", f.stats)
		}
	}
	return spec, nil
}

// serve opens the disk, serves one frontend session and writes --stats.
func (f *vhostUserFlags) serve(logger *log.Logger) error {
	spec, err := f.check()
	if err != nil {
		return err
	}
	dev, err := blk.Open(spec, blk.Options{Queues: f.queues, MaxQueueSize: uint16(f.queueSize)})
	if err != nil {
		return userErrorf("--disk: %v", err)
	}
	defer dev.Close()
	l, err := vhostuser.Listen(f.socket)
	if err != nil {
		return userErrorf("--socket: %v", err)
	}
	defer l.Release()
	logger.Printf("serving %s (cache=%s, %d queue(s) of %d) on %s", spec.Path, spec.Cache, f.queues, f.queueSize, f.socket)
	sessionErr := serveOne(l, dev, logger)
	if f.stats != "" {
		if err := disk.WriteStats(f.stats, disk.NewStats(disk.DiskStats{Stats: dev.Stats()})); err != nil {
			if sessionErr != nil {
				logger.Print(sessionErr)
			}
			return err
		}
	}
	return sessionErr
}

// serveOne accepts one frontend on l and serves dev to it until it
// disconnects. SIGINT/SIGTERM stop accepting and shut the frontend's
// connection down, so Serve returns after resetting the device (requests in
// flight complete first).
func serveOne(l *vhostuser.Listener, dev *blk.Device, logger *log.Logger) error {
	var (
		mu       sync.Mutex
		conn     = -1
		stopping bool
	)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		for s := range sigs {
			logger.Printf("%v: ending the session", s)
			mu.Lock()
			stopping = true
			if conn >= 0 {
				unix.Shutdown(conn, unix.SHUT_RDWR)
			}
			mu.Unlock()
			l.Close()
		}
	}()
	fd, err := l.Accept()
	switch {
	case errors.Is(err, vhostuser.ErrListenerClosed):
		return nil // signalled before a frontend came
	case err != nil:
		return err
	}
	l.Close() // one frontend per process
	mu.Lock()
	if stopping {
		unix.Shutdown(fd, unix.SHUT_RDWR)
	}
	conn = fd
	mu.Unlock()
	logger.Printf("frontend connected")
	err = vhostuser.Serve(fd, dev, vhostuser.Options{Log: logger, Trace: os.Getenv("FLUSHVM_VHOST_TRACE") != ""})
	mu.Lock()
	conn = -1
	mu.Unlock()
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("session ended: %w", err)
	}
	logger.Printf("frontend disconnected")
	return nil
}
