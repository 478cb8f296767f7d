package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flushvm/flushvm/protocol"
)

// QEMU boots what `flushvm run ARGS` would boot under plain QEMU TCG with
// QEMU's own virtio-blk, as a stand-in for flushvm: it validates guest
// images and init programs on a host whose KVM cannot run Linux, and gives
// a reference to compare flushvm against. It accepts --kernel, --initrd,
// --append, --mem, --cpus and --disk (path= and cache= are honoured), and
// returns the guest's exit status: QEMU's isa-debug-exit device sits at
// flushvm's port 0xf4 and exits with (v<<1)|1 on a write of v, so the
// status travels the same /dev/port path as under flushvm.
func QEMU(ctx context.Context, stdout io.Writer, args []string) (int, []byte, error) {
	var kern, initrd, appendLine string
	mem, smp := "512M", 1
	var drives []string
	for k := 0; k < len(args); k++ {
		name, val, has := strings.Cut(strings.TrimPrefix(args[k], "--"), "=")
		if !strings.HasPrefix(args[k], "--") || !valueFlags[name] {
			return 0, nil, fmt.Errorf("qemu stand-in: unsupported argument %q", args[k])
		}
		if !has {
			if k+1 >= len(args) {
				return 0, nil, fmt.Errorf("qemu stand-in: --%s needs a value", name)
			}
			k++
			val = args[k]
		}
		switch name {
		case "kernel":
			kern = val
		case "initrd":
			initrd = val
		case "append":
			appendLine = val
		case "mem":
			mem = val
		case "cpus":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 {
				return 0, nil, fmt.Errorf("qemu stand-in: --cpus %q: want a positive number", val)
			}
			smp = n
		case "disk":
			d, err := qemuDrive(val)
			if err != nil {
				return 0, nil, err
			}
			drives = append(drives, d)
		case "stats":
			return 0, nil, errors.New("qemu stand-in: --stats needs flushvm")
		}
	}
	if kern == "" {
		return 0, nil, errors.New("qemu stand-in: --kernel is required")
	}
	q := QEMUCommand{Mem: mem, SMP: smp, BIOS: firmware(), DebugExit: true, Kernel: kern, Initrd: initrd, Append: appendLine}
	for _, d := range drives {
		q.Extra = append(q.Extra, "-drive", d)
	}
	var buf bytes.Buffer
	cmd := exec.CommandContext(ctx, "nice", append([]string{"-n", "5"}, q.Args()...)...)
	w := newConsole(io.MultiWriter(stdout, &buf), time.Now())
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	w.flush()
	if ctx.Err() != nil {
		return 0, buf.Bytes(), fmt.Errorf("qemu stand-in: %w", ctx.Err())
	}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode()&1 == 1:
		return ee.ExitCode() >> 1, buf.Bytes(), nil
	case err != nil:
		return 0, buf.Bytes(), fmt.Errorf("qemu stand-in: %w: %s", err, w.tail())
	}
	// QEMU exited 0: the guest rebooted without using the port (isa-debug
	// exit statuses are always odd). Recover the status init printed.
	if n, ok := protocol.FindInitExit(buf.Bytes()); ok {
		return n, buf.Bytes(), nil
	}
	return 0, buf.Bytes(), nil
}

// qemuDrive turns a flushvm --disk SPEC into a QEMU -drive value. It
// parses the SPEC itself (rather than through blk) so the stand-in keeps
// working while the device packages change.
func qemuDrive(spec string) (string, error) {
	kvs, err := protocol.SplitDiskSpec(spec)
	if err != nil {
		return "", fmt.Errorf("qemu stand-in: %w", err)
	}
	var path string
	opts := ",if=virtio,format=raw,cache=writeback"
	for _, kv := range kvs {
		switch v := kv.Value; kv.Key {
		case "path":
			path = v
		case "cache":
			if !slices.Contains(protocol.CacheModes, v) {
				return "", fmt.Errorf("qemu stand-in: disk %q: unknown cache mode %q", spec, v)
			}
			opts = strings.Replace(opts, ",cache=writeback", ",cache="+v, 1)
		case "readonly":
			if on, _ := protocol.ParseOnOff(v); on {
				opts += ",readonly=on"
			}
		case "serial":
			opts += ",serial=" + qemuEscape(v)
		case "locking":
			opts += ",file.locking=" + v
		case "discard":
			opts += ",discard=" + v
		default:
			return "", fmt.Errorf("qemu stand-in: disk %q: key %q has no QEMU equivalent", spec, kv.Key)
		}
	}
	return "file=" + qemuEscape(path) + opts, nil
}
