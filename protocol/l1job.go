package protocol

// The L1 job: the contract between the nested harness on the host and the
// L1 guest's init, the job file the host writes into the shared job
// directory, and the files L1 writes back.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// L1JobTag is the 9p mount tag of the shared job directory; L1 mounts it
// at L1JobMount.
const (
	L1JobTag   = "flushvmjob"
	L1JobMount = "/job"
	// L1JobFile is the job description inside the job directory.
	L1JobFile = "job.json"
	// L1JobOutDir is where L1 writes results, inside the job directory.
	L1JobOutDir = "out"
)

// L1Job is what the L1 guest runs, in order.
type L1Job struct {
	// Runs are the commands to run one after the other.
	Runs []L1Run `json:"runs"`
	// WaitFor lists device nodes (the job's disks) that must exist before
	// the first run.
	WaitFor []string `json:"wait_for,omitempty"`
	// Scratch, when set, is a disk L1 mounts before the first run: a file
	// system with O_DIRECT (L1's own tmpfs has none) for the images of
	// campaigns run inside L1.
	Scratch *L1Scratch `json:"scratch,omitempty"`
}

// L1Scratch is a host-formatted ext4 disk that L1 mounts read-write for the
// whole job. It is mounted with discard, so files deleted in L1 give their
// space back to the sparse host file.
type L1Scratch struct {
	// Device is the L1 block device (e.g. /dev/vdb); it is also waited
	// for like WaitFor.
	Device string `json:"device"`
	// Mount is the directory L1 mounts it on (created if missing).
	Mount string `json:"mount"`
}

// L1Run is one command in L1.
type L1Run struct {
	// Argv is the command and its arguments, with L1 paths.
	Argv []string `json:"argv"`
	// TimeoutSec bounds the command; 0 means no bound inside L1 (the host
	// still bounds the whole QEMU run).
	TimeoutSec int `json:"timeout_sec,omitempty"`
	// Env are NAME=VALUE settings added to L1 init's environment for
	// this command (e.g. TMPDIR on the scratch disk).
	Env []string `json:"env,omitempty"`
}

// L1StatusFile is where L1 records run i's exit status (a decimal number, or
// "error: ..." when the command could not be started).
func L1StatusFile(dir string, i int) string {
	return filepath.Join(dir, L1JobOutDir, "run-"+strconv.Itoa(i)+".status")
}

// L1HeartbeatFile is the file L1's init rewrites every L1HeartbeatInterval
// from the moment it has mounted the job directory until it powers off: a
// snapshot of L1 (uptime, load, and the state of every thread of its
// runs). The host takes a file that stops changing for an L1 that stopped
// running its own processes, and the last snapshot shows where it stood.
func L1HeartbeatFile(dir string) string {
	return filepath.Join(dir, L1JobOutDir, "heartbeat")
}

// L1HeartbeatInterval is how often L1 rewrites its heartbeat file.
const L1HeartbeatInterval = 10 * time.Second

// L1LogFile is where L1 records run i's combined output.
func L1LogFile(dir string, i int) string {
	return filepath.Join(dir, L1JobOutDir, "run-"+strconv.Itoa(i)+".log")
}

// ReadL1Job reads the job file in dir.
func ReadL1Job(dir string) (*L1Job, error) {
	b, err := os.ReadFile(filepath.Join(dir, L1JobFile))
	if err != nil {
		return nil, fmt.Errorf("job: %w", err)
	}
	var j L1Job
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("job %s: %w", filepath.Join(dir, L1JobFile), err)
	}
	return &j, nil
}

// WriteL1Job writes the job file into dir and creates the out directory.
func WriteL1Job(dir string, j *L1Job) error {
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("job: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, L1JobOutDir), 0o777); err != nil {
		return fmt.Errorf("job: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, L1JobFile), b, 0o644); err != nil {
		return fmt.Errorf("job: %w", err)
	}
	return nil
}

// L1HoldVMParam is the L1 kernel command-line word by which the harness
// turns off (L1HoldVMParam=0) the idle KVM VM that L1's init keeps open for
// the whole session. With that VM open, KVM's static keys that count VMs
// and vCPUs (the scheduler's preempt-notifier key, the local APIC's
// sw-disabled key) never return to zero, so starting and ending flushvm's
// VMs never patches kernel code while the other CPU runs it: QEMU TCG has
// been seen to run such code stale and loop on a breakpoint for ever.
const L1HoldVMParam = "flushvm.l1_hold_vm"

// L1SpareCPU0Param is the L1 kernel command-line word by which the harness
// lets runs share L1's CPU 0 (L1SpareCPU0Param=0), for the control
// experiment. By default L1's init starts every run on the other CPUs, so
// no KVM vCPU enters a guest on CPU 0: QEMU TCG rewrites CPU 0's flags
// from the other CPUs' threads without a lock, and a VMRUN or #VMEXIT on
// CPU 0 at that instant loses its own change (docs/nested.md, "The
// first-CPU race").
const L1SpareCPU0Param = "flushvm.l1_spare_cpu0"

// L1VMRunReturnFile is where L1's init records the address at which L1's
// own KVM (kvm_amd) resumes after its VMRUN instruction, as
// L1VMRunReturn.String formats it. An L2 vCPU whose RIP is that address holds
// L1's host state instead of its own: proof that the emulated CPU below L1
// (QEMU TCG, L0) wrote the wrong state into the L2 guest's VMCB at a
// #VMEXIT, since nothing flushvm does through /dev/kvm can put L1's
// registers into its guest.
func L1VMRunReturnFile(dir string) string {
	return filepath.Join(dir, L1JobOutDir, "vmrun-return")
}

// L1VMRunReturn is where L1's KVM resumes after VMRUN: Addr, the
// address in L1's kernel, and Symbol, the same place as symbol+offset.
type L1VMRunReturn struct {
	Addr   uint64
	Symbol string
}

// String formats r as the one line L1VMRunReturnFile holds (without the
// newline): "0xffffffffc052c20c __svm_vcpu_run+0x9c".
func (r L1VMRunReturn) String() string {
	return fmt.Sprintf("%#x %s", r.Addr, r.Symbol)
}

// Holds reports whether rep, a crash or hang report of a guest nested in
// L1, shows L1's own state instead of the guest's: its RIP is r.Addr. If
// so, it also returns the cause in words, for logs. A zero r (L1 could not
// tell) holds nothing.
func (r L1VMRunReturn) Holds(rep CrashReport) (string, bool) {
	rip, ok := rep.Register("RIP")
	if !ok || r.Addr == 0 || rip != r.Addr {
		return "", false
	}
	return fmt.Sprintf("the L2 vCPU holds L1's own registers (RIP %#x is %s in L1's kvm_amd, "+
		"where L1 resumes after VMRUN): L0 wrote L1's state into the L2 VMCB", rip, r.Symbol), true
}

// L1VMRunReturnEnv is the environment variable by which L1's init passes
// the L1VMRunReturn line (String) to every command it runs, so that
// crash-test campaigns run in L1 can name the boots that fail so.
const L1VMRunReturnEnv = "FLUSHVM_L1_VMRUN_RETURN"

// L1VMRunReturnFromEnv reads L1VMRunReturnEnv; zero when unset or bad.
func L1VMRunReturnFromEnv() L1VMRunReturn {
	r, _ := ParseL1VMRunReturn(os.Getenv(L1VMRunReturnEnv))
	return r
}

// ParseL1VMRunReturn parses what String formats.
func ParseL1VMRunReturn(s string) (L1VMRunReturn, error) {
	a, sym, ok := strings.Cut(strings.TrimSpace(s), " ")
	if !ok || sym == "" {
		return L1VMRunReturn{}, fmt.Errorf("vmrun return %q: want ADDRESS SYMBOL+OFFSET", s)
	}
	addr, err := strconv.ParseUint(strings.TrimPrefix(a, "0x"), 16, 64)
	if err != nil || !strings.HasPrefix(a, "0x") || addr == 0 {
		return L1VMRunReturn{}, fmt.Errorf("vmrun return %q: bad address", s)
	}
	return L1VMRunReturn{Addr: addr, Symbol: sym}, nil
}
