package blk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/flushvm/flushvm/internal/atomicfile"
)

// Crash images are the disks a crash-test engine checks: the image a run
// started from, plus a prefix of the run's write log, plus some pieces of
// the writes after it (those a power cut may or may not have kept). They
// are described, not built: a CrashImage maps each overridden sector to the
// log bytes holding its data (or to zeroes), so thousands of states cost
// map work, and a state's content hash costs no data reads once the log's
// sectors have been digested.

// CrashPiece is part of one write-log entry applied to a crash image:
// bytes [Offset, Offset+Length) of the entry's extent (relative to the
// entry's start); Length 0 means the whole entry.
type CrashPiece struct {
	Entry  uint64 `json:"entry"`
	Offset int64  `json:"offset,omitempty"`
	Length int64  `json:"length,omitempty"`
}

// CrashState names one crash image: the base image, then every write and
// discard entry with Index < Prefix in log order, then Pieces in order.
type CrashState struct {
	// ID names the state for reports.
	ID string `json:"id"`
	// Prefix is the number of leading log entries applied whole.
	Prefix uint64 `json:"prefix"`
	// Pieces are applied after the prefix, in order.
	Pieces []CrashPiece `json:"pieces,omitempty"`
}

// CrashStateSet is the crashstates= file (JSON): the write log the states
// come from and the states.
type CrashStateSet struct {
	// Log is the write log's path. ReadCrashStateSet resolves a relative
	// path against the directory of the set file.
	Log string `json:"log"`
	// States are the crash states, numbered from 0 in this order.
	States []CrashState `json:"states"`
}

// ErrBadCrashState reports a crash state, or a crash state set, that its
// write log cannot build.
var ErrBadCrashState = errors.New("blk: bad crash state")

const (
	// MaxCrashStates bounds the states of one CrashStateSet.
	MaxCrashStates = 1 << 16
	// maxCrashStateSetBytes bounds a crashstates= file.
	maxCrashStateSetBytes = 64 << 20
)

// ReadCrashStateSet reads and checks the crashstates= file at path.
func ReadCrashStateSet(path string) (*CrashStateSet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("blk: crash states: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCrashStateSetBytes+1))
	if err != nil {
		return nil, fmt.Errorf("blk: crash states %s: %w", path, err)
	}
	if len(b) > maxCrashStateSetBytes {
		return nil, fmt.Errorf("%w: %s: more than %d bytes", ErrBadCrashState, path, maxCrashStateSetBytes)
	}
	var s CrashStateSet
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadCrashState, path, err)
	}
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !filepath.IsAbs(s.Log) {
		s.Log = filepath.Join(filepath.Dir(path), s.Log)
	}
	return &s, nil
}

// WriteCrashStateSet writes s to path atomically.
func WriteCrashStateSet(path string, s *CrashStateSet) error {
	if err := s.validate(); err != nil {
		return err
	}
	if err := atomicfile.WriteJSON(path, s); err != nil {
		return fmt.Errorf("blk: write crash states %s: %w", path, err)
	}
	return nil
}

// validate checks what a set says without its log.
func (s *CrashStateSet) validate() error {
	if s.Log == "" {
		return fmt.Errorf("%w: the set names no write log", ErrBadCrashState)
	}
	if len(s.States) > MaxCrashStates {
		return fmt.Errorf("%w: %d states, at most %d", ErrBadCrashState, len(s.States), MaxCrashStates)
	}
	return nil
}

// CrashLog indexes a write log for building crash images: it reads every
// entry header once (its memory grows with the number of entries, not with
// the lengths they claim) and caches the digests of the log's data sectors
// and of the base sectors crash images override.
type CrashLog struct {
	lr      *WriteLogReader
	base    io.ReaderAt
	size    int64
	entries []WriteLogEntry
	// data are the indexes of the entries with data, in log order (by
	// dataPos).
	data []int

	digests digestCache
	prefix  prefixCache
	// files are what OpenCrashLog opened, for Close.
	files []*os.File
}

// OpenCrashLog opens the write log at logPath and the base image at
// basePath (read-only) and indexes the log (NewCrashLog). Close closes
// both files.
func OpenCrashLog(logPath, basePath string) (*CrashLog, error) {
	lf, err := os.Open(logPath)
	if err != nil {
		return nil, fmt.Errorf("blk: crash log: %w", err)
	}
	bf, err := os.Open(basePath)
	if err != nil {
		lf.Close()
		return nil, fmt.Errorf("blk: crash log: base image: %w", err)
	}
	cl, err := openCrashLog(lf, bf)
	if err != nil {
		lf.Close()
		bf.Close()
		return nil, fmt.Errorf("blk: crash log %s over %s: %w", logPath, basePath, err)
	}
	cl.files = []*os.File{lf, bf}
	return cl, nil
}

func openCrashLog(lf, bf *os.File) (*CrashLog, error) {
	fi, err := bf.Stat()
	if err != nil {
		return nil, err
	}
	lr, err := NewWriteLogReader(lf)
	if err != nil {
		return nil, err
	}
	return NewCrashLog(lr, bf, fi.Size())
}

// Close closes the files OpenCrashLog opened (nothing for a CrashLog from
// NewCrashLog, whose caller owns its reader and base). Images of the log
// cannot be read after it.
func (cl *CrashLog) Close() error {
	var err error
	for _, f := range cl.files {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("blk: crash log: %w", cerr)
		}
	}
	cl.files = nil
	return err
}

// NewCrashLog reads the entry headers of the log in lr (from its first
// entry, whatever lr read before). base is the image the log started from
// and size its size, a multiple of 512. A damaged log, or one with an entry
// past size, is refused (ErrBadWriteLog).
func NewCrashLog(lr *WriteLogReader, base io.ReaderAt, size int64) (*CrashLog, error) {
	if size < 0 || size%SectorSize != 0 {
		return nil, fmt.Errorf("blk: crash log: base image of %d bytes, not a multiple of %d", size, SectorSize)
	}
	cl := &CrashLog{lr: lr, base: base, size: size}
	lr.rewind()
	defer lr.rewind()
	for {
		e, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if hasExtent(e) && e.Offset+e.Length > size {
			return nil, fmt.Errorf("%w: entry %d covers [%d, +%d), past the %d-byte image", ErrBadWriteLog, e.Index, e.Offset, e.Length, size)
		}
		if e.HasData() {
			cl.data = append(cl.data, len(cl.entries))
		}
		cl.entries = append(cl.entries, e)
	}
	cl.digests.init(len(cl.entries))
	return cl, nil
}

// hasExtent reports a write or discard entry: one a crash image applies.
func hasExtent(e WriteLogEntry) bool {
	return e.HasData() || e.IsDiscard() && !e.IsMark()
}

// Entries returns every entry in log order: writes, discards, flushes and
// marks. The caller must not change it.
func (cl *CrashLog) Entries() []WriteLogEntry { return cl.entries }

// Check reports why st cannot be built from the log (ErrBadCrashState), or
// nil: its prefix is at most the number of entries, and each piece names a
// write or discard entry and a 512-aligned range inside it.
func (cl *CrashLog) Check(st CrashState) error {
	if st.Prefix > uint64(len(cl.entries)) {
		return fmt.Errorf("%w %q: prefix %d, the log has %d entries", ErrBadCrashState, st.ID, st.Prefix, len(cl.entries))
	}
	for i, p := range st.Pieces {
		if err := cl.checkPiece(p); err != nil {
			return fmt.Errorf("%w %q: piece %d: %v", ErrBadCrashState, st.ID, i, err)
		}
	}
	return nil
}

func (cl *CrashLog) checkPiece(p CrashPiece) error {
	if p.Entry >= uint64(len(cl.entries)) {
		return fmt.Errorf("entry %d, the log has %d", p.Entry, len(cl.entries))
	}
	e := cl.entries[p.Entry]
	if !hasExtent(e) {
		return fmt.Errorf("entry %d (flags %#x) is not a write or a discard", p.Entry, e.Flags)
	}
	if p.Offset < 0 || p.Length < 0 || p.Offset%SectorSize != 0 || p.Length%SectorSize != 0 {
		return fmt.Errorf("range [%d, +%d) is not 512-aligned", p.Offset, p.Length)
	}
	if p.Offset > e.Length || p.Length > e.Length-p.Offset {
		return fmt.Errorf("range [%d, +%d) past entry %d's %d bytes", p.Offset, p.Length, p.Entry, e.Length)
	}
	return nil
}

// Image describes state st's image after checking it (Check).
func (cl *CrashLog) Image(st CrashState) (*CrashImage, error) {
	if err := cl.Check(st); err != nil {
		return nil, err
	}
	m := cl.prefix.image(cl, st.Prefix)
	for _, p := range st.Pieces {
		e := cl.entries[p.Entry]
		n := p.Length
		if n == 0 {
			n = e.Length - p.Offset
		}
		applyEntry(m, e, p.Offset, n)
	}
	return &CrashImage{log: cl, sectors: m}, nil
}

// BaseImage describes the base image itself (no entry applied).
func (cl *CrashLog) BaseImage() *CrashImage {
	return &CrashImage{log: cl, sectors: map[int64]int64{}}
}

// applyEntry applies bytes [off, off+n) of entry e to the sector map m.
func applyEntry(m map[int64]int64, e WriteLogEntry, off, n int64) {
	s0 := (e.Offset + off) / SectorSize
	for k := range n / SectorSize {
		m[s0+k] = entryRef(e, off+k*SectorSize)
	}
}

// zeroRef is the sector map's value for a sector of zeroes; any other
// value is the log byte where the sector's data starts (always past the
// super block, so never 0).
const zeroRef = 0

// prefixCache keeps the sector map of the last prefix built, so that
// states asked for in increasing prefix order each cost only the entries
// added since the previous one, plus a copy of the map.
type prefixCache struct {
	mu     sync.Mutex
	prefix uint64
	m      map[int64]int64
}

// image returns a copy of the sector map of the first prefix entries.
func (pc *prefixCache) image(cl *CrashLog, prefix uint64) map[int64]int64 {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.m == nil || pc.prefix > prefix {
		pc.m, pc.prefix = map[int64]int64{}, 0
	}
	for _, e := range cl.entries[pc.prefix:prefix] {
		if hasExtent(e) {
			applyEntry(pc.m, e, 0, e.Length)
		}
	}
	pc.prefix = prefix
	return maps.Clone(pc.m)
}

// entryAt returns the index of the data entry whose data holds log byte
// pos.
func (cl *CrashLog) entryAt(pos int64) (int, bool) {
	i := sort.Search(len(cl.data), func(i int) bool { return cl.entries[cl.data[i]].dataPos > pos }) - 1
	if i < 0 {
		return 0, false
	}
	e := cl.entries[cl.data[i]]
	if pos >= e.dataPos+e.Length {
		return 0, false
	}
	return cl.data[i], true
}

// CrashImage is a crash state's content as a sector map over the base
// image: each overridden sector reads from the write log or as zeroes, the
// others from the base.
type CrashImage struct {
	log     *CrashLog
	sectors map[int64]int64 // sector -> log data position, or zeroRef
}

// Sectors returns the number of overridden sectors.
func (ci *CrashImage) Sectors() int { return len(ci.sectors) }

// ReadAt fills p with the image's bytes from off; off and len(p) are
// multiples of 512 and the range is inside the image.
func (ci *CrashImage) ReadAt(p []byte, off int64) error {
	size := ci.log.size
	if off < 0 || off%SectorSize != 0 || len(p)%SectorSize != 0 || int64(len(p)) > size-off {
		return fmt.Errorf("blk: crash image: read [%d, +%d) of a %d-byte image", off, len(p), size)
	}
	for len(p) > 0 {
		n, ref, over := ci.run(off/SectorSize, len(p)/SectorSize)
		chunk := p[:n*SectorSize]
		var err error
		switch {
		case !over:
			_, err = ci.log.base.ReadAt(chunk, off)
		case ref == zeroRef:
			clear(chunk)
		default:
			_, err = ci.log.lr.r.ReadAt(chunk, ref)
		}
		if err != nil {
			return fmt.Errorf("blk: crash image: read [%d, +%d): %w", off, len(chunk), err)
		}
		p, off = p[len(chunk):], off+int64(len(chunk))
	}
	return nil
}

// run returns the length (at most limit sectors) of the run of sectors
// from s that read from one place: the base, zeroes, or consecutive log
// bytes; and where the first one reads from.
func (ci *CrashImage) run(s int64, limit int) (n int, ref int64, over bool) {
	ref, over = ci.sectors[s]
	for n = 1; n < limit; n++ {
		next := ref
		if ref != zeroRef {
			next = ref + int64(n)*SectorSize
		}
		if r, o := ci.sectors[s+int64(n)]; o != over || over && r != next {
			break
		}
	}
	return n, ref, over
}

// crashChunk is the buffer size WriteTo copies through, holeChunk the
// granularity at which it leaves zeroes as holes.
const (
	crashChunk = 1 << 20
	holeChunk  = 64 << 10
)

// WriteTo makes dst (truncated first) a copy of the image, all of its bytes,
// with every 64 KiB block of zeroes left as a hole.
func (ci *CrashImage) WriteTo(dst *os.File) error {
	if err := dst.Truncate(0); err != nil {
		return fmt.Errorf("blk: crash image: %w", err)
	}
	size := ci.log.size
	buf := make([]byte, crashChunk)
	for off := int64(0); off < size; off += crashChunk {
		chunk := buf[:min(crashChunk, size-off)]
		if err := ci.ReadAt(chunk, off); err != nil {
			return err
		}
		for at := 0; at < len(chunk); at += holeChunk {
			b := chunk[at:min(at+holeChunk, len(chunk))]
			if allZero(b) {
				continue
			}
			if _, err := dst.WriteAt(b, off+int64(at)); err != nil {
				return fmt.Errorf("blk: crash image: %w", err)
			}
		}
	}
	if err := dst.Truncate(size); err != nil {
		return fmt.Errorf("blk: crash image: %w", err)
	}
	return nil
}
