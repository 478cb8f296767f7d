package main

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestWorkloadArgv(t *testing.T) {
	tests := []struct {
		w     string
		check bool
		extra []string
		want  []string
	}{
		{"fsyncstress", false, []string{"-writers", "2", "-records", "50"}, []string{"/bin/fsyncstress", "-dir", "/mnt", "-ack", "-writers", "2", "-records", "50"}},
		{"fsyncstress", true, []string{"-writers", "2", "-acked", "50:49"}, []string{"/bin/fsyncstress", "-check", "-dir", "/mnt", "-writers", "2", "-acked", "50:49"}},
		{"rename", false, nil, []string{"/bin/rename", "-dir", "/mnt"}},
		{"rename", true, []string{"-acked", "7"}, []string{"/bin/rename", "-check", "-dir", "/mnt", "-acked", "7"}},
		{"fio", false, nil, nil},
		{"", true, nil, nil},
	}
	for _, tt := range tests {
		got, err := workloadArgv(tt.w, tt.check, tt.extra)
		if (err != nil) != (tt.want == nil) || !slices.Equal(got, tt.want) {
			t.Errorf("workloadArgv(%q, %v, %q) = %q, %v; want %q", tt.w, tt.check, tt.extra, got, err, tt.want)
		}
	}
}

// fakeSystem records what a mode did and fails or exits as told.
type fakeSystem struct {
	waitErr, mountErr, unmountErr, syncErr error
	status                                 map[string]int   // by program
	runErr                                 map[string]error // by program
	calls                                  []string

	// The checkstates mode's disks: the manifest, the serial the disk
	// shows (set by waitSerial), and failures by state or by call.
	manifest    []byte
	manifestErr error
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

func (f *fakeSystem) mount() error {
	f.calls = append(f.calls, "mount")
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

func (f *fakeSystem) readManifest() ([]byte, error) {
	f.calls = append(f.calls, "manifest")
	return f.manifest, f.manifestErr
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
		checkFS = "/bin/fsyncstress -check -dir /mnt -acked 3:4"
	)
	tests := []struct {
		name   string
		mode   string
		args   []string
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
			name: "crash", mode: "crash:fsyncstress", args: []string{"-writers", "2"}, sys: fakeSystem{status: map[string]int{"/bin/fsyncstress": 0}}, status: 0,
			calls: []string{"mount", "/bin/fsyncstress -dir /mnt -ack -writers 2"},
			lines: []string{"flushvm-init: mounted /dev/vda on /mnt"},
		},
		{
			name: "crash: workload status is the VM's", mode: "crash:rename", sys: fakeSystem{status: map[string]int{"/bin/rename": 2}}, status: 2,
			calls: []string{"mount", "/bin/rename -dir /mnt"},
			lines: []string{"flushvm-init: mounted /dev/vda on /mnt"},
		},
		{
			name: "crash: mount fails", mode: "crash:rename", sys: fakeSystem{mountErr: fail}, status: exitDiskSetup,
			calls: []string{"mount"},
			lines: []string{"flushvm-init: boom"},
		},
		{
			name: "crash: unknown workload", mode: "crash:fio", status: exitUnknownWorkload,
			lines: []string{`flushvm-init: flushvm.run=crash:fio: unknown crash-test workload "fio" (want fsyncstress or rename)`},
		},
		{
			name: "check passes", mode: "check:fsyncstress", args: []string{"-acked", "3:4"}, status: 0,
			calls: []string{"mount", checkFS, "umount", fsck},
			lines: []string{"flushvm-check: fsyncstress status 0", "flushvm-check: fsck status 0"},
		},
		{
			name: "check: violation", mode: "check:fsyncstress", args: []string{"-acked", "3:4"}, sys: fakeSystem{status: map[string]int{"/bin/fsyncstress": 1}}, status: exitCheckFailed,
			calls: []string{"mount", checkFS, "umount", fsck},
			lines: []string{"flushvm-check: fsyncstress status 1", "flushvm-check: fsck status 0"},
		},
		{
			name: "check: fsck finds errors", mode: "check:rename", args: []string{"-acked", "9"}, sys: fakeSystem{status: map[string]int{"/sbin/e2fsck": 4}}, status: exitCheckFailed,
			calls: []string{"mount", "/bin/rename -check -dir /mnt -acked 9", "umount", fsck},
			lines: []string{"flushvm-check: rename status 0", "flushvm-check: fsck status 4"},
		},
		{
			name: "check: mount fails, fsck still runs", mode: "check:fsyncstress", args: []string{"-acked", "3:4"}, sys: fakeSystem{mountErr: fail}, status: exitCheckFailed,
			calls: []string{"mount", fsck},
			lines: []string{"flushvm-check: mount failed: boom", "flushvm-check: fsck status 0"},
		},
		{
			name: "check: umount fails", mode: "check:fsyncstress", args: []string{"-acked", "3:4"}, sys: fakeSystem{unmountErr: fail}, status: exitCheckFailed,
			calls: []string{"mount", checkFS, "umount", fsck},
			lines: []string{"flushvm-check: fsyncstress status 0", "flushvm-check: umount failed: boom", "flushvm-check: fsck status 0"},
		},
		{
			name: "check: unknown workload", mode: "check:nope", status: exitUnknownWorkload,
			lines: []string{`flushvm-init: flushvm.run=check:nope: unknown crash-test workload "nope" (want fsyncstress or rename)`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			sys := tt.sys
			st, ok := diskMode(diskModes{sys: &sys, out: &out}, tt.mode, tt.args)
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

func TestOtherModesAreNotDiskModes(t *testing.T) {
	for _, name := range []string{"", "info", "exit:3", "script", "shell", "fsyncstress", "mkfs:x", "crash", "checkstates", "check"} {
		sys := &fakeSystem{}
		if _, ok := diskMode(diskModes{sys: sys, out: &strings.Builder{}}, name, nil); ok || len(sys.calls) != 0 {
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
