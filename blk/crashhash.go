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
	// prefix is StateHash's running prefix image and its hash; over is
	// its scratch map of the sectors a state's pieces change.
	prefix hashedPrefix
	over   map[int64]int64
}

// hashedPrefix is the sector map of the log's first n entries with the
// image's hash lanes, kept up to date entry by entry. It can also step
// back: each entry applied leaves a mark and the map values it replaced,
// so a smaller prefix costs the entries undone, as long as the undo
// records fit in maxUndo (an explorer steps back only within a window).
type hashedPrefix struct {
	n     uint64
	m     map[int64]int64
	sum   [2]uint64
	marks []prefixMark
	undo  []undoRecord
}

// prefixMark is the state before entry n was applied: the hash lanes, and
// where its undo records start.
type prefixMark struct {
	n    uint64
	sum  [2]uint64
	undo int
}

// undoRecord is a sector's map value before an entry replaced it (had
// false: the sector read from the base).
type undoRecord struct {
	s, ref int64
	had    bool
}

// maxUndo bounds the undo records kept: past it they are dropped and a
// step back below the current prefix starts over from the base.
var maxUndo = 1 << 16 // a variable for the tests

// seek moves the prefix to n entries: back through the undo records when
// it can, forward entry by entry.
func (hp *hashedPrefix) seek(dc *digestCache, cl *CrashLog, n uint64) error {
	if hp.m != nil && n < hp.n && (len(hp.marks) == 0 || hp.marks[0].n > n) {
		hp.m = nil // below what the undo records reach
	}
	if hp.m == nil {
		*hp = hashedPrefix{m: map[int64]int64{}}
	}
	for len(hp.marks) > 0 && hp.n > n {
		mk := hp.marks[len(hp.marks)-1]
		for _, u := range slices.Backward(hp.undo[mk.undo:]) {
			if u.had {
				hp.m[u.s] = u.ref
			} else {
				delete(hp.m, u.s)
			}
		}
		hp.undo, hp.marks = hp.undo[:mk.undo], hp.marks[:len(hp.marks)-1]
		hp.n, hp.sum = mk.n, mk.sum
	}
	for ; hp.n < n; hp.n++ {
		e := cl.entries[hp.n]
		if !hasExtent(e) {
			continue
		}
		if len(hp.undo) > maxUndo {
			hp.marks, hp.undo = hp.marks[:0], hp.undo[:0]
		}
		hp.marks = append(hp.marks, prefixMark{n: hp.n, sum: hp.sum, undo: len(hp.undo)})
		if err := dc.apply(cl, hp, e); err != nil {
			// The map may hold part of the entry: start over next time.
			hp.m = nil
			return err
		}
	}
	return nil
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

// StateHash returns Image(st).Hash() without building the image: it keeps
// the hash of the last prefix asked for and moves it entry by entry, so
// that states asked for window by window (as explorers generate them,
// prefixes going back and forth inside a window) each cost the entries
// between the two prefixes and the sectors of their own pieces, not a
// pass over every sector the log has written. On the 1,112-write
// fsyncstress recording of a 32 MiB disk, exploring its 2,264 states took
// 3.8 s with Image().Hash() and 25 ms with StateHash.
func (cl *CrashLog) StateHash(st CrashState) (string, error) {
	if err := cl.Check(st); err != nil {
		return "", err
	}
	dc := &cl.digests
	dc.mu.Lock()
	defer dc.mu.Unlock()
	hp := &dc.prefix
	if err := hp.seek(dc, cl, st.Prefix); err != nil {
		return "", err
	}
	if dc.over == nil {
		dc.over = map[int64]int64{}
	}
	defer clear(dc.over)
	sum := hp.sum
	for _, p := range st.Pieces {
		e := cl.entries[p.Entry]
		n := p.Length
		if n == 0 {
			n = e.Length - p.Offset
		}
		if err := dc.applyOver(cl, hp.m, &sum, e, p.Offset, n); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("%016x%016x", sum[0], sum[1]), nil
}

// apply applies entry e to the prefix hp, keeping its hash and undo
// records.
func (dc *digestCache) apply(cl *CrashLog, hp *hashedPrefix, e WriteLogEntry) error {
	get := func(s int64) (int64, bool) { ref, ok := hp.m[s]; return ref, ok }
	set := func(s, old int64, had bool, ref int64) {
		hp.undo = append(hp.undo, undoRecord{s: s, ref: old, had: had})
		hp.m[s] = ref
	}
	return dc.applyRange(cl, &hp.sum, e, 0, e.Length, get, set)
}

// applyOver is apply for a state's pieces, bytes [off, off+n) of entry e,
// over the prefix map m, which it leaves alone: the sectors the pieces
// change go to dc.over.
func (dc *digestCache) applyOver(cl *CrashLog, m map[int64]int64, sum *[2]uint64, e WriteLogEntry, off, n int64) error {
	get := func(s int64) (int64, bool) {
		if ref, ok := dc.over[s]; ok {
			return ref, true
		}
		ref, ok := m[s]
		return ref, ok
	}
	set := func(s, _ int64, _ bool, ref int64) { dc.over[s] = ref }
	return dc.applyRange(cl, sum, e, off, n, get, set)
}

// applyRange applies bytes [off, off+n) of entry e to an image whose
// sector map reads through get (false: the sector reads from the base)
// and changes through set, keeping *sum the image's hash.
func (dc *digestCache) applyRange(cl *CrashLog, sum *[2]uint64, e WriteLogEntry, off, n int64,
	get func(s int64) (int64, bool), set func(s, old int64, had bool, ref int64)) error {
	s0 := (e.Offset + off) / SectorSize
	if err := dc.loadBaseRange(cl, s0, n/SectorSize); err != nil {
		return err
	}
	for k := range n / SectorSize {
		s, ref := s0+k, entryRef(e, off+k*SectorSize)
		old, had := get(s)
		if err := dc.move(cl, sum, s, old, had, ref); err != nil {
			return err
		}
		set(s, old, had, ref)
	}
	return nil
}

// move changes *sum for sector s going from reading old (the base when
// !had) to reading ref.
func (dc *digestCache) move(cl *CrashLog, sum *[2]uint64, s, old int64, had bool, ref int64) error {
	if had {
		d, differs, err := dc.delta(cl, s, old)
		if err != nil {
			return err
		}
		if differs {
			sum[0] -= d[0]
			sum[1] -= d[1]
		}
	}
	d, differs, err := dc.delta(cl, s, ref)
	if err != nil {
		return err
	}
	if differs {
		sum[0] += d[0]
		sum[1] += d[1]
	}
	return nil
}

// entryRef is the sector map's value for the sector at byte off of e.
func entryRef(e WriteLogEntry, off int64) int64 {
	if e.IsDiscard() {
		return zeroRef
	}
	return e.dataPos + off
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

// loadBases digests the base sectors of sectors not digested yet.
func (dc *digestCache) loadBases(cl *CrashLog, sectors map[int64]int64) error {
	var missing []int64
	for s := range sectors {
		if _, ok := dc.base[s]; !ok {
			missing = append(missing, s)
		}
	}
	slices.Sort(missing)
	return dc.loadMissing(cl, missing)
}

// loadBaseRange digests the base sectors [s0, s0+n) not digested yet.
func (dc *digestCache) loadBaseRange(cl *CrashLog, s0, n int64) error {
	var missing []int64
	for s := s0; s < s0+n; s++ {
		if _, ok := dc.base[s]; !ok {
			missing = append(missing, s)
		}
	}
	return dc.loadMissing(cl, missing)
}

// loadMissing digests the base sectors missing (sorted, none digested
// yet), reading runs of consecutive sectors at once.
func (dc *digestCache) loadMissing(cl *CrashLog, missing []int64) error {
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
