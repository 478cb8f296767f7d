package blk

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"slices"
	"sync"
)

// A crash image's hash is an additive multiset hash of the sectors where
// it differs from the base image: for each such 512-byte sector s,
// d(s) = the first 16 bytes of sha256(le64(s) || content), read as two
// little-endian uint64 lanes; the hash is the lane-wise sum of all d(s)
// mod 2^64, printed as 32 hex digits (lane 0 first). Equal images hash
// equal however they were built, because only content counts: a sector
// written with what the base already holds, or zeroed where the base is
// zero, does not count at all.

// sectorSum is the digest of one sector's content.
type sectorSum struct {
	d [2]uint64
	// zero says the sector is all zeroes; d is then not computed (the
	// digest of zeroes depends on the sector, so baseSum caches it).
	zero bool
}

// baseSum is the digest of a base sector, and of zeroes at that sector.
type baseSum struct {
	sectorSum
	zeroD    [2]uint64
	haveZero bool
}

// digestCache holds the digests a CrashLog computed: per data entry, of
// each of its sectors; per base sector an image overrode, of its content.
type digestCache struct {
	mu   sync.Mutex
	log  [][]sectorSum // by entry index; nil until needed
	base map[int64]baseSum
	h    hash.Hash
	buf  []byte // crashChunk bytes once needed
	sum  [sha256.Size]byte
}

func (dc *digestCache) init(entries int) {
	dc.log = make([][]sectorSum, entries)
	dc.base = map[int64]baseSum{}
	dc.h = sha256.New()
}

// zeroSector is a sector of zeroes.
var zeroSector [SectorSize]byte

// Hash returns the image's content hash (see above), 32 hex digits. It
// reads the data of log entries and base sectors the first time a hash of
// any image of the log needs them; after that, a hash costs map work per
// overridden sector.
func (ci *CrashImage) Hash() (string, error) {
	cl := ci.log
	dc := &cl.digests
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if err := dc.loadBases(cl, ci.sectors); err != nil {
		return "", err
	}
	var lo, hi uint64
	for s, ref := range ci.sectors {
		d, differs, err := dc.delta(cl, s, ref)
		if err != nil {
			return "", err
		}
		if differs {
			lo += d[0]
			hi += d[1]
		}
	}
	return fmt.Sprintf("%016x%016x", lo, hi), nil
}

// delta returns d(s) for sector s reading from ref, and whether the
// sector differs from the base at all.
func (dc *digestCache) delta(cl *CrashLog, s, ref int64) ([2]uint64, bool, error) {
	b := dc.base[s]
	img := sectorSum{zero: true}
	if ref != zeroRef {
		var err error
		if img, err = dc.logSum(cl, ref); err != nil {
			return [2]uint64{}, false, err
		}
	}
	switch {
	case img.zero && b.zero:
		return [2]uint64{}, false, nil
	case img.zero:
		if !b.haveZero {
			b.zeroD, b.haveZero = dc.digest(s, zeroSector[:]), true
			dc.base[s] = b
		}
		return b.zeroD, true, nil
	case !b.zero && b.d == img.d:
		return [2]uint64{}, false, nil
	}
	return img.d, true, nil
}

// digest is d(s) of content p.
func (dc *digestCache) digest(s int64, p []byte) [2]uint64 {
	var le [8]byte
	binary.LittleEndian.PutUint64(le[:], uint64(s))
	dc.h.Reset()
	dc.h.Write(le[:])
	dc.h.Write(p)
	sum := dc.h.Sum(dc.sum[:0])
	return [2]uint64{binary.LittleEndian.Uint64(sum[0:]), binary.LittleEndian.Uint64(sum[8:])}
}

// sectorSumOf digests sector s of content p.
func (dc *digestCache) sectorSumOf(s int64, p []byte) sectorSum {
	if allZero(p) {
		return sectorSum{zero: true}
	}
	return sectorSum{d: dc.digest(s, p)}
}

// scratch returns the chunk buffer.
func (dc *digestCache) scratch() []byte {
	if dc.buf == nil {
		dc.buf = make([]byte, crashChunk)
	}
	return dc.buf
}

// logSum returns the digest of the log sector at byte pos, digesting its
// whole entry the first time.
func (dc *digestCache) logSum(cl *CrashLog, pos int64) (sectorSum, error) {
	i, ok := cl.entryAt(pos)
	if !ok {
		return sectorSum{}, fmt.Errorf("%w: no entry holds log byte %d", ErrBadWriteLog, pos)
	}
	e := cl.entries[i]
	if dc.log[i] == nil {
		sums := make([]sectorSum, 0, e.Length/SectorSize)
		s := e.Offset / SectorSize
		for at := int64(0); at < e.Length; {
			chunk := dc.scratch()[:min(crashChunk, e.Length-at)]
			if err := cl.lr.ReadData(e, chunk, at); err != nil {
				return sectorSum{}, err
			}
			for k := 0; k < len(chunk); k += SectorSize {
				sums = append(sums, dc.sectorSumOf(s, chunk[k:k+SectorSize]))
				s++
			}
			at += int64(len(chunk))
		}
		dc.log[i] = sums
	}
	return dc.log[i][(pos-e.dataPos)/SectorSize], nil
}

// loadBases digests the base sectors of sectors not digested yet, reading
// runs of consecutive sectors at once.
func (dc *digestCache) loadBases(cl *CrashLog, sectors map[int64]int64) error {
	var missing []int64
	for s := range sectors {
		if _, ok := dc.base[s]; !ok {
			missing = append(missing, s)
		}
	}
	slices.Sort(missing)
	for len(missing) > 0 {
		n := 1
		for n < len(missing) && n < crashChunk/SectorSize && missing[n] == missing[0]+int64(n) {
			n++
		}
		chunk := dc.scratch()[:n*SectorSize]
		if _, err := cl.base.ReadAt(chunk, missing[0]*SectorSize); err != nil {
			return fmt.Errorf("blk: crash image: read base [%d, +%d): %w", missing[0]*SectorSize, len(chunk), err)
		}
		for k, s := range missing[:n] {
			dc.base[s] = baseSum{sectorSum: dc.sectorSumOf(s, chunk[k*SectorSize:(k+1)*SectorSize])}
		}
		missing = missing[n:]
	}
	return nil
}
