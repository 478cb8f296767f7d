// Package l1qemu finds the QEMU that emulates the nested harness's L1
// guest (QEMU TCG with -cpu max, whose emulated SVM runs L1's KVM).
//
// Which QEMU matters: L1's KVM runs flushvm's L2 guests on QEMU TCG's
// emulation of nested SVM, and docs/nested.md records the failures of
// Debian 12's QEMU 7.2 there (L2 guests triple-faulting or taking an
// interrupt with IF clear, L1 CPUs deadlocking). On Debian 12 the harness
// therefore runs L1 on the newer QEMU of bookworm-backports, fetched into
// the artifact cache without installing it, unless the system's QEMU is
// already as new (Debian 13 and later).
package l1qemu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/flushvm/flushvm/host/debpkg"
)

// MinMajor is the oldest QEMU major release the harness runs L1 on by
// default.
const MinMajor = 10

// Suite is the Debian suite that carries a QEMU of at least MinMajor for
// Debian 12; scripts/deps.sh adds it to apt's sources, and apt installs
// nothing from it unless asked (backports have pin priority 100).
const Suite = "bookworm-backports"

// Env overrides the choice: "system" runs L1 on the system's
// qemu-system-x86_64 whatever its version (the control for experiments),
// and a path runs it on that binary.
const Env = "FLUSHVM_L1_QEMU"

// Packages are the packages unpacked from Suite: the emulator and its
// firmware and option ROMs (qboot, linuxboot_dma.bin).
var Packages = []string{"qemu-system-x86", "qemu-system-data"}

// QEMU is the emulator L1 runs on.
type QEMU struct {
	// Exec is the argv prefix that runs it: the binary, and -L with its
	// data directory when it is not the system's.
	Exec []string
	// DataDir is its firmware directory ("" for the system's).
	DataDir string
	// Version is what `qemu-system-x86_64 --version` says, e.g. 10.0.2.
	Version string
	// Source says where it came from, for the harness's log.
	Source string
}

// Firmware returns the path of a firmware file of this QEMU, e.g.
// qboot.rom, or "" when it has none.
func (q *QEMU) Firmware(name string) string {
	dir := q.DataDir
	if dir == "" {
		dir = "/usr/share/qemu"
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// Find returns the QEMU for L1: $FLUSHVM_L1_QEMU if set, else the system's
// if it is at least MinMajor, else Suite's, fetched into cacheDir/l1qemu
// once per version. When none of these can be had, it returns the
// system's QEMU with Fallback saying why, so the harness still runs (and
// says that L1 runs on an emulator known to fail more often).
func Find(ctx context.Context, cacheDir string) (q *QEMU, fallback error) {
	if v := os.Getenv(Env); v != "" {
		if v == "system" {
			v = "qemu-system-x86_64"
		}
		return binary(ctx, v, "$"+Env)
	}
	sys, err := binary(ctx, "qemu-system-x86_64", "system")
	if err == nil && major(sys.Version) >= MinMajor {
		return sys, nil
	}
	if err != nil {
		return nil, err
	}
	bp, berr := fetch(ctx, cacheDir)
	if berr != nil {
		return sys, fmt.Errorf("no QEMU %d or later for L1 (system QEMU is %s): %w", MinMajor, sys.Version, berr)
	}
	return bp, nil
}

// binary describes a qemu-system-x86_64 binary (a name looked up in PATH,
// or a path).
func binary(ctx context.Context, bin, source string) (*QEMU, error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("L1 QEMU (%s): %w (Debian: apt-get install qemu-system-x86)", source, err)
	}
	v, err := version(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("L1 QEMU (%s): %w", source, err)
	}
	return &QEMU{Exec: []string{path}, Version: v, Source: source}, nil
}

var versionRE = regexp.MustCompile(`QEMU emulator version (\d+\.\d+(?:\.\d+)?)`)

func version(ctx context.Context, path string, extra ...string) (string, error) {
	out, err := debpkg.Output(ctx, path, append(extra, "--version")...)
	if err != nil {
		return "", err
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s --version: no version in %q", path, debpkg.LastLine(out))
	}
	return string(m[1]), nil
}

// major is the major release of a version such as 10.0.2 (0 if unknown).
func major(v string) int {
	n, _ := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
	return n
}
