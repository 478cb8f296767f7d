package vmm

import (
	"encoding/binary"
	"strings"
)

// A small encoder for the ACPI Machine Language the DSDT needs: named
// integers, strings and packages, a scope, a device, buffers of resource
// descriptors (ACPI 6.4, chapter 20 "ACPI Machine Language Specification"
// and 6.4 "Resource Data Types"). Only what flushvm's tables use.

// AML opcodes and prefixes.
const (
	amlZeroOp       = 0x00
	amlOneOp        = 0x01
	amlNameOp       = 0x08
	amlBytePrefix   = 0x0a
	amlWordPrefix   = 0x0b
	amlDWordPrefix  = 0x0c
	amlStringPrefix = 0x0d
	amlQWordPrefix  = 0x0e
	amlScopeOp      = 0x10
	amlBufferOp     = 0x11
	amlPackageOp    = 0x12
	amlExtOpPrefix  = 0x5b
	amlDeviceOp     = 0x82 // after amlExtOpPrefix
	amlRootChar     = '\\'
	amlDualNamePfx  = 0x2e
	amlMultiNamePfx = 0x2f
)

// amlPkgLength encodes the PkgLength of a body of n bytes: the encoded
// length counts its own bytes too (1 to 4 of them).
func amlPkgLength(n int) []byte {
	if n+1 < 1<<6 {
		return []byte{byte(n + 1)}
	}
	for size := 2; size <= 4; size++ {
		total := n + size
		if total < 1<<(4+8*(size-1)) {
			b := []byte{byte(size-1)<<6 | byte(total&0xf)}
			for i := 1; i < size; i++ {
				b = append(b, byte(total>>(4+8*(i-1))))
			}
			return b
		}
	}
	panic("AML package longer than 2^28 bytes")
}

// amlNameString encodes a name path such as "_S5_", "\_SB_" or
// "\_SB_.PCI0"; segments shorter than four characters are padded with '_'.
func amlNameString(path string) []byte {
	var b []byte
	if strings.HasPrefix(path, `\`) {
		b = append(b, amlRootChar)
		path = path[1:]
	}
	segs := strings.Split(path, ".")
	switch len(segs) {
	case 1:
	case 2:
		b = append(b, amlDualNamePfx)
	default:
		b = append(b, amlMultiNamePfx, byte(len(segs)))
	}
	for _, s := range segs {
		b = append(b, (s + "____")[:4]...)
	}
	return b
}

// amlInteger encodes v in the shortest integer form.
func amlInteger(v uint64) []byte {
	le := binary.LittleEndian
	switch {
	case v == 0:
		return []byte{amlZeroOp}
	case v == 1:
		return []byte{amlOneOp}
	case v <= 0xff:
		return []byte{amlBytePrefix, byte(v)}
	case v <= 0xffff:
		return le.AppendUint16([]byte{amlWordPrefix}, uint16(v))
	case v <= 0xffffffff:
		return le.AppendUint32([]byte{amlDWordPrefix}, uint32(v))
	default:
		return le.AppendUint64([]byte{amlQWordPrefix}, v)
	}
}

// amlString encodes an ASCII string constant (NUL-terminated), e.g. a
// _HID that is not an EISA ID.
func amlString(s string) []byte {
	return append(append([]byte{amlStringPrefix}, s...), 0)
}

// amlName is Name(name, value).
func amlName(name string, value []byte) []byte {
	return append(append([]byte{amlNameOp}, amlNameString(name)...), value...)
}

// amlPackage is Package(){elems...}.
func amlPackage(elems ...[]byte) []byte {
	body := []byte{byte(len(elems))}
	for _, e := range elems {
		body = append(body, e...)
	}
	return amlWithLength([]byte{amlPackageOp}, body)
}

// amlBuffer is Buffer(){data}.
func amlBuffer(data []byte) []byte {
	body := append(amlInteger(uint64(len(data))), data...)
	return amlWithLength([]byte{amlBufferOp}, body)
}

// amlScope is Scope(path){terms...}.
func amlScope(path string, terms ...[]byte) []byte {
	return amlWithLength([]byte{amlScopeOp}, append(amlNameString(path), concatBytes(terms)...))
}

// amlDevice is Device(name){terms...}.
func amlDevice(name string, terms ...[]byte) []byte {
	return amlWithLength([]byte{amlExtOpPrefix, amlDeviceOp}, append(amlNameString(name), concatBytes(terms)...))
}

// amlWithLength is op, the PkgLength of body, body.
func amlWithLength(op, body []byte) []byte {
	return append(append(op, amlPkgLength(len(body))...), body...)
}

// amlEISAID compresses a seven-character PNP ID such as "PNP0A03" into the
// 32-bit EISA ID form of EisaId(): three 5-bit letters and four hex
// digits, stored big-endian.
func amlEISAID(id string) uint32 {
	hex := func(c byte) uint32 {
		if c >= 'A' {
			return uint32(c-'A') + 10
		}
		return uint32(c - '0')
	}
	v := uint32(id[0]-'@')<<26 | uint32(id[1]-'@')<<21 | uint32(id[2]-'@')<<16 |
		hex(id[3])<<12 | hex(id[4])<<8 | hex(id[5])<<4 | hex(id[6])
	return v>>24 | v>>8&0xff00 | v<<8&0xff0000 | v<<24
}

// Resource descriptors for a _CRS buffer (ACPI 6.4, 6.4.3.5: address space
// descriptors; 6.4.2.5: I/O port descriptor). General flags 0x0c: the
// bridge produces the range (bit 0 clear), positive decode, minimum and
// maximum fixed.
const (
	resIOPortTag    = 0x47 // small item 0x08, 7 bytes
	resIODecode16   = 0x01
	resWordAddress  = 0x88
	resDWordAddress = 0x87
	resQWordAddress = 0x8a
	resEndTag       = 0x79

	resTypeMemory = 0
	resTypeIO     = 1
	resTypeBus    = 2

	resProducerFixed = 0x0c
	resIOEntireRange = 0x03 // _RNG: ISA and non-ISA ranges
	resMemReadWrite  = 0x01 // _RW, non-cacheable
)

// resBusNumbers is WordBusNumber(ResourceProducer, ...) for buses
// [min, max].
func resBusNumbers(min, max uint16) []byte {
	b := []byte{resWordAddress, 13, 0, resTypeBus, resProducerFixed, 0}
	for _, v := range []uint16{0, min, max, 0, max - min + 1} {
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	return b
}

// resDWord is a DWordIO or DWordMemory window [min, max].
func resDWord(typ, typeFlags byte, min, max uint32) []byte {
	b := []byte{resDWordAddress, 23, 0, typ, resProducerFixed, typeFlags}
	for _, v := range []uint32{0, min, max, 0, max - min + 1} {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}

// resQWordMemory is a QWordMemory window [min, max].
func resQWordMemory(min, max uint64) []byte {
	b := []byte{resQWordAddress, 43, 0, resTypeMemory, resProducerFixed, resMemReadWrite}
	for _, v := range []uint64{0, min, max, 0, max - min + 1} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}

// resIOPort is IO(Decode16, port, port, 1, n): a device's n fixed ports
// from port.
func resIOPort(port uint16, n uint8) []byte {
	b := []byte{resIOPortTag, resIODecode16}
	b = binary.LittleEndian.AppendUint16(b, port)
	b = binary.LittleEndian.AppendUint16(b, port)
	return append(b, 1, n)
}

// resEnd ends a resource template (checksum 0: none).
func resEnd() []byte { return []byte{resEndTag, 0} }

func concatBytes(parts [][]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}
