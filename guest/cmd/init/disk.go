package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/guest/internal/pid1"
	"github.com/flushvm/flushvm/protocol"
)

// The crash-test modes work on the first virtio-blk disk, formatted with
// the file system the kernel command line names (flushvm.fs=, default
// ext4).
const (
	disk       = "/dev/vda"
	mountPoint = "/mnt"
	// diskWait bounds the wait for the disk's device node: virtio_blk
	// probes asynchronously, and a nested guest is slow.
	diskWait = 30 * time.Second
)

// Exit statuses of the disk modes beyond the workload's own.
const (
	// exitCheckFailed: check mode found a violation, an fsck error, or
	// could not check.
	exitCheckFailed = 1
	// exitBatchFailed: checkstates mode could not check every state of
	// its batch (no manifest, a state that did not appear).
	exitBatchFailed = 1
	// exitDiskSetup: the disk could not be formatted or mounted.
	exitDiskSetup = 126
)

// system is what the disk modes do to the machine; tests replace it.
type system interface {
	// waitDisk waits for the disk's device node.
	waitDisk() error
	// mount mounts the disk's file system of type fstype on mountPoint
	// (replaying its journal, as a reboot would).
	mount(fstype string) error
	// unmount unmounts mountPoint.
	unmount() error
	// run runs a program on the console and returns its exit status.
	run(argv []string) (int, error)
	// runJob runs a workload or checker command of the job (a shell
	// command line) in mountPoint with the protocol's environment; a
	// checker (acked not nil) gets the keys it must find intact.
	runJob(cmd string, acked []string) (int, error)
	// syncDisk makes everything written to the disk durable (a FLUSH).
	syncDisk() error
	// readJob waits for the disk and the job disk and returns the job
	// disk's content (crash:W, check:W, checkstates:W).
	readJob() ([]byte, error)
	// waitSerial waits until the disk's virtio-blk serial reads want.
	waitSerial(want string) error
	// flushBuffers drops the guest's cached blocks of the disk, writing
	// dirty ones first (BLKFLSBUF).
	flushBuffers() error
	// loadFS loads the modules of a file system the image carries as an
	// on-demand set (protocol.ModuleSetList; none for ext4).
	loadFS(fs string) error
}

// diskModes runs the flushvm.run= modes of a crash-test campaign.
type diskModes struct {
	sys system
	out io.Writer
	// fs is the file system (protocol.FileSystems; "": ext4).
	fs string
}

// fsTools are the commands that format and check one file system (the
// device is appended).
type fsTools struct{ mkfs, fsck []string }

// fileSystems are the tools of each file system the image carries: the
// checks are read-only (-n, --readonly) and run after the mount replayed
// the journal or log.
var fileSystems = map[string]fsTools{
	protocol.FSExt4:  {mkfs: []string{"/sbin/mke2fs", "-t", "ext4", "-q", "-F"}, fsck: []string{"/sbin/e2fsck", "-fn"}},
	protocol.FSXFS:   {mkfs: []string{"/sbin/mkfs.xfs", "-f", "-q"}, fsck: []string{"/sbin/xfs_repair", "-n"}},
	protocol.FSBtrfs: {mkfs: []string{"/sbin/mkfs.btrfs", "-f", "-q"}, fsck: []string{"/sbin/btrfs", "check", "--readonly"}},
}

// fsName is the file system's name, ext4 when none was given.
func (d diskModes) fsName() string {
	if d.fs == "" {
		return protocol.FSExt4
	}
	return d.fs
}

// tools returns the file system's tools with the disk appended.
func (d diskModes) tools() (mkfs, fsck []string) {
	t := fileSystems[d.fsName()]
	return append(slices.Clip(t.mkfs), disk), append(slices.Clip(t.fsck), disk)
}

func (d diskModes) logf(prefix, format string, args ...any) {
	fmt.Fprintf(d.out, prefix+": "+format+"\n", args...)
}

// mkfs formats the disk and flushes it: flushvm.run=mkfs.
func (d diskModes) mkfs() int {
	if err := d.sys.waitDisk(); err != nil {
		d.logf(prefix, "mkfs %s: %v", disk, err)
		return exitDiskSetup
	}
	mkfs, _ := d.tools()
	st, err := d.sys.run(mkfs)
	switch {
	case err != nil:
		d.logf(prefix, "mkfs %s: %v", disk, err)
	case st != 0:
		d.logf(prefix, "mkfs %s: %s exit status %d", disk, path.Base(mkfs[0]), st)
	}
	if err != nil || st != 0 {
		if st == 0 {
			st = exitDiskSetup
		}
		return st
	}
	if err := d.sys.syncDisk(); err != nil {
		d.logf(prefix, "mkfs %s: %v", disk, err)
		return exitDiskSetup
	}
	fmt.Fprintln(d.out, protocol.FormatMkfsOK(disk))
	return 0
}

// job reads and parses the job disk.
func (d diskModes) job() (protocol.Job, error) {
	data, err := d.sys.readJob()
	if err != nil {
		return protocol.Job{}, err
	}
	j, err := protocol.ParseJob(data)
	if err != nil {
		return protocol.Job{}, fmt.Errorf("%s: %w", jobDisk, err)
	}
	return j, nil
}

// crash mounts the disk and runs the job's workload, which acknowledges
// what it makes durable: flushvm.run=crash:W (W names the workload in the
// console lines). The host cuts the power at some point; if it does not,
// the workload's status is the VM's.
func (d diskModes) crash(w string) int {
	j, err := d.job()
	if err == nil && j.Workload == "" {
		err = fmt.Errorf("%s: no workload line", jobDisk)
	}
	if err != nil {
		d.logf(prefix, "flushvm.run=crash:%s: %v", w, err)
		return exitUnknownWorkload
	}
	if err := d.sys.mount(d.fsName()); err != nil {
		d.logf(prefix, "%v", err)
		return exitDiskSetup
	}
	d.logf(prefix, "mounted %s on %s", disk, mountPoint)
	st, err := d.sys.runJob(j.Workload, nil)
	if err != nil {
		d.logf(prefix, "%v", err)
	}
	return st
}

// check checks the disk after a power cut against the job's first state:
// flushvm.run=check:W. The status is checkDisk's.
func (d diskModes) check(w string) int {
	j, err := d.job()
	if err == nil && (j.Checker == "" || len(j.States) != 1) {
		err = fmt.Errorf("%s: want a checker line and one state", jobDisk)
	}
	if err != nil {
		d.logf(prefix, "flushvm.run=check:%s: %v", w, err)
		return exitUnknownWorkload
	}
	return d.checkDisk(w, j.Checker, j.Acks[:j.States[0]])
}

// checkDisk checks the crashed file system on the disk with workload w's
// checker command and the keys it must find intact: it mounts it
// (replaying the journal), runs the checker,
// unmounts, and runs e2fsck -fn, printing the check lines of
// protocol.ParseCheckLine. e2fsck runs even when the mount failed: a file
// system that does not mount is what fsck should explain. The status is
// 0 only if the checker passed and fsck found nothing, else
// exitCheckFailed.
func (d diskModes) checkDisk(w, checker string, acked []string) int {
	passed := true
	if err := d.sys.mount(d.fsName()); err != nil {
		fmt.Fprintln(d.out, protocol.FormatCheckMountFailed(err))
		passed = false
	} else {
		if acked == nil {
			acked = []string{} // a checker, with no key to find
		}
		st, err := d.sys.runJob(checker, acked)
		if err != nil {
			d.logf(protocol.CheckPrefix, "%s: %v", w, err)
		}
		fmt.Fprintln(d.out, protocol.FormatCheckStatus(w, st))
		if st != 0 {
			passed = false
		}
		if err := d.sys.unmount(); err != nil {
			// fsck below then sees a mounted file system and says so.
			d.logf(protocol.CheckPrefix, "umount failed: %v", err)
			passed = false
		}
	}
	_, fsck := d.tools()
	st, err := d.sys.run(fsck)
	if err != nil {
		d.logf(protocol.CheckPrefix, "%s: %v", path.Base(fsck[0]), err)
	}
	fmt.Fprintln(d.out, protocol.FormatFsckStatus(st))
	if !passed || st != 0 {
		return exitCheckFailed
	}
	return 0
}

// machine is the real system of the guest.
type machine struct{}

func (machine) waitDisk() error { return pid1.WaitForFiles([]string{disk}, diskWait) }

func (m machine) mount(fstype string) error {
	if err := m.waitDisk(); err != nil {
		return fmt.Errorf("mount %s on %s: %w", disk, mountPoint, err)
	}
	if err := os.MkdirAll(mountPoint, 0o755); err != nil {
		return fmt.Errorf("mount %s on %s: %w", disk, mountPoint, err)
	}
	if err := unix.Mount(disk, mountPoint, fstype, 0, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", disk, mountPoint, err)
	}
	return nil
}

func (machine) unmount() error {
	if err := unix.Unmount(mountPoint, 0); err != nil {
		return fmt.Errorf("umount %s: %w", mountPoint, err)
	}
	return nil
}

func (machine) run(argv []string) (int, error) { return command(argv[0], argv[1:]...) }

func (machine) loadFS(fs string) error {
	if _, err := pid1.LoadModules(protocol.ModuleSetList(fs)); err != nil {
		return fmt.Errorf("load modules: %w", err)
	}
	return nil
}

// ackedFile is where a checker finds its keys ($FLUSHVM_ACKED).
const ackedFile = "/run/flushvm-acked"

// jobPath is the commands' PATH: the user's --workload-dir first.
const jobPath = protocol.WorkloadGuestDir + ":" + protocol.WorkloadGuestDir + "/bin:/bin:/sbin:/usr/bin:/usr/sbin"

// runJob runs cmd with /bin/sh in mountPoint; a checker's keys are in
// ackedFile and on its standard input.
func (machine) runJob(cmd string, acked []string) (int, error) {
	c := exec.Command("/bin/sh", "-c", cmd)
	c.Dir = mountPoint
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	c.Env = append(os.Environ(), "HOME=/root", "TERM=linux", "PATH="+jobPath, protocol.EnvDir+"="+mountPoint)
	if acked != nil {
		f, err := writeAcked(acked)
		if err != nil {
			return 125, err
		}
		defer f.Close()
		c.Stdin = f
		c.Env = append(c.Env, protocol.EnvAcked+"="+ackedFile)
	}
	return wait(cmd, c.Run())
}

// writeAcked writes the keys to ackedFile and returns it open for
// reading from its start.
func writeAcked(keys []string) (*os.File, error) {
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('\n')
	}
	if err := os.MkdirAll(filepath.Dir(ackedFile), 0o755); err != nil {
		return nil, fmt.Errorf("acknowledged keys: %w", err)
	}
	if err := os.WriteFile(ackedFile, []byte(b.String()), 0o644); err != nil {
		return nil, fmt.Errorf("acknowledged keys: %w", err)
	}
	f, err := os.Open(ackedFile)
	if err != nil {
		return nil, fmt.Errorf("acknowledged keys: %w", err)
	}
	return f, nil
}

// syncDisk fsyncs the block device: the kernel writes the device's dirty
// pages and sends the disk a FLUSH, reporting a failure of either.
func (machine) syncDisk() error {
	f, err := os.Open(disk)
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", disk, err)
	}
	return nil
}

// diskMode runs a crash-test mode: name is the flushvm.run= value.
func diskMode(d diskModes, name string) (int, bool) {
	run := d.mode(name)
	if run == nil {
		return 0, false
	}
	if _, ok := fileSystems[d.fsName()]; !ok {
		d.logf(prefix, "flushvm.fs=%s: unknown file system (want one of %s)", d.fs, strings.Join(protocol.FileSystems, ", "))
		return exitUnknownWorkload, true
	}
	if err := d.sys.loadFS(d.fsName()); err != nil {
		d.logf(prefix, "flushvm.fs=%s: %v", d.fsName(), err)
		return exitDiskSetup, true
	}
	return run(), true
}

// mode returns the crash-test mode a flushvm.run= value names, nil for
// any other value.
func (d diskModes) mode(name string) func() int {
	workload := func(p string) (string, bool) { return strings.CutPrefix(name, p) }
	if name == "mkfs" {
		return d.mkfs
	}
	if w, ok := workload("crash:"); ok {
		return func() int { return d.crash(w) }
	}
	if w, ok := workload("check:"); ok {
		return func() int { return d.check(w) }
	}
	if w, ok := workload("checkstates:"); ok {
		return func() int { return d.checkStates(w) }
	}
	return nil
}
