package kernel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/flushvm/flushvm/internal/atomicfile"
)

// ErrNoPayload reports a bzImage whose compressed kernel cannot be found or
// unpacked.
var ErrNoPayload = errors.New("no usable compressed payload in bzImage")

// Vmlinux returns the ELF kernel inside the package's bzImage, unpacked
// once into the package directory. Booting it (flushvm loads ELF kernels)
// skips the bzImage's self-decompression, several seconds of a nested
// guest's boot.
func (k *Kernel) Vmlinux(ctx context.Context) (string, error) {
	out := filepath.Join(k.Dir, "boot", "vmlinux-"+k.Release)
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	bz, err := os.ReadFile(k.BzImage)
	if err != nil {
		return "", fmt.Errorf("vmlinux: %w", err)
	}
	elf, err := unpackBzImage(ctx, bz)
	if err != nil {
		return "", fmt.Errorf("vmlinux from %s: %w", k.BzImage, err)
	}
	// Atomic, so processes sharing the cache (Slurm tasks, parallel
	// harness runs) never boot a half-written kernel.
	if err := atomicfile.Write(out, elf); err != nil {
		return "", fmt.Errorf("vmlinux: %w", err)
	}
	return out, nil
}

// unpackBzImage returns the ELF image a bzImage carries. The boot protocol
// (2.08+) header gives the payload's offset and length from the start of
// the protected-mode code; the build appends the uncompressed size as a
// little-endian 32-bit word, which the decompressors do not expect.
func unpackBzImage(ctx context.Context, bz []byte) ([]byte, error) {
	const (
		setupSectsOff    = 0x1f1
		headerMagicOff   = 0x202
		payloadOffsetOff = 0x248
		payloadLengthOff = 0x24c
	)
	if len(bz) < payloadLengthOff+4 || string(bz[headerMagicOff:headerMagicOff+4]) != "HdrS" {
		return nil, fmt.Errorf("%w: not a bzImage (no HdrS header)", ErrNoPayload)
	}
	setup := int(bz[setupSectsOff])
	if setup == 0 {
		setup = 4
	}
	start := (setup + 1) * 512
	off := start + int(binary.LittleEndian.Uint32(bz[payloadOffsetOff:]))
	n := int(binary.LittleEndian.Uint32(bz[payloadLengthOff:]))
	if n < 8 || off < start || off+n > len(bz) {
		return nil, fmt.Errorf("%w: payload at %d+%d outside the %d-byte file", ErrNoPayload, off, n, len(bz))
	}
	payload := bz[off : off+n]
	size := int(binary.LittleEndian.Uint32(payload[n-4:]))
	var tool string
	switch {
	case bytes.HasPrefix(payload, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		tool = "xz"
	case bytes.HasPrefix(payload, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		tool = "zstd"
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		tool = "gzip"
	default:
		return nil, fmt.Errorf("%w: unknown compression (magic % x)", ErrNoPayload, payload[:4])
	}
	cmd := exec.CommandContext(ctx, tool, "-dc")
	cmd.Stdin = bytes.NewReader(payload[:n-4])
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	elf, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w: %s -dc: %v: %s", ErrNoPayload, tool, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if len(elf) != size || !bytes.HasPrefix(elf, []byte("\x7fELF")) {
		return nil, fmt.Errorf("%w: %s gave %d bytes (want an ELF of %d)", ErrNoPayload, tool, len(elf), size)
	}
	return elf, nil
}
