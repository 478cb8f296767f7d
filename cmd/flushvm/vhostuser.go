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
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/virtio/vhostuser"
)

// vhostUserBlkUsage is the subcommand's synopsis.
const vhostUserBlkUsage = `usage: flushvm vhost-user-blk --socket PATH --disk SPEC [--queues N] [--queue-size N] [--stats FILE]

Serves the disk SPEC (as in flushvm run: path=FILE[,cache=MODE][,readonly=on|off][,serial=S])
to one vhost-user frontend connecting to the unix socket PATH. When the frontend
disconnects, or on SIGINT/SIGTERM, writes --stats and exits 0. A frontend that
breaks the protocol ends the session: the reason is logged, --stats written, exit 1.
--queue-size must equal the frontend's ring size (QEMU vhost-user-blk-pci queue-size,
128 by default): the device tells the guest how long a request may be from it.
A crashed frontend is not served again (no inflight tracking): start a new backend.
FLUSHVM_VHOST_TRACE=1 in the environment logs every protocol message.

Example:
  flushvm vhost-user-blk --socket /tmp/vhu.sock --disk path=disk.img,cache=writeback --stats stats.json &
  qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
      -chardev socket,id=vhu,path=/tmp/vhu.sock -device vhost-user-blk-pci,chardev=vhu,num-queues=1
`

func init() {
	registerCommand(command{
		name:    "vhost-user-blk",
		summary: "serve a disk to QEMU (or another VMM) as a vhost-user-blk backend",
		run: func(args []string, _, stderr io.Writer) int {
			return runVhostUserBlk(args, stderr)
		},
		usage: func(w io.Writer) { fmt.Fprint(w, vhostUserBlkUsage) },
	})
}

// errVhostUsage marks command-line mistakes (exit status 2); its text is
// not shown.
var errVhostUsage = errors.New("usage")

// usageMessage strips errVhostUsage's "usage: " prefix.
func usageMessage(err error) string {
	return strings.TrimPrefix(oneLine(err), errVhostUsage.Error()+": ")
}

// runVhostUserBlk runs `flushvm vhost-user-blk args...` and returns the
// process exit status: 0 after a clean session, 1 when the frontend broke
// the protocol or the stats could not be written, 2 on a usage error.
func runVhostUserBlk(args []string, stderr io.Writer) int {
	logger := log.New(stderr, "flushvm vhost-user-blk: ", 0)
	err := vhostUserBlk(args, logger)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, pflag.ErrHelp):
		fmt.Fprint(stderr, vhostUserBlkUsage)
		return exitOK
	case errors.Is(err, errVhostUsage):
		logger.Print(usageMessage(err))
		return exitUsage
	default:
		logger.Print(oneLine(err))
		return exitFailure
	}
}

func vhostUserBlk(args []string, logger *log.Logger) error {
	fs := pflag.NewFlagSet("vhost-user-blk", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	socket := fs.String("socket", "", "unix socket PATH to listen on")
	diskSpec := fs.String("disk", "", "disk SPEC: path=FILE[,cache=MODE][,readonly=on|off][,serial=S]")
	queues := fs.Int("queues", 1, fmt.Sprintf("number of request queues (1..%d)", blk.MaxQueues))
	queueSize := fs.Uint16("queue-size", 128, "ring size of every queue; must equal the frontend's (QEMU vhost-user-blk-pci queue-size)")
	statsPath := fs.String("stats", "", "write the statistics JSON document to FILE at exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v (see flushvm help vhost-user-blk)", errVhostUsage, err)
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("%w: unexpected argument %q (see --help)", errVhostUsage, fs.Arg(0))
	case *socket == "":
		return fmt.Errorf("%w: --socket PATH is required", errVhostUsage)
	case *diskSpec == "":
		return fmt.Errorf("%w: --disk SPEC is required", errVhostUsage)
	case *queues < 1 || *queues > blk.MaxQueues:
		return fmt.Errorf("%w: --queues %d: want 1..%d", errVhostUsage, *queues, blk.MaxQueues)
	case *queueSize < 4 || *queueSize > blk.MaxQueueSizeLimit || *queueSize&(*queueSize-1) != 0:
		return fmt.Errorf("%w: --queue-size %d: want a power of two, 4..%d", errVhostUsage, *queueSize, blk.MaxQueueSizeLimit)
	}
	spec, err := blk.ParseSpec(*diskSpec)
	if err != nil {
		return fmt.Errorf("%w: --disk: %v", errVhostUsage, err)
	}
	if spec.HasPowerCut() {
		// The backend has no power to cut: only flushvm run stops a
		// machine at the instant of a cut.
		return fmt.Errorf("%w: --disk: powercut= works with flushvm run only", errVhostUsage)
	}
	if *statsPath != "" {
		if st, err := os.Stat(filepath.Dir(*statsPath)); err != nil || !st.IsDir() {
			return fmt.Errorf("%w: --stats %s: directory does not exist", errVhostUsage, *statsPath)
		}
	}
	dev, err := blk.Open(spec, blk.Options{Queues: *queues, MaxQueueSize: *queueSize})
	if err != nil {
		return fmt.Errorf("%w: --disk: %v", errVhostUsage, err)
	}
	defer dev.Close()
	l, err := vhostuser.Listen(*socket)
	if err != nil {
		return fmt.Errorf("%w: --socket: %v", errVhostUsage, err)
	}
	defer l.Release()

	// SIGINT/SIGTERM: stop accepting, and shut the frontend's connection
	// down so Serve returns after resetting the device (requests in flight
	// complete first).
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

	logger.Printf("serving %s (cache=%s, %d queue(s) of %d) on %s", spec.Path, spec.Cache, *queues, *queueSize, *socket)
	var sessionErr error
	fd, err := l.Accept()
	switch {
	case errors.Is(err, vhostuser.ErrListenerClosed):
		// Signalled before a frontend came.
	case err != nil:
		sessionErr = err
	default:
		l.Close() // one frontend per process
		mu.Lock()
		if stopping {
			unix.Shutdown(fd, unix.SHUT_RDWR)
		}
		conn = fd
		mu.Unlock()
		logger.Printf("frontend connected")
		sessionErr = vhostuser.Serve(fd, dev, vhostuser.Options{Log: logger, Trace: os.Getenv("FLUSHVM_VHOST_TRACE") != ""})
		mu.Lock()
		conn = -1
		mu.Unlock()
		unix.Close(fd)
		if sessionErr == nil {
			logger.Printf("frontend disconnected")
		} else {
			sessionErr = fmt.Errorf("session ended: %w", sessionErr)
		}
	}
	if *statsPath != "" {
		if err := disk.WriteStats(*statsPath, disk.Stats{Disks: []disk.DiskStats{{Stats: dev.Stats()}}}); err != nil {
			if sessionErr != nil {
				logger.Print(sessionErr)
			}
			return err
		}
	}
	return sessionErr
}
