package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/guest/internal/pid1"
	"github.com/flushvm/flushvm/protocol"
)

// The checkstates mode's devices and bounds (protocol/crashcheck.go).
const (
	// jobDisk is the second virtio-blk disk: the job (protocol.Job).
	jobDisk = "/dev/vdb"
	// maxJob bounds the job read: a line per key or state is small, and
	// a wrong disk must not fill the guest's memory.
	maxJob = 64 << 20
	// serialPath is where the crash disk's virtio-blk serial reads; the
	// kernel asks the device (VIRTIO_BLK_T_GET_ID) on every read.
	serialPath = "/sys/block/vda/serial"
	// serialPoll and serialWait pace and bound the wait for a state:
	// flushvm switches states before the guest's console write returns,
	// but the console line may sit in the UART driver's buffer a while.
	serialPoll = 5 * time.Millisecond
	serialWait = 10 * time.Second
)

// checkStates checks a batch of crash states on the disk:
// flushvm.run=checkstates:W. For each state of the job it asks the host
// for the state, waits until the disk shows it, and checks it as check:W
// does with the keys the state must keep, between the state's begin and
// end lines. The status is 0 when every state was checked (the verdicts
// are in the end lines), exitBatchFailed when the batch could not run.
func (d diskModes) checkStates(w string) int {
	j, err := d.job()
	if err == nil && j.Checker == "" {
		err = fmt.Errorf("%s: no checker line", jobDisk)
	}
	for i := 0; err == nil && i < len(j.States); i++ {
		err = d.checkState(w, j.Checker, i, j.Acks[:j.States[i]])
	}
	if err != nil {
		d.logf(prefix, "checkstates: %v", err)
		return exitBatchFailed
	}
	return 0
}

// checkState asks for state i, waits for it, and checks it between its
// begin and end lines. An error means the batch cannot go on; a state
// that fails its check is no error.
func (d diskModes) checkState(w, checker string, i int, acked []string) error {
	fmt.Fprintln(d.out, protocol.FormatCrashCheckNext(i))
	if err := d.sys.waitSerial(protocol.CrashStateSerial(i)); err != nil {
		return fmt.Errorf("state %d: %w", i, err)
	}
	// Blocks cached while the disk showed another state are not this
	// state's.
	if err := d.sys.flushBuffers(); err != nil {
		return fmt.Errorf("state %d: %w", i, err)
	}
	fmt.Fprintln(d.out, protocol.FormatStateBegin(i))
	st := d.checkDisk(w, checker, acked)
	// Write what the check left dirty (the journal replay) now, while the
	// disk still shows this state, so none of it reaches the next one.
	ferr := d.sys.flushBuffers()
	fmt.Fprintln(d.out, protocol.FormatStateEnd(i, st))
	if ferr != nil {
		return fmt.Errorf("after state %d: %w", i, ferr)
	}
	return nil
}

// readJob waits for the crash disk and the job disk and reads the job
// whole.
func (machine) readJob() ([]byte, error) {
	if err := pid1.WaitForFiles([]string{disk, jobDisk}, diskWait); err != nil {
		return nil, fmt.Errorf("job: %w", err)
	}
	f, err := os.Open(jobDisk)
	if err != nil {
		return nil, fmt.Errorf("job: %w", err)
	}
	defer f.Close()
	b, err := readBounded(f, maxJob)
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", jobDisk, err)
	}
	return b, nil
}

// readBounded reads r to its end, refusing more than max bytes.
func readBounded(r io.Reader, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	return b, nil
}

// waitSerial polls the crash disk's serial until it reads want.
func (machine) waitSerial(want string) error {
	read := func() (string, error) {
		b, err := os.ReadFile(serialPath)
		return string(b), err
	}
	return pollSerial(read, want, serialPoll, serialWait)
}

// pollSerial calls read every interval until it returns want (NUL padding
// and white space trimmed), for at most timeout. A read error counts as
// not yet: the serial may be unreadable while the disk settles.
func pollSerial(read func() (string, error), want string, every, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		s, err := read()
		got := strings.Trim(s, "\x00 \t\r\n")
		if err == nil && got == want {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("%s: want %q after %v: %w", serialPath, want, timeout, err)
			}
			return fmt.Errorf("%s reads %q, want %q after %v", serialPath, got, want, timeout)
		}
		time.Sleep(every)
	}
}

// flushBuffers writes the disk's dirty cached blocks and drops its clean
// ones (ioctl BLKFLSBUF), so the next reads reach the device.
func (machine) flushBuffers() error {
	f, err := os.Open(disk)
	if err != nil {
		return fmt.Errorf("flush buffers: %w", err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0); err != nil {
		return fmt.Errorf("flush buffers of %s: %w", disk, err)
	}
	return nil
}
