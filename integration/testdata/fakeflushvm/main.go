// Command fakeflushvm stands in for flushvm to test the nested harness's
// path mapping without a VMM: `fakeflushvm run --kernel K --disk
// path=P[,...] --stats S` prints the kernel's size and SHA-256, writes a
// 4 KiB pattern at offset 4096 of each disk with O_DIRECT and fdatasync,
// writes a --stats document naming each disk, and exits 0.
package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "run" {
		fmt.Fprintln(os.Stderr, "fakeflushvm: want run")
		os.Exit(2)
	}
	var disks []map[string]any
	var stats string
	for _, a := range os.Args[2:] {
		k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		switch k {
		case "kernel":
			b, err := os.ReadFile(v)
			if err != nil {
				fmt.Fprintf(os.Stderr, "fakeflushvm: kernel: %v\n", err)
				os.Exit(2)
			}
			fmt.Printf("kernel %s %d bytes sha256 %x\n", v, len(b), sha256.Sum256(b))
		case "disk":
			path := strings.TrimPrefix(strings.Split(v, ",")[0], "path=")
			if err := writePattern(path); err != nil {
				fmt.Fprintf(os.Stderr, "fakeflushvm: disk: %v\n", err)
				os.Exit(2)
			}
			fmt.Printf("disk %s pattern written\n", path)
			disks = append(disks, map[string]any{"path": path, "host_syncs": 1})
		case "stats":
			stats = v
		}
	}
	if stats != "" {
		b, _ := json.Marshal(map[string]any{"disks": disks})
		if err := os.WriteFile(stats, b, 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "fakeflushvm: stats: %v\n", err)
			os.Exit(2)
		}
	}
}

// Pattern is the 4 KiB the fake writes: "flushvm" repeated.
func pattern() []byte {
	return []byte(strings.Repeat("flushvm!", 512))
}

func writePattern(path string) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s O_DIRECT: %w", path, err)
	}
	defer unix.Close(fd)
	// O_DIRECT needs an aligned buffer: take a 4 KiB-aligned window of a
	// larger mmap'ed (page-aligned) region.
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	copy(buf, pattern())
	if _, err := unix.Pwrite(fd, buf, 4096); err != nil {
		return fmt.Errorf("pwrite %s: %w", path, err)
	}
	return unix.Fdatasync(fd)
}
