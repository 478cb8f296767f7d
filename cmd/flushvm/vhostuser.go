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
	"sync"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/internal/cli"
	"github.com/flushvm/flushvm/protocol"
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
	// The power-cut flags, as in flushvm run.
	powerCut   string
	seed       uint64
	writeLog   string
	cacheBound string
	// api is the control API's socket.
	api string
}

func newVhostUserFlags() *vhostUserFlags {
	f := &vhostUserFlags{fs: pflag.NewFlagSet("vhost-user-blk", pflag.ContinueOnError)}
	fs := f.fs
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.socket, "socket", "", "unix socket PATH to listen on (required)\n  e.g. --socket /tmp/vhu.sock")
	fs.StringArrayVar(&f.disks, "disk", nil, "disk SPEC, as in flushvm run: path=FILE[,cache=MODE][,readonly=on|off][,serial=S]\n"+
		"  (required)\n  e.g. --disk path=disk.img,cache=writeback")
	fs.IntVar(&f.queues, "queues", 1, fmt.Sprintf("number of request queues (1..%d; the SPEC's queues=N says the same)\n  e.g. --queues 2", blk.MaxQueues))
	fs.IntVar(&f.queueSize, "queue-size", 128, "ring size of every queue; must equal the frontend's (QEMU vhost-user-blk-pci\n"+
		"  queue-size): the device tells the guest how long a request may be from it\n  e.g. --queue-size 256")
	fs.StringVar(&f.stats, "stats", "", "write the statistics JSON document to FILE at exit\n  e.g. --stats stats.json")
	fs.StringVar(&f.powerCut, "power-cut", "", "cut the power of a powercut= disk when WHEN happens: after=DURATION (from the start),\n"+
		"  writes=N or flushes=N (the N-th reaching the disk); the backend then exits 100 and its\n"+
		"  frontend's guest is left with a dead disk: nothing held completes\n  e.g. --power-cut writes=500")
	fs.Uint64Var(&f.seed, "seed", 0, "seed of the power-cut policy's random choices\n  e.g. --seed 42")
	fs.StringVar(&f.writeLog, "write-log", "", "record the disk's writes, discards and flushes (dm-log-writes format)\n  e.g. --write-log run.wlog")
	fs.StringVar(&f.api, "api", "", "serve the control API (HTTP+JSON) on this unix socket, as flushvm run does (GET /stats,\n"+
		"  fault rules, POST /resume and /disks/0/fail-held for werror=stop, POST /power-cut)\n  e.g. --api /tmp/vhu-api.sock")
	fs.StringVar(&f.cacheBound, "cache-bound", "", "most unstable data the powercut= disk's volatile cache keeps before it destages\n"+
		"  (K/M/G/T; a bare number is bytes)\n  e.g. --cache-bound 64M")
	fs.Usage = func() {}
	return f
}

func (f *vhostUserFlags) usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: flushvm vhost-user-blk --socket PATH --disk SPEC [--queues N] [--queue-size N] [--stats FILE]")
	fmt.Fprintln(w, "                              [--power-cut WHEN] [--seed N] [--write-log FILE] [--cache-bound SIZE]")
	fmt.Fprintln(w, "                              [--api SOCKET]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Serves the disk SPEC to one vhost-user frontend connecting to the unix socket PATH.")
	fmt.Fprintln(w, "When the frontend disconnects, or on SIGINT/SIGTERM, writes --stats and exits 0. A")
	fmt.Fprintln(w, "frontend that breaks the protocol ends the session: the reason is logged, --stats")
	fmt.Fprintln(w, "written, exit 1. A crashed frontend is not served again (no inflight tracking): start")
	fmt.Fprintln(w, "a new backend. FLUSHVM_VHOST_TRACE=1 in the environment logs every protocol message.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Flags:")
	cli.FlagTable(w, f.fs)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "With powercut=POLICY in the SPEC the disk runs on the power-cut model, as under flushvm")
	fmt.Fprintln(w, "run: --power-cut cuts its power, the policy decides what the image keeps, one line on")
	fmt.Fprintln(w, "stderr says what the cut did (with the replay command when --write-log is given).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "faults=FILE, werror= and rerror= work as under flushvm run, except that werror=stop holds")
	fmt.Fprintln(w, "the failed request without pausing the frontend's VM (a backend cannot): POST /resume on")
	fmt.Fprintln(w, "--api retries it. An error policy of stop needs --api.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Exit status: 0 clean session, 1 protocol or I/O failure, 2 usage error, 100 power cut.")
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
	status, err := f.serve(log.New(stderr, "flushvm vhost-user-blk: ", 0))
	if err != nil {
		return commandFailed("vhost-user-blk", err, stderr)
	}
	return status
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
	if spec.Queues != 0 {
		if f.fs.Changed("queues") && f.queues != spec.Queues {
			return spec, userErrorf("--queues %d and the SPEC's queues=%d disagree: give one", f.queues, spec.Queues)
		}
		f.queues = spec.Queues
	}
	if disk.HasStopPolicy(spec) && f.api == "" {
		return spec, userErrorf("--disk: an error policy of stop holds failed requests until POST /resume: give --api SOCKET")
	}
	if !spec.HasPowerCut() {
		flags := []string{"power-cut", "cache-bound"}
		if spec.Faults == "" {
			flags = append(flags, "seed") // it seeds fault rules too
		}
		for _, fl := range flags {
			if f.fs.Changed(fl) {
				return spec, userErrorf("--%s needs powercut=POLICY in the --disk SPEC", fl)
			}
		}
	}
	if err := cli.OutputDir("stats", f.stats); err != nil {
		return spec, userError{err}
	}
	return spec, nil
}

// serve opens the disk, serves one frontend session and writes --stats.
func (f *vhostUserFlags) serve(logger *log.Logger) (status int, err error) {
	spec, err := f.check()
	if err != nil {
		return 0, err
	}
	trig, o, err := f.diskOptions(spec)
	if err != nil {
		return 0, err
	}
	o.Device.Stopped = func(e blk.ErrorStopEvent) { logger.Print(protocol.FormatErrorStop(0, e.String(), false)) }
	d, err := disk.Open(spec, o)
	if err != nil {
		return 0, userErrorf("--disk: %v", err)
	}
	if f.api != "" {
		api, err := startAPI(f.api, newAPIHandler(&vhostController{diskControl: diskControl{disks: []*disk.Disk{d}}, ps: o.Supply}))
		if err != nil {
			d.Dev.Close()
			return 0, userErrorf("--api: %v", err)
		}
		defer func() {
			if cerr := api.Close(); cerr != nil {
				logger.Printf("--api: %v", cerr)
			}
		}()
	}
	cut := make(chan struct{})
	if ps := o.Supply; ps != nil {
		ps.Stop = func() { close(cut) }
		defer ps.StartTimer(trig)()
	}
	l, err := vhostuser.Listen(f.socket)
	if err != nil {
		d.Dev.Close()
		return 0, userErrorf("--socket: %v", err)
	}
	defer l.Release()
	// Before "serving": a SIGTERM sent by whoever waited for that line
	// must end the session, not kill the process with the socket left.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	logger.Printf("serving %s (cache=%s, %d queue(s) of %d) on %s", spec.Path, spec.Cache, f.queues, f.queueSize, f.socket)
	done := make(chan error, 1)
	go func() { done <- serveOne(l, d.Dev, logger, sigs) }()
	select {
	case sessionErr := <-done:
		return 0, f.endSession(d, sessionErr, logger)
	case <-cut:
		return f.powerOff(d, o.Supply, logger)
	}
}

// diskOptions checks the power-cut flags against the disk and returns the
// trigger and how to open the disk's stack.
func (f *vhostUserFlags) diskOptions(spec blk.Spec) (protocol.Trigger, disk.Options, error) {
	o := disk.Options{WriteLog: f.writeLog, Seed: f.seed, Device: blk.Options{Queues: f.queues, MaxQueueSize: uint16(f.queueSize)}}
	var trig protocol.Trigger
	if f.powerCut != "" {
		t, err := protocol.ParseTrigger(f.powerCut)
		if err != nil {
			return trig, o, userErrorf("--power-cut: %v", err)
		}
		trig = t
	}
	if f.cacheBound != "" {
		b, err := protocol.ParseSize(f.cacheBound)
		if err != nil {
			return trig, o, userErrorf("--cache-bound: %v", err)
		}
		o.CacheBound = int64(b)
	}
	if spec.HasPowerCut() {
		o.Supply = disk.NewPowerSupply()
		o.Supply.HoldForever()
		o.Supply.Arm(trig)
	}
	return trig, o, nil
}

// endSession closes the disk after its session and writes --stats.
func (f *vhostUserFlags) endSession(d *disk.Disk, sessionErr error, logger *log.Logger) error {
	err := f.writeStats(d)
	if cerr := d.Dev.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("closing the disk: %w", cerr)
	}
	if err != nil {
		if sessionErr != nil {
			logger.Print(sessionErr)
		}
		return err
	}
	return sessionErr
}

// powerOff ends the backend after a power cut: the policy decides what the
// image keeps, one line says what the cut did, --stats is written, and the
// process ends with the requests the cut held still held. The frontend's
// guest keeps running under its own VMM, so nothing may complete after the
// instant of the cut, not even with an error: its disk went dead.
func (f *vhostUserFlags) powerOff(d *disk.Disk, ps *disk.PowerSupply, logger *log.Logger) (int, error) {
	_, cutErr := d.PowerCut(ps.Why(), f.seed)
	logger.Print(d.Summary("disk " + d.Dev.Spec().Path))
	err := f.writeStats(d)
	if cutErr != nil {
		return exitFailure, fmt.Errorf("power cut: %w", cutErr)
	}
	if err != nil {
		return exitFailure, err
	}
	return exitPowerCut, nil
}

// writeStats writes --stats (when given) with the disk's entry.
func (f *vhostUserFlags) writeStats(d *disk.Disk) error {
	if f.stats == "" {
		return nil
	}
	return disk.WriteStats(f.stats, disk.NewStats(d.Stats()))
}

// serveOne accepts one frontend on l and serves dev to it until it
// disconnects. A signal on sigs (SIGINT/SIGTERM) stops accepting and shuts
// the frontend's connection down, so Serve returns after resetting the
// device (requests in flight complete first).
func serveOne(l *vhostuser.Listener, dev *blk.Device, logger *log.Logger, sigs <-chan os.Signal) error {
	var (
		mu       sync.Mutex
		conn     = -1
		stopping bool
	)
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

// vhostController is the API's view of a vhost-user backend: its one
// disk, and its power supply when the disk has powercut=.
type vhostController struct {
	diskControl
	ps *disk.PowerSupply
}

// PowerCut cuts the power now.
func (c *vhostController) PowerCut() error {
	if c.ps == nil {
		return errNoPowerCutDisk
	}
	if !c.ps.Cut("power cut by the API") {
		return errPowerAlreadyCut
	}
	return nil
}

// Resume retries the held requests (the frontend's VM never stopped).
func (c *vhostController) Resume() int { return c.resumeDisks() }
