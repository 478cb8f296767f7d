// Command init is /init of flushvm's Linux test guests (the "L2" guest when
// run nested). It runs as process 1: it mounts proc, sys and devtmpfs,
// loads the image's modules in dependency order, prints one line describing
// the machine, runs the workload the kernel command line names, and ends
// the VM with the workload's exit status through flushvm's debug-exit port
// (I/O port 0xf4), falling back to reboot(2).
//
// Kernel command line convention:
//
//	flushvm.run=info          print the machine line and exit 0 (default)
//	flushvm.run=exit:N        print the machine line and exit with status N
//	flushvm.run=script        run /run.sh with busybox sh (appended per test)
//	flushvm.run=shell         interactive busybox sh on the console
//	flushvm.run=fsyncstress   run /bin/fsyncstress
//	flushvm.run=mkfs          format /dev/vda (ext4: mke2fs -t ext4 -q -F; xfs:
//	                          mkfs.xfs -f -q; btrfs: mkfs.btrfs -f -q), flush it
//	flushvm.run=crash:W       mount /dev/vda on /mnt, run the workload command of the
//	                          job disk /dev/vdb, which acknowledges each durable step
//	                          on the console (W names it in the console lines)
//	flushvm.run=check:W       after a power cut: mount /dev/vda (replaying the
//	                          journal), run the job's checker with the keys of its
//	                          one state, umount, check the file system read-only
//	                          (e2fsck -fn, xfs_repair -n, btrfs check --readonly)
//	flushvm.fs=NAME           the crash-test modes' file system: ext4 (default),
//	                          xfs or btrfs
//	flushvm.run=checkstates:W check a batch of crash states of /dev/vda, one after
//	                          the other, as check:W does, one per state of the job
//	                          (protocol/crashcheck.go)
//	flushvm.args=A,B,C        arguments for script, shell and fsyncstress, comma
//	                          separated (values may contain '=' and ':')
//
// The crash-test modes (mkfs, crash:W, check:W, checkstates:W) print, on
// the console:
//
//	flushvm-init: mkfs /dev/vda: ok                  (or the error instead of ok)
//	flushvm-init: mounted /dev/vda on /mnt           (crash:W, before the workload)
//	flushvm-check: mount failed: ERR                 (check:W; the checker is skipped)
//	flushvm-check: W status N                        (check:W, after W's CHECK line)
//	flushvm-check: fsck status N                     (check:W, after e2fsck's output)
//	flushvm-crashcheck: next I                       (checkstates:W, asks for state I)
//	flushvm-check: state I begin                     (checkstates:W, then check:W's lines)
//	flushvm-check: state I end status N              (checkstates:W, N as check:W's status)
//	flushvm-init: checkstates: ERR                   (checkstates:W could not go on)
//
// The job disk (protocol.Job, protocol/workload.go) holds the workload and
// checker commands, the acknowledged keys and the states. Commands run with
// /bin/sh -c in /mnt, with $FLUSHVM_DIR=/mnt and /workload (a user's
// --workload-dir) first on PATH; a checker finds its keys in the file
// $FLUSHVM_ACKED and on its standard input. Between two states
// checkstates:W waits for the disk's serial to name the state (10 s at
// most) and drops the guest's cached blocks of /dev/vda.
//
// Exit status: the workload's; 120-123 init could not set the machine up;
// 124 an unknown flushvm.run= value; 125 the workload could not be started;
// 124 also for a crash-test mode whose job disk is missing or malformed;
// 126 mkfs or the crash mode's mount failed (mkfs: mke2fs's own status when
// it failed); check:W: 0 when the checker passed and e2fsck found nothing,
// else 1; checkstates:W: 0 when every state of the batch was checked,
// whatever the verdicts in the end lines, 1 when the batch could not run
// (no readable manifest, a state that did not appear in time, a failed
// BLKFLSBUF).
//
// Before ending the VM it prints "flushvm-init: exit status N", so a
// runner without the debug-exit port (plain QEMU) can still recover N.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/guest/internal/pid1"
	"github.com/flushvm/flushvm/protocol"
)

const prefix = protocol.InitPrefix

func main() {
	status := run()
	end(status)
}

func run() int {
	if err := pid1.MountBasics(); err != nil {
		pid1.Logf(prefix, "%v", err)
		return 120
	}
	if _, err := pid1.LoadModules(pid1.ModuleList); err != nil {
		pid1.Logf(prefix, "%v", err)
		return 121
	}
	m, err := pid1.Describe()
	if err != nil {
		pid1.Logf(prefix, "%v", err)
		return 122
	}
	pid1.Logf(prefix, "%v", m)
	cmdline, err := pid1.Cmdline()
	if err != nil {
		pid1.Logf(prefix, "%v", err)
		return 123
	}
	if status, ok := diskMode(diskModes{sys: machine{}, out: os.Stdout, fs: cmdline["flushvm.fs"]}, cmdline["flushvm.run"]); ok {
		return status
	}
	var args []string
	if a := cmdline["flushvm.args"]; a != "" {
		args = strings.Split(a, ",")
	}
	status, err := workload(cmdline["flushvm.run"], args)
	if err != nil {
		pid1.Logf(prefix, "%v", err)
	}
	return status
}

// exitUnknownWorkload is the status for a flushvm.run= value init does
// not know.
const exitUnknownWorkload = 124

// workload runs the named workload and returns its exit status.
func workload(name string, args []string) (int, error) {
	switch {
	case name == "" || name == "info":
		return 0, nil
	case strings.HasPrefix(name, "exit:"):
		n, err := strconv.Atoi(strings.TrimPrefix(name, "exit:"))
		if err != nil || n < 0 || n > 255 {
			return exitUnknownWorkload, fmt.Errorf("flushvm.run=%s: want exit:N with N in 0..255", name)
		}
		return n, nil
	case name == "script":
		return command("/bin/sh", append([]string{"/run.sh"}, args...)...)
	case name == "shell":
		return command("/bin/sh", args...)
	case name == "fsyncstress":
		return command("/bin/fsyncstress", args...)
	}
	return exitUnknownWorkload, fmt.Errorf("flushvm.run=%s: unknown workload (want info, exit:N, script, shell, fsyncstress, mkfs, crash:W, check:W or checkstates:W with W fsyncstress or rename)", name)
}

// command runs a program on the console and returns its exit status.
func command(name string, args ...string) (int, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "HOME=/root", "TERM=linux")
	return wait(name, cmd.Run())
}

// wait turns what running name returned into its exit status.
func wait(name string, err error) (int, error) {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(unix.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), fmt.Errorf("%s: %v", name, ws.Signal())
		}
		return ee.ExitCode(), nil
	default:
		return 125, fmt.Errorf("run %s: %w", name, err)
	}
}

// end ends the VM with status; init must never return.
func end(status int) {
	fmt.Println(protocol.FormatInitExit(status))
	if err := pid1.DebugExit(uint8(status)); err != nil {
		pid1.Logf(prefix, "%v; rebooting instead", err)
	}
	pid1.Reboot()
	select {}
}
