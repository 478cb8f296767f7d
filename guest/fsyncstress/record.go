package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Record layout (little endian), filling the whole record:
//
//	0  magic  "FSR1"
//	4  writer uint32
//	8  seq    uint64
//	16 size   uint32 (whole record)
//	20 crc    uint32 (CRC-32C of the record with this field zero)
//	24 payload: bytes derived from writer and seq
//
// A record found at the wrong place (a misdirected write), a torn record
// or stale data fails one of the checks.
const headerLen = 24

var magic = [4]byte{'F', 'S', 'R', '1'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors verification distinguishes.
var (
	errMagic    = errors.New("no record (bad magic)")
	errIdentity = errors.New("record of another writer or sequence")
	errChecksum = errors.New("checksum mismatch")
)

// encode fills buf with writer w's record seq.
func encode(buf []byte, w uint32, seq uint64) {
	copy(buf[0:4], magic[:])
	binary.LittleEndian.PutUint32(buf[4:], w)
	binary.LittleEndian.PutUint64(buf[8:], seq)
	binary.LittleEndian.PutUint32(buf[16:], uint32(len(buf)))
	binary.LittleEndian.PutUint32(buf[20:], 0)
	x := uint64(w)<<40 ^ seq*0x9e3779b97f4a7c15 | 1
	for i := headerLen; i < len(buf); i++ {
		// xorshift: cheap, deterministic, differs per record.
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		buf[i] = byte(x)
	}
	binary.LittleEndian.PutUint32(buf[20:], crc32.Checksum(buf, castagnoli))
}

// check verifies that buf holds writer w's record seq, intact.
func check(buf []byte, w uint32, seq uint64) error {
	if len(buf) < headerLen || [4]byte(buf[0:4]) != magic {
		return errMagic
	}
	gw, gseq := binary.LittleEndian.Uint32(buf[4:]), binary.LittleEndian.Uint64(buf[8:])
	if gw != w || gseq != seq || binary.LittleEndian.Uint32(buf[16:]) != uint32(len(buf)) {
		return fmt.Errorf("%w: found writer %d seq %d", errIdentity, gw, gseq)
	}
	want := binary.LittleEndian.Uint32(buf[20:])
	binary.LittleEndian.PutUint32(buf[20:], 0)
	got := crc32.Checksum(buf, castagnoli)
	binary.LittleEndian.PutUint32(buf[20:], want)
	if got != want {
		return fmt.Errorf("%w: crc %08x, header says %08x", errChecksum, got, want)
	}
	return nil
}
