package vmm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"

	"github.com/flushvm/flushvm/virtio/guestmem"
)

// isELF reports whether img starts like an ELF file.
func isELF(img []byte) bool { return bytes.HasPrefix(img, []byte(elf.ELFMAG)) }

// Boot protocol values the loader supplies for a vmlinux, which has no setup
// header of its own.
const (
	vmlinuxProtocol   = 0x020f
	vmlinuxCmdlineMax = 2048 // COMMAND_LINE_SIZE on x86
)

// loadVmlinux loads an uncompressed x86-64 Linux ELF image at the physical
// addresses of its program headers and builds boot_params from scratch, as
// the kernel's own decompressor would hand over. It returns the physical
// entry point (startup_64).
func loadVmlinux(mem *guestmem.Memory, l memLayout, img, initrd Image, cmdline string) (uint64, error) {
	f, err := elf.NewFile(img)
	if err != nil {
		return 0, fmt.Errorf("%w: ELF: %v", ErrBadKernel, err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		return 0, fmt.Errorf("%w: ELF %v %v %v, want a 64-bit x86-64 executable (vmlinux)", ErrBadKernel, f.Class, f.Machine, f.Type)
	}
	var entry, kernelEnd uint64
	loaded := 0
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Memsz == 0 {
			continue
		}
		end := p.Paddr + p.Memsz
		if p.Filesz > p.Memsz || end < p.Paddr || p.Paddr < highMemStart || end > l.lowSize {
			return 0, fmt.Errorf("%w: segment at physical %#x+%#x does not fit in guest RAM [%#x, %#x)", ErrBadKernel, p.Paddr, p.Memsz, highMemStart, l.lowSize)
		}
		if size := uint64(img.Size()); p.Off > size || p.Filesz > size-p.Off {
			return 0, fmt.Errorf("%w: segment at %#x: file bytes [%#x, +%#x) past the end of the image", ErrBadKernel, p.Paddr, p.Off, p.Filesz)
		}
		// Read straight into guest memory: a vmlinux is tens of MiB.
		if err := readInto(mem, img, int64(p.Off), int64(p.Filesz), p.Paddr); err != nil {
			return 0, fmt.Errorf("loading kernel segment: %w", err)
		}
		// Guest RAM is a fresh anonymous mapping, so the rest of the
		// segment (.bss) is already zero.
		if end > kernelEnd {
			kernelEnd = end
		}
		// The entry point is physical in Linux's vmlinux; accept a
		// virtual one inside a segment too.
		switch e := f.Entry; {
		case e >= p.Paddr && e < end:
			entry = e
		case e >= p.Vaddr && e < p.Vaddr+p.Memsz:
			entry = p.Paddr + (e - p.Vaddr)
		}
		loaded++
	}
	if loaded == 0 || entry == 0 {
		return 0, fmt.Errorf("%w: ELF has no loadable segment holding its entry point %#x", ErrBadKernel, f.Entry)
	}
	zp := make([]byte, pageSize)
	le := binary.LittleEndian
	le.PutUint16(zp[hdrBootFlag:], bootFlagMagic)
	le.PutUint32(zp[hdrMagic:], bootMagic)
	le.PutUint16(zp[hdrVersion:], vmlinuxProtocol)
	zp[hdrLoadFlags] = loadedHigh
	le.PutUint32(zp[hdrInitrdAddrMax:], legacyInitrdLimit)
	le.PutUint32(zp[hdrCmdlineSize:], vmlinuxCmdlineMax)
	if err := finishBootParams(mem, l, zp, kernelEnd, 0x7fffffff, vmlinuxCmdlineMax, initrd, cmdline); err != nil {
		return 0, err
	}
	return entry, nil
}
