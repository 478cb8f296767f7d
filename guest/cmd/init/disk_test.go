package main

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/flushvm/flushvm/protocol"
)

// fakeSystem records what a mode did and fails or exits as told.
type fakeSystem struct {
	waitErr, mountErr, unmountErr, syncErr error
	status                                 map[string]int   // by program
	runErr                                 map[string]error // by program
	calls                                  []string

	// The crash-test modes' disks: the job, the serial the disk shows
	// (set by waitSerial), and failures by state or by call.
	job         []byte
	jobErr      error
	serial      string
	serialErr   map[string]error // by the serial waited for
	stateMount  map[string]error // mount's error while the disk shows a serial
	stateStatus map[string]int   // the checker's status while the disk shows a serial
	flushErr    map[int]error    // by flushBuffers call, from 0
	flushes     int
}

func (f *fakeSystem) waitDisk() error { f.calls = append(f.calls, "wait"); return f.waitErr }
func (f *fakeSystem) unmount() error  { f.calls = append(f.calls, "umount"); return f.unmountErr }
func (f *fakeSystem) syncDisk() error { f.calls = append(f.calls, "sync"); return f.syncErr }

func (f *fakeSystem) mount(fstype string) error {
	call := "mount"
	if fstype != protocol.FSExt4 {
		call += " " + fstype
	}
	f.calls = append(f.calls, call)
	if err := f.stateMount[f.serial]; err != nil {
		return err
	}
	return f.mountErr
}

func (f *fakeSystem) run(argv []string) (int, error) {
	f.calls = append(f.calls, strings.Join(argv, " "))
	if st, ok := f.stateStatus[f.serial]; ok && argv[0] != "/sbin/e2fsck" {
		return st, nil
	}
	return f.status[argv[0]], f.runErr[argv[0]]
}

func (f *fakeSystem) runJob(cmd string, acked []string) (int, error) {
	call := "job " + cmd
	if acked != nil {
		call += " acked=" + strings.Join(acked, "|")
	}
	f.calls = append(f.calls, call)
	if st, ok := f.stateStatus[f.serial]; ok {
		return st, nil
	}
	return f.status[cmd], f.runErr[cmd]
}

func (f *fakeSystem) loadFS(fs string) error {
	if fs != protocol.FSExt4 {
		f.calls = append(f.calls, "load "+fs)
	}
	return nil
}

func (f *fakeSystem) readJob() ([]byte, error) {
	f.calls = append(f.calls, "job")
	return f.job, f.jobErr
}

// testJob is a job disk's content, or fails t.
func testJob(t *testing.T, j protocol.Job) []byte {
	t.Helper()
	b, err := protocol.FormatJob(j)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fakeSystem) waitSerial(want string) error {
	f.calls = append(f.calls, "serial "+want)
	if err := f.serialErr[want]; err != nil {
		return err
	}
	f.serial = want
	return nil
}

func (f *fakeSystem) flushBuffers() error {
	f.calls = append(f.calls, "flush")
	f.flushes++
	return f.flushErr[f.flushes-1]
}

func TestDiskModes(t *testing.T) {
	fail := errors.New("boom")
	const (
		fsck    = "/sbin/e2fsck -fn /dev/vda"
		mkfs    = "/sbin/mke2fs -t ext4 -q -F /dev/vda"
		work    = "/bin/fsyncstress -ack -writers 2"
		checker = "/bin/fsyncstress -check -writers 2"
	)
	job := testJob(t, protocol.Job{Workload: work, Checker: checker, Acks: []string{"fsyncstress 0 0", "x", "y"}, States: []int{2}})
	checkFS := "job " + checker + " acked=fsyncstress 0 0|x"
	tests := []struct {
		name   string
		mode   string
		sys    fakeSystem
		status int
		calls  []string
		lines  []string
	}{
		{
			name: "mkfs", mode: "mkfs", status: 0,
			calls: []string{"wait", mkfs, "sync"},
			lines: []string{"flushvm-init: mkfs /dev/vda: ok"},
		},
		{
			name: "mkfs: no disk", mode: "mkfs", sys: fakeSystem{waitErr: fail}, status: exitDiskSetup,
			calls: []string{"wait"},
			lines: []string{"flushvm-init: mkfs /dev/vda: boom"},
		},
		{
			name: "mkfs: mke2fs fails", mode: "mkfs", sys: fakeSystem{status: map[string]int{"/sbin/mke2fs": 1}}, status: 1,
			calls: []string{"wait", mkfs},
			lines: []string{"flushvm-init: mkfs /dev/vda: mke2fs exit status 1"},
		},
		{
			name: "mkfs: mke2fs missing", mode: "mkfs", sys: fakeSystem{status: map[string]int{"/sbin/mke2fs": 125}, runErr: map[string]error{"/sbin/mke2fs": fail}}, status: 125,
			calls: []string{"wait", mkfs},
			lines: []string{"flushvm-init: mkfs /dev/vda: boom"},
		},
		{
			name: "mkfs: flush fails", mode: "mkfs", sys: fakeSystem{syncErr: fail}, status: exitDiskSetup,
			calls: []string{"wait", mkfs, "sync"},
			lines: []string{"flushvm-init: mkfs /dev/vda: boom"},
		},
		{
			name: "crash", mode: "crash:fsyncstress", sys: fakeSystem{job: job}, status: 0,
			calls: []string{"job", "mount", "job " + work},
			lines: []string{"flushvm-init: mounted /dev/vda on /mnt"},
		},
		{
			name: "crash: workload status is the VM's", mode: "crash:mine", sys: fakeSystem{job: job, status: map[string]int{work: 2}}, status: 2,
			calls: []string{"job", "mount", "job " + work},
			lines: []string{"flushvm-init: mounted /dev/vda on /mnt"},
		},
		{
			name: "crash: mount fails", mode: "crash:rename", sys: fakeSystem{job: job, mountErr: fail}, status: exitDiskSetup,
			calls: []string{"job", "mount"},
			lines: []string{"flushvm-init: boom"},
		},
		{
			name: "crash: no job disk", mode: "crash:fio", sys: fakeSystem{jobErr: fail}, status: exitUnknownWorkload,
			calls: []string{"job"},
			lines: []string{`flushvm-init: flushvm.run=crash:fio: boom`},
		},
		{
			name: "crash: no workload line", mode: "crash:fio", sys: fakeSystem{job: []byte("checker c\n")}, status: exitUnknownWorkload,
			calls: []string{"job"},
			lines: []string{`flushvm-init: flushvm.run=crash:fio: /dev/vdb: no workload line`},
		},
		{
			name: "check passes", mode: "check:fsyncstress", sys: fakeSystem{job: job}, status: 0,
			calls: []string{"job", "mount", checkFS, "umount", fsck},
			lines: []string{"flushvm-check: fsyncstress status 0", "flushvm-check: fsck status 0"},
		},
		{
			name: "check: violation", mode: "check:fsyncstress", sys: fakeSystem{job: job, status: map[string]int{checker: 1}}, status: exitCheckFailed,
			calls: []string{"job", "mount", checkFS, "umount", fsck},
			lines: []string{"flushvm-check: fsyncstress status 1", "flushvm-check: fsck status 0"},
		},
		{
			name: "check: fsck finds errors", mode: "check:rename", sys: fakeSystem{job: job, status: map[string]int{"/sbin/e2fsck": 4}}, status: exitCheckFailed,
			calls: []string{"job", "mount", checkFS, "umount", fsck},
			lines: []string{"flushvm-check: rename status 0", "flushvm-check: fsck status 4"},
		},
		{
			name: "check: mount fails, fsck still runs", mode: "check:fsyncstress", sys: fakeSystem{job: job, mountErr: fail}, status: exitCheckFailed,
			calls: []string{"job", "mount", fsck},
			lines: []string{"flushvm-check: mount failed: boom", "flushvm-check: fsck status 0"},
		},
		{
			name: "check: umount fails", mode: "check:fsyncstress", sys: fakeSystem{job: job, unmountErr: fail}, status: exitCheckFailed,
			calls: []string{"job", "mount", checkFS, "umount", fsck},
			lines: []string{"flushvm-check: fsyncstress status 0", "flushvm-check: umount failed: boom", "flushvm-check: fsck status 0"},
		},
		{
			name: "check: a job without its one state", mode: "check:nope", sys: fakeSystem{job: testJob(t, protocol.Job{Workload: work, Checker: checker})}, status: exitUnknownWorkload,
			calls: []string{"job"},
			lines: []string{`flushvm-init: flushvm.run=check:nope: /dev/vdb: want a checker line and one state`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			sys := tt.sys
			st, ok := diskMode(diskModes{sys: &sys, out: &out}, tt.mode)
			if !ok {
				t.Fatalf("%s is not a disk mode", tt.mode)
			}
			lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if st != tt.status || !slices.Equal(sys.calls, tt.calls) || !slices.Equal(lines, tt.lines) {
				t.Errorf("status %d, calls %q, output %q\nwant  %d, %q, %q", st, sys.calls, lines, tt.status, tt.calls, tt.lines)
			}
		})
	}
}

func TestFileSystems(t *testing.T) {
	job := testJob(t, protocol.Job{Workload: "w", Checker: "c", States: []int{0}})
	tests := []struct {
		fs, mode string
		status   int
		calls    []string
		lines    []string
	}{
		{"xfs", "mkfs", 0, []string{"load xfs", "wait", "/sbin/mkfs.xfs -f -q /dev/vda", "sync"}, []string{"flushvm-init: mkfs /dev/vda: ok"}},
		{"btrfs", "mkfs", 0, []string{"load btrfs", "wait", "/sbin/mkfs.btrfs -f -q /dev/vda", "sync"}, []string{"flushvm-init: mkfs /dev/vda: ok"}},
		{"xfs", "check:w", 0, []string{"load xfs", "job", "mount xfs", "job c acked=", "umount", "/sbin/xfs_repair -n /dev/vda"},
			[]string{"flushvm-check: w status 0", "flushvm-check: fsck status 0"}},
		{"btrfs", "crash:w", 0, []string{"load btrfs", "job", "mount btrfs", "job w"}, []string{"flushvm-init: mounted /dev/vda on /mnt"}},
		{"zfs", "mkfs", exitUnknownWorkload, nil, []string{"flushvm-init: flushvm.fs=zfs: unknown file system (want one of ext4, xfs, btrfs)"}},
	}
	for _, tt := range tests {
		var out strings.Builder
		sys := &fakeSystem{job: job}
		st, ok := diskMode(diskModes{sys: sys, out: &out, fs: tt.fs}, tt.mode)
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if !ok || st != tt.status || !slices.Equal(sys.calls, tt.calls) || !slices.Equal(lines, tt.lines) {
			t.Errorf("%s %s: status %d, calls %q, output %q\nwant %d, %q, %q", tt.fs, tt.mode, st, sys.calls, lines, tt.status, tt.calls, tt.lines)
		}
	}
	// Other modes do not care about the file system.
	if _, ok := diskMode(diskModes{sys: &fakeSystem{}, out: &strings.Builder{}, fs: "zfs"}, "info"); ok {
		t.Error("info taken as a disk mode with an unknown file system")
	}
}

func TestOtherModesAreNotDiskModes(t *testing.T) {
	for _, name := range []string{"", "info", "exit:3", "script", "shell", "fsyncstress", "mkfs:x", "crash", "checkstates", "check"} {
		sys := &fakeSystem{}
		if _, ok := diskMode(diskModes{sys: sys, out: &strings.Builder{}}, name); ok || len(sys.calls) != 0 {
			t.Errorf("%q taken as a disk mode (calls %q)", name, sys.calls)
		}
	}
}

func TestUnknownWorkload(t *testing.T) {
	st, err := workload("nope", nil)
	if st != exitUnknownWorkload || err == nil || !strings.Contains(err.Error(), "mkfs, crash:W, check:W or checkstates:W") {
		t.Errorf("workload(nope) = %d, %v", st, err)
	}
}
