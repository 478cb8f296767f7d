// Command kvmchurn is a test helper for the nested L1 guest
// (integration/l1churn_test.go): for a while it creates and closes KVM VMs
// as fast as it can while two threads bounce a byte over a pair of pipes,
// so that both of L1's CPUs pass through the scheduler all the time. In a
// kernel where no other VM is open, each VM created and each VM closed
// flips KVM's preempt-notifier static key, that is, patches the code of
// __schedule while the other CPU runs it. It ends with one line:
//
//	KVMCHURN vms=N switches=M seconds=S
//
// Usage: kvmchurn DURATION (e.g. 60s)
package main

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flushvm/flushvm/kvm"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kvmchurn DURATION")
		os.Exit(2)
	}
	d, err := time.ParseDuration(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvmchurn: %v\n", err)
		os.Exit(2)
	}
	if err := run(d); err != nil {
		fmt.Printf("KVMCHURN failed: %v\n", err)
		os.Exit(1)
	}
}

func run(d time.Duration) error {
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
		vm, err := sys.CreateVM()
		if err != nil {
			return fmt.Errorf("after %d VMs: %w", vms, err)
		}
		if err := vm.Close(); err != nil {
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
