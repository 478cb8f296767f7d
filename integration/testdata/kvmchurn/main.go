// Command kvmchurn is a test helper for the nested L1 guest
// (integration/harness_test.go, TestNestedL1Harness): for a while it creates and closes KVM VMs
// as fast as it can while two threads bounce a byte over a pair of pipes,
// so that both of L1's CPUs pass through the scheduler all the time. In a
// kernel where no other VM is open, each VM created and each VM closed
// flips KVM's preempt-notifier static key, that is, patches the code of
// __schedule while the other CPU runs it. It ends with one line:
//
//	KVMCHURN vms=N switches=M seconds=S
//
// With -alone, it takes every other CPU offline around each VM's creation
// and closing (as l1init does around the idle VM it holds), so that no
// other CPU runs while the key's code is patched.
//
// Usage: kvmchurn [-alone] DURATION (e.g. 60s)
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/kvm"
)

func main() {
	alone := flag.Bool("alone", false, "take the other CPUs offline around each VM's creation and closing")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: kvmchurn [-alone] DURATION")
		os.Exit(2)
	}
	d, err := time.ParseDuration(flag.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvmchurn: %v\n", err)
		os.Exit(2)
	}
	if err := run(d, *alone); err != nil {
		fmt.Printf("KVMCHURN failed: %v\n", err)
		os.Exit(1)
	}
}

func run(d time.Duration, alone bool) error {
	sys, err := kvm.Open()
	if err != nil {
		return err
	}
	defer sys.Close()
	var switches atomic.Int64
	if err := pingPong(&switches); err != nil {
		return err
	}
	start := time.Now()
	vms := 0
	for time.Since(start) < d {
		var vm *kvm.VM
		if err := maybeAlone(alone, func() (err error) { vm, err = sys.CreateVM(); return err }); err != nil {
			return fmt.Errorf("after %d VMs: %w", vms, err)
		}
		if err := maybeAlone(alone, vm.Close); err != nil {
			return fmt.Errorf("close VM %d: %w", vms, err)
		}
		vms++
		if vms%500 == 0 {
			fmt.Printf("kvmchurn: %d VMs, %d switches, %.0f s\n", vms, switches.Load(), time.Since(start).Seconds())
		}
	}
	fmt.Printf("KVMCHURN vms=%d switches=%d seconds=%.0f\n", vms, switches.Load(), time.Since(start).Seconds())
	return nil
}

// maybeAlone runs f, with every CPU but the boot CPU offline if alone.
func maybeAlone(alone bool, f func() error) error {
	if !alone {
		return f()
	}
	paths, _ := filepath.Glob("/sys/devices/system/cpu/cpu[0-9]*/online")
	for _, p := range paths {
		if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
			return fmt.Errorf("offline %s: %w", p, err)
		}
	}
	err := f()
	for _, p := range paths {
		if werr := os.WriteFile(p, []byte("1"), 0o644); werr != nil && err == nil {
			err = fmt.Errorf("online %s: %w", p, werr)
		}
	}
	return err
}

// pingPong starts two threads that pass one byte back and forth over two
// pipes for the rest of the process's life, counting the round trips in
// n: each blocking read puts its thread to sleep and wakes the other.
func pingPong(n *atomic.Int64) error {
	var a, b [2]int
	if err := unix.Pipe(a[:]); err != nil {
		return fmt.Errorf("pipe: %w", err)
	}
	if err := unix.Pipe(b[:]); err != nil {
		return fmt.Errorf("pipe: %w", err)
	}
	bounce := func(in, out int, first bool) {
		runtime.LockOSThread()
		buf := []byte{0}
		if first {
			unix.Write(out, buf)
		}
		for {
			if _, err := unix.Read(in, buf); err != nil {
				return
			}
			if _, err := unix.Write(out, buf); err != nil {
				return
			}
			n.Add(1)
		}
	}
	go bounce(a[0], b[1], true)
	go bounce(b[0], a[1], false)
	return nil
}
