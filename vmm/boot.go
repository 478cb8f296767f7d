package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/flushvm/flushvm/kvm"
	"github.com/flushvm/flushvm/virtio/guestmem"
)

// ErrBadKernel reports a kernel image that is not a bzImage flushvm can boot
// through the 64-bit boot protocol.
var ErrBadKernel = errors.New("not a bootable bzImage")

// Offsets in the bzImage setup header and in struct boot_params (the "zero
// page"), from Documentation/arch/x86/boot.rst and
// arch/x86/include/uapi/asm/bootparam.h.
const (
	bpExtRamdiskImage = 0x0c0
	bpExtRamdiskSize  = 0x0c4
	bpExtCmdLinePtr   = 0x0c8
	bpE820Entries     = 0x1e8
	hdrStart          = 0x1f1
	hdrSetupSects     = 0x1f1
	hdrVidMode        = 0x1fa
	hdrBootFlag       = 0x1fe
	hdrEnd            = 0x201 // one byte: end of the header, relative to 0x202
	hdrMagic          = 0x202
	hdrVersion        = 0x206
	hdrTypeOfLoader   = 0x210
	hdrLoadFlags      = 0x211
	hdrRamdiskImage   = 0x218
	hdrRamdiskSize    = 0x21c
	hdrHeapEndPtr     = 0x224
	hdrCmdLinePtr     = 0x228
	hdrInitrdAddrMax  = 0x22c
	hdrRelocatable    = 0x234
	hdrXLoadFlags     = 0x236
	hdrCmdlineSize    = 0x238
	hdrInitSize       = 0x260
	bpE820Table       = 0x2d0
	e820EntrySize     = 20
	e820Max           = 128

	bootMagic         = 0x53726448 // "HdrS"
	bootFlagMagic     = 0xaa55
	loadedHigh        = 0x01
	canUseHeap        = 0x80
	xlfKernel64       = 0x01
	loaderUndefined   = 0xff
	minBootProtocol   = 0x0206
	e820RAM           = 1
	e820Reserved      = 2
	legacyInitrdLimit = 0x37ffffff
)

// e820Entry is one entry of the BIOS memory map given to the kernel.
type e820Entry struct {
	addr, size uint64
	typ        uint32
}

// e820Map is the memory map of a machine with layout l.
func e820Map(l memLayout) []e820Entry {
	m := []e820Entry{
		{0, ebdaStart, e820RAM},
		{ebdaStart, highMemStart - ebdaStart, e820Reserved},
		{highMemStart, l.lowSize - highMemStart, e820RAM},
	}
	if l.highSize > 0 {
		m = append(m, e820Entry{memHoleEnd, l.highSize, e820RAM})
	}
	return m
}

// bzImage is a parsed kernel image.
type bzImage struct {
	setup []byte // the setup header bytes to copy into boot_params
	// kernelOff and kernelLen locate the protected-mode part (compressed
	// kernel + decompressor) in the image.
	kernelOff, kernelLen int64
	version              uint16
	initSize             uint64
	initrdMax            uint64
	cmdlineMax           uint64
}

// parseBzImage reads the setup header of a bzImage of size bytes whose
// first bytes are img (at least 0x300 of them).
func parseBzImage(img []byte, size int64) (*bzImage, error) {
	if len(img) < 0x300 || size < 0x300 {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrBadKernel, size)
	}
	le := binary.LittleEndian
	if le.Uint32(img[hdrMagic:]) != bootMagic || le.Uint16(img[hdrBootFlag:]) != bootFlagMagic {
		return nil, fmt.Errorf("%w: no Linux boot header (HdrS) at %#x", ErrBadKernel, hdrMagic)
	}
	b := &bzImage{version: le.Uint16(img[hdrVersion:])}
	if b.version < minBootProtocol {
		return nil, fmt.Errorf("%w: boot protocol %#x, need 2.06 or later", ErrBadKernel, b.version)
	}
	if img[hdrLoadFlags]&loadedHigh == 0 {
		return nil, fmt.Errorf("%w: zImage (not loaded high)", ErrBadKernel)
	}
	if le.Uint16(img[hdrXLoadFlags:])&xlfKernel64 == 0 {
		return nil, fmt.Errorf("%w: no 64-bit entry point (XLF_KERNEL_64)", ErrBadKernel)
	}
	setupSects := int(img[hdrSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	kernelOff := (setupSects + 1) * 512
	if int64(kernelOff) >= size {
		return nil, fmt.Errorf("%w: setup (%d sectors) is larger than the file", ErrBadKernel, setupSects)
	}
	end := 0x202 + int(img[hdrEnd])
	if end > kernelOff || end <= hdrInitSize+4 {
		end = hdrInitSize + 4
	}
	b.setup = img[hdrStart:end]
	b.kernelOff, b.kernelLen = int64(kernelOff), size-int64(kernelOff)
	b.initSize = uint64(le.Uint32(img[hdrInitSize:]))
	b.initrdMax = uint64(le.Uint32(img[hdrInitrdAddrMax:]))
	if b.initrdMax == 0 {
		b.initrdMax = legacyInitrdLimit
	}
	b.cmdlineMax = uint64(le.Uint32(img[hdrCmdlineSize:]))
	if b.cmdlineMax == 0 {
		b.cmdlineMax = 255
	}
	return b, nil
}

// loadKernel places kernel, initrd and command line in guest memory and
// writes boot_params at zeroPageAddr. img is a bzImage (the 64-bit entry
// point is then fixed by the boot protocol at kernelAddr + 0x200) or an
// uncompressed ELF vmlinux, which skips the in-guest decompression. It
// returns the guest physical entry point.
func loadKernel(mem *guestmem.Memory, l memLayout, img, initrd Image, cmdline string) (uint64, error) {
	hdr, err := readHeader(img)
	if err != nil {
		return 0, err
	}
	if isELF(hdr) {
		return loadVmlinux(mem, l, img, initrd, cmdline)
	}
	bz, err := parseBzImage(hdr, img.Size())
	if err != nil {
		return 0, err
	}
	footprint := uint64(bz.kernelLen)
	if bz.initSize > footprint {
		footprint = bz.initSize
	}
	// The decompressor runs in place and extracts at LOAD_PHYSICAL_ADDR
	// (16 MiB for Debian) or above, needing init_size bytes there.
	kernelEnd := uint64(16<<20) + footprint
	if kernelEnd > l.lowSize {
		return 0, fmt.Errorf("kernel needs %d MiB of memory below %#x; give the guest more memory", kernelEnd>>20, l.lowSize)
	}
	if err := readInto(mem, img, bz.kernelOff, bz.kernelLen, kernelAddr); err != nil {
		return 0, fmt.Errorf("loading kernel: %w", err)
	}
	zp := make([]byte, pageSize)
	copy(zp[hdrStart:], bz.setup)
	if err := finishBootParams(mem, l, zp, kernelEnd, bz.initrdMax, bz.cmdlineMax, initrd, cmdline); err != nil {
		return 0, err
	}
	return kernelAddr + 0x200, nil
}

// finishBootParams fills the loader's part of boot_params (zp, with the
// kernel's setup header already in place), loads the command line and the
// initrd (above kernelEnd, below initrdMax) and writes zp to zeroPageAddr.
func finishBootParams(mem *guestmem.Memory, l memLayout, zp []byte, kernelEnd, initrdMax, cmdlineSize uint64, initrd Image, cmdline string) error {
	le := binary.LittleEndian
	zp[hdrTypeOfLoader] = loaderUndefined
	zp[hdrLoadFlags] |= canUseHeap
	le.PutUint16(zp[hdrHeapEndPtr:], 0xfe00)
	le.PutUint16(zp[hdrVidMode:], 0xffff)

	if uint64(len(cmdline)) >= cmdlineSize || len(cmdline) >= cmdlineMax {
		return fmt.Errorf("kernel command line is %d bytes; this kernel takes at most %d", len(cmdline), cmdlineSize-1)
	}
	cl := append([]byte(cmdline), 0)
	if err := mem.WriteAt(cl, cmdlineAddr); err != nil {
		return fmt.Errorf("writing command line: %w", err)
	}
	le.PutUint32(zp[hdrCmdLinePtr:], cmdlineAddr)
	le.PutUint32(zp[bpExtCmdLinePtr:], 0)

	if initrd != nil && initrd.Size() > 0 {
		top := l.lowSize
		if initrdMax+1 < top {
			top = initrdMax + 1
		}
		size := uint64(initrd.Size())
		if size > top {
			return fmt.Errorf("initrd of %d MiB does not fit in guest memory", size>>20)
		}
		addr := (top - size) &^ (pageSize - 1)
		if addr < kernelEnd {
			return fmt.Errorf("initrd of %d MiB and kernel (up to %d MiB) do not fit below %#x; give the guest more memory", size>>20, kernelEnd>>20, top)
		}
		if err := readInto(mem, initrd, 0, int64(size), addr); err != nil {
			return fmt.Errorf("loading initrd: %w", err)
		}
		le.PutUint32(zp[hdrRamdiskImage:], uint32(addr))
		le.PutUint32(zp[hdrRamdiskSize:], uint32(size))
		le.PutUint32(zp[bpExtRamdiskImage:], uint32(addr>>32))
		le.PutUint32(zp[bpExtRamdiskSize:], uint32(size>>32))
	}

	e820 := e820Map(l)
	zp[bpE820Entries] = uint8(len(e820))
	for i, e := range e820 {
		o := bpE820Table + i*e820EntrySize
		le.PutUint64(zp[o:], e.addr)
		le.PutUint64(zp[o+8:], e.size)
		le.PutUint32(zp[o+16:], e.typ)
	}
	if err := mem.WriteAt(zp, zeroPageAddr); err != nil {
		return fmt.Errorf("writing boot_params: %w", err)
	}
	return nil
}

// GDT descriptors for the boot CPU: null, null, 64-bit code (selector 0x10,
// __BOOT_CS), data (0x18, __BOOT_DS).
var bootGDT = []uint64{
	0,
	0,
	0x00af9b000000ffff,
	0x00cf93000000ffff,
}

const (
	bootCS = 0x10
	bootDS = 0x18
)

// writeBootTables writes the GDT and identity-mapping page tables that the
// 64-bit boot protocol requires (the first 4 GiB, 2 MiB pages).
func writeBootTables(mem *guestmem.Memory) error {
	for i, d := range bootGDT {
		if err := mem.PutUint64(gdtAddr+uint64(i)*8, d); err != nil {
			return err
		}
	}
	const present, writable, huge = 1, 2, 0x80
	if err := mem.PutUint64(pml4Addr, pdptAddr|present|writable); err != nil {
		return err
	}
	for i := uint64(0); i < 4; i++ {
		pd := uint64(pdAddr) + i*pageSize
		if err := mem.PutUint64(pdptAddr+i*8, pd|present|writable); err != nil {
			return err
		}
		for j := uint64(0); j < 512; j++ {
			phys := (i*512 + j) * hugePageSize
			if err := mem.PutUint64(pd+j*8, phys|present|writable|huge); err != nil {
				return err
			}
		}
	}
	return nil
}

// segmentFromDescriptor expands a GDT descriptor into KVM's segment form.
func segmentFromDescriptor(sel uint16, d uint64) kvm.Segment {
	s := kvm.Segment{
		Base:     (d>>16)&0xffffff | (d>>56&0xff)<<24,
		Limit:    uint32(d&0xffff | (d>>48&0xf)<<16),
		Selector: sel,
		Type:     uint8(d >> 40 & 0xf),
		S:        uint8(d >> 44 & 1),
		DPL:      uint8(d >> 45 & 3),
		Present:  uint8(d >> 47 & 1),
		AVL:      uint8(d >> 52 & 1),
		L:        uint8(d >> 53 & 1),
		DB:       uint8(d >> 54 & 1),
		G:        uint8(d >> 55 & 1),
	}
	if s.G == 1 {
		s.Limit = s.Limit<<12 | 0xfff
	}
	return s
}

// Control register bits.
const (
	cr0PE    = 1 << 0
	cr0ET    = 1 << 4
	cr0PG    = 1 << 31
	cr4PAE   = 1 << 5
	eferLME  = 1 << 8
	eferLMA  = 1 << 10
	rflagsRS = 1 << 1 // bit 1 of RFLAGS is always set
)

// setupBootCPU puts the boot vCPU in 64-bit mode at the kernel's 64-bit
// entry point with RSI pointing at boot_params.
func setupBootCPU(c *kvm.VCPU, entry uint64) error {
	s, err := c.Sregs()
	if err != nil {
		return err
	}
	code := segmentFromDescriptor(bootCS, bootGDT[2])
	data := segmentFromDescriptor(bootDS, bootGDT[3])
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = kvm.Segment{Selector: 0x20, Limit: 0x67, Type: 11, Present: 1}
	s.LDT = kvm.Segment{Type: 2, Present: 1, Unusable: 1}
	s.GDT = kvm.DTable{Base: gdtAddr, Limit: uint16(len(bootGDT)*8 - 1)}
	s.IDT = kvm.DTable{}
	s.CR3 = pml4Addr
	s.CR4 |= cr4PAE
	s.CR0 |= cr0PE | cr0ET | cr0PG
	s.EFER |= eferLME | eferLMA
	if err := c.SetSregs(s); err != nil {
		return err
	}
	fpu := kvm.FPU{FCW: 0x37f, MXCSR: 0x1f80}
	if err := c.SetFPU(fpu); err != nil {
		return err
	}
	return c.SetRegs(kvm.Regs{
		RIP:    entry,
		RSI:    zeroPageAddr,
		RSP:    bootStackTop,
		RFLAGS: rflagsRS,
	})
}
