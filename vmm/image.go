package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/flushvm/flushvm/virtio/guestmem"
)

// Image is a kernel or initrd. The loader reads it straight into guest
// memory (pread into the guest RAM mapping for a file), so a boot file
// never passes through the VMM's heap: a 40 MiB initramfs costs guest RAM
// and the host's page cache, not VMM memory.
type Image interface {
	io.ReaderAt
	// Size is the image's length in bytes.
	Size() int64
}

// BytesImage is an Image of b (generated kernels, tests).
func BytesImage(b []byte) Image { return bytes.NewReader(b) }

// headerSize is how much of a kernel image the loader reads to recognise
// it: the bzImage setup header ends before 0x300; an ELF header is 64 bytes.
const headerSize = 4096

// readHeader returns the first headerSize bytes of img (fewer if it is
// shorter).
func readHeader(img Image) ([]byte, error) {
	hdr := make([]byte, min(img.Size(), headerSize))
	if _, err := img.ReadAt(hdr, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading the kernel: %w", err)
	}
	return hdr, nil
}

// readInto reads n bytes of img from off straight into guest memory at
// addr.
func readInto(mem *guestmem.Memory, img Image, off, n int64, addr uint64) error {
	if off < 0 || n < 0 || off > img.Size() || n > img.Size()-off {
		return fmt.Errorf("[%#x, +%#x) is past the end of the %d-byte image", off, n, img.Size())
	}
	dst, err := mem.Slice(addr, uint64(n))
	if err != nil {
		return err
	}
	got, err := img.ReadAt(dst, off)
	if got == len(dst) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF // the file shrank while read
	}
	return fmt.Errorf("read %d of %d bytes: %w", got, n, err)
}
