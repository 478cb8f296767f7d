// Package pid1 holds what flushvm's guest init programs (the L2 /init and
// the nested L1 /init) do as process 1: mount the kernel file systems, load
// the image's modules in order, read the kernel command line, describe the
// machine, and end the VM.
package pid1

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/protocol"
)

// DebugExitPort is flushvm's debug-exit I/O port: a 1-byte write of v ends
// the VMM with exit status v.
const DebugExitPort = protocol.DebugExitPort

// ModuleList is where initramfs images list their modules in load order.
const ModuleList = protocol.ModuleList

// Logf prints one line on the console with the program's prefix.
func Logf(prefix, format string, args ...any) {
	fmt.Fprintf(os.Stdout, prefix+": "+format+"\n", args...)
}

// MountBasics mounts proc, sysfs and devtmpfs, tolerating ones that are
// already mounted, and sets a PATH for busybox applets.
func MountBasics() error {
	mounts := []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", m.dst, err)
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	os.Setenv("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
	return nil
}

// LoadModules loads every module listed in the file list, in order, with
// finit_module. Modules already loaded (or built in) are fine. It returns
// the names loaded.
func LoadModules(list string) ([]string, error) {
	b, err := os.ReadFile(list)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("module list: %w", err)
	}
	params := moduleParams(nil)
	if cl, err := os.ReadFile("/proc/cmdline"); err == nil {
		params = moduleParams(ParseCmdline(string(cl)))
	}
	var loaded []string
	for _, p := range strings.Fields(string(b)) {
		name := strings.TrimSuffix(p[strings.LastIndexByte(p, '/')+1:], ".ko")
		if err := loadModule(p, params[strings.ReplaceAll(name, "-", "_")]); err != nil {
			return loaded, err
		}
		loaded = append(loaded, name)
	}
	return loaded, nil
}

// moduleParams collects the kernel command line's MODULE.PARAM=VALUE words
// into each module's parameter string, as modprobe does for modules loaded
// after boot (the kernel applies them only to built-in code).
func moduleParams(cmdline map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range cmdline {
		mod, param, ok := strings.Cut(k, ".")
		if !ok || mod == "" || param == "" || strings.ContainsAny(mod, "/") {
			continue
		}
		mod = strings.ReplaceAll(mod, "-", "_")
		word := param
		if v != "" {
			word += "=" + v
		}
		out[mod] = strings.TrimSpace(out[mod] + " " + word)
	}
	return out
}

func loadModule(p, params string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), params, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", p, err)
	}
	return nil
}

// Cmdline returns the kernel command line's key=value words (a bare word
// maps to ""). Double quotes group a value containing spaces.
func Cmdline() (map[string]string, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return nil, fmt.Errorf("kernel command line: %w", err)
	}
	return ParseCmdline(string(b)), nil
}

// ParseCmdline splits a kernel command line as the kernel does: on
// spaces outside double quotes, then each word at its first '='.
func ParseCmdline(s string) map[string]string {
	out := map[string]string{}
	var word strings.Builder
	inQuote := false
	flush := func() {
		if word.Len() > 0 {
			k, v, _ := strings.Cut(word.String(), "=")
			out[k] = v
			word.Reset()
		}
	}
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
		case (r == ' ' || r == '\n' || r == '\t') && !inQuote:
			flush()
		default:
			word.WriteRune(r)
		}
	}
	flush()
	return out
}

// Machine is what an init program reports about the VM it runs in.
type Machine struct {
	// Kernel is the running kernel's release.
	Kernel string
	// CPUs is the number of online CPUs.
	CPUs int
	// MemoryMiB is the RAM the kernel manages.
	MemoryMiB uint64
	// Uptime is the time since the kernel started.
	Uptime time.Duration
}

// String formats the machine in one line.
func (m Machine) String() string {
	return fmt.Sprintf("kernel %s, %d CPUs, %d MiB memory, uptime %.2f s at /init", m.Kernel, m.CPUs, m.MemoryMiB, m.Uptime.Seconds())
}

// Describe reads the machine's kernel release, CPUs, memory and uptime.
func Describe() (Machine, error) {
	var m Machine
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return m, fmt.Errorf("uname: %w", err)
	}
	m.Kernel = unix.ByteSliceToString(uts.Release[:])
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return m, fmt.Errorf("sysinfo: %w", err)
	}
	m.MemoryMiB = uint64(si.Totalram) * uint64(si.Unit) >> 20
	cpus, err := onlineCPUs()
	if err != nil {
		return m, err
	}
	m.CPUs = cpus
	up, err := Uptime()
	if err != nil {
		return m, err
	}
	m.Uptime = up
	return m, nil
}

// Uptime reads /proc/uptime.
func Uptime() (time.Duration, error) {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, fmt.Errorf("uptime: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, errors.New("uptime: empty /proc/uptime")
	}
	s, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0, fmt.Errorf("uptime: %w", err)
	}
	return time.Duration(s * float64(time.Second)), nil
}

// onlineCPUs counts the CPUs in /sys/devices/system/cpu/online ("0-3,5").
func onlineCPUs() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return 0, fmt.Errorf("online CPUs: %w", err)
	}
	return CountCPUList(strings.TrimSpace(string(b)))
}

// CountCPUList counts the CPUs in a kernel CPU list such as "0-3,5".
func CountCPUList(s string) (int, error) {
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("cpu list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				return 0, fmt.Errorf("cpu list %q: %w", s, err)
			}
		}
		if b < a {
			return 0, fmt.Errorf("cpu list %q: bad range %q", s, part)
		}
		n += b - a + 1
	}
	return n, nil
}

// WaitForFiles waits until every path exists (device nodes appear
// asynchronously after their driver loads) or the timeout passes.
func WaitForFiles(paths []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, p := range paths {
		for {
			if _, err := os.Stat(p); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s did not appear within %v", p, timeout)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// DebugExit asks the VMM to end with status v by writing v to the
// debug-exit port through /dev/port. It returns only if the write failed
// or the VMM ignored it.
func DebugExit(v uint8) error {
	// The VMM stops at the port write; anything still queued in the
	// console's tty buffer would be lost, so wait until it is sent.
	Drain()
	f, err := os.OpenFile("/dev/port", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("debug exit: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{v}, DebugExitPort); err != nil {
		return fmt.Errorf("debug exit: %w", err)
	}
	// A VMM that implements the port stops the vCPU on the write; give a
	// slow (nested, loaded) host time before concluding it did not: the
	// reboot fallback would turn the status into 0.
	time.Sleep(3 * time.Second)
	return errors.New("debug exit: the VMM ignored port 0xf4")
}

// Drain waits until the console has transmitted what was written to it
// (tcdrain on stdout and stderr), for at most drainLimit: the VM ends right
// after, and a line still in the UART driver's buffer would be lost. tcdrain
// returns early when a signal interrupts it, so it is retried, and the
// output queue is then polled until it is empty.
func Drain() {
	deadline := time.Now().Add(drainLimit)
	for _, fd := range []int{1, 2} {
		for {
			err := unix.IoctlSetInt(fd, unix.TCSBRK, 1)
			if err != unix.EINTR || time.Now().After(deadline) {
				break
			}
		}
		for time.Now().Before(deadline) {
			n, err := unix.IoctlGetInt(fd, unix.TIOCOUTQ)
			if err != nil || n == 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// drainLimit bounds Drain on a console that never empties.
const drainLimit = 3 * time.Second

// Reboot syncs and reboots; flushvm (and QEMU with -no-reboot) treat a
// guest reboot as the end of the VM.
func Reboot() {
	Drain()
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

// PowerOff syncs and powers the machine off, rebooting if that fails.
func PowerOff() {
	Drain()
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

// ReadLines returns the non-empty lines of a file.
func ReadLines(p string) ([]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if s := strings.TrimSpace(sc.Text()); s != "" {
			out = append(out, s)
		}
	}
	return out, sc.Err()
}
