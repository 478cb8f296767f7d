package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrNoSuchFlush reports a replay to a flush the write log does not have.
var ErrNoSuchFlush = errors.New("blk: write log has no such flush")

// WriteLogEntry is one entry of a write log.
type WriteLogEntry struct {
	// Index numbers the entry from 0.
	Index uint64
	// Flags are the entry's WriteLog* flags.
	Flags uint64
	// Offset and Length are the disk bytes the entry covers (0 for a flush
	// without data and for a mark).
	Offset int64
	// Length is the number of bytes covered.
	Length int64
	// Mark is the text of a MARK entry.
	Mark string
	// dataPos is where the entry's data starts in the log.
	dataPos int64
}

// IsFlush reports a FLUSH entry.
func (e WriteLogEntry) IsFlush() bool { return e.Flags&WriteLogFlush != 0 }

// IsMark reports a MARK entry.
func (e WriteLogEntry) IsMark() bool { return e.Flags&WriteLogMark != 0 }

// IsDiscard reports a DISCARD entry.
func (e WriteLogEntry) IsDiscard() bool { return e.Flags&WriteLogDiscard != 0 }

// HasData reports an entry carrying written data.
func (e WriteLogEntry) HasData() bool {
	return e.Flags&(WriteLogDiscard|WriteLogMark) == 0 && e.Length > 0
}

// WriteLogReader reads a write log entry by entry.
type WriteLogReader struct {
	r          io.ReaderAt
	size       int64 // bytes in the log, or -1 when r cannot tell
	sectorSize int64
	count      uint64
	pos        int64
	index      uint64
	block      []byte
}

// NewWriteLogReader checks the super block of the log in r and returns a
// reader positioned at its first entry. When r can tell its size (a
// regular *os.File, a *bytes.Reader, an *io.SectionReader), an entry whose
// data would run past the end of the log is refused as soon as it is read,
// so a few bytes of log cannot claim gigabytes of data.
func NewWriteLogReader(r io.ReaderAt) (*WriteLogReader, error) {
	var sb [28]byte
	if _, err := r.ReadAt(sb[:], 0); err != nil {
		return nil, fmt.Errorf("%w: super block: %v", ErrBadWriteLog, err)
	}
	if m := binary.LittleEndian.Uint64(sb[0:]); m != writeLogMagic {
		return nil, fmt.Errorf("%w: magic %#x, want %#x", ErrBadWriteLog, m, writeLogMagic)
	}
	if v := binary.LittleEndian.Uint64(sb[8:]); v != writeLogVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrBadWriteLog, v, writeLogVersion)
	}
	ss := int64(binary.LittleEndian.Uint32(sb[24:]))
	if ss < 512 || ss > 64<<10 || ss&(ss-1) != 0 {
		return nil, fmt.Errorf("%w: sector size %d", ErrBadWriteLog, ss)
	}
	return &WriteLogReader{
		r: r, size: readerSize(r), sectorSize: ss, count: binary.LittleEndian.Uint64(sb[16:]),
		pos: ss, block: make([]byte, ss),
	}, nil
}

// readerSize returns the size of r when r can tell it, else -1. Only a
// regular file's Stat size counts: a block device (Linux's dm-log-writes
// logs to one) reports 0.
func readerSize(r io.ReaderAt) int64 {
	switch x := r.(type) {
	case interface{ Size() int64 }:
		return x.Size()
	case interface{ Stat() (os.FileInfo, error) }:
		if fi, err := x.Stat(); err == nil && fi.Mode().IsRegular() {
			return fi.Size()
		}
	}
	return -1
}

// rewind positions lr at the first entry again.
func (lr *WriteLogReader) rewind() { lr.pos, lr.index = lr.sectorSize, 0 }

// Entries returns the number of entries the super block announces.
func (lr *WriteLogReader) Entries() uint64 { return lr.count }

// SectorSize returns the log's sector size in bytes.
func (lr *WriteLogReader) SectorSize() int64 { return lr.sectorSize }

// maxLogSectors bounds sector numbers and counts so byte offsets cannot
// overflow (2^40 sectors of 64 KiB is 2^56 bytes).
const maxLogSectors = 1 << 40

// Next returns the next entry, or io.EOF after the last one.
func (lr *WriteLogReader) Next() (WriteLogEntry, error) {
	if lr.index >= lr.count {
		return WriteLogEntry{}, io.EOF
	}
	if _, err := lr.r.ReadAt(lr.block, lr.pos); err != nil {
		return WriteLogEntry{}, fmt.Errorf("%w: entry %d at byte %d: %v", ErrBadWriteLog, lr.index, lr.pos, err)
	}
	b := lr.block
	sector, nr := binary.LittleEndian.Uint64(b[0:]), binary.LittleEndian.Uint64(b[8:])
	e := WriteLogEntry{Index: lr.index, Flags: binary.LittleEndian.Uint64(b[16:])}
	dataLen := binary.LittleEndian.Uint64(b[24:])
	if sector >= maxLogSectors || nr >= maxLogSectors {
		return WriteLogEntry{}, fmt.Errorf("%w: entry %d: sector %d, %d sectors", ErrBadWriteLog, lr.index, sector, nr)
	}
	e.Offset, e.Length = int64(sector)*lr.sectorSize, int64(nr)*lr.sectorSize
	if e.IsMark() {
		if dataLen > uint64(lr.sectorSize-writeLogEntryHeader) {
			return WriteLogEntry{}, fmt.Errorf("%w: entry %d: mark of %d bytes", ErrBadWriteLog, lr.index, dataLen)
		}
		e.Mark = string(b[writeLogEntryHeader : writeLogEntryHeader+dataLen])
		e.Offset, e.Length = 0, 0
	}
	lr.pos += lr.sectorSize
	e.dataPos = lr.pos
	if e.HasData() {
		if lr.size >= 0 && e.Length > lr.size-e.dataPos {
			return WriteLogEntry{}, fmt.Errorf("%w: entry %d claims %d bytes of data at byte %d of a %d-byte log",
				ErrBadWriteLog, lr.index, e.Length, e.dataPos, lr.size)
		}
		lr.pos += e.Length
	}
	lr.index++
	return e, nil
}

// ReadData fills p with the entry's data starting at byte off of it.
func (lr *WriteLogReader) ReadData(e WriteLogEntry, p []byte, off int64) error {
	if !e.HasData() || off < 0 || off+int64(len(p)) > e.Length {
		return fmt.Errorf("blk: write log entry %d: read [%d, +%d) of %d data bytes", e.Index, off, len(p), e.Length)
	}
	if _, err := lr.r.ReadAt(p, e.dataPos+off); err != nil {
		return fmt.Errorf("%w: entry %d data: %v", ErrBadWriteLog, e.Index, err)
	}
	return nil
}

// ReplayOptions say which crash image ReplayWriteLog builds.
type ReplayOptions struct {
	// Flush is the number of flushes that completed before the power was
	// cut: the writes logged before FLUSH entry number Flush (counting
	// from 1) are durable. 0 means no flush completed.
	Flush uint64
	// Policy decides which of the unstable writes — those logged after
	// flush Flush and before the next flush (or the end of the log), the
	// writes that had completed when the next flush was called — survive.
	Policy PowerCutPolicy
	// Seed is the policy's seed.
	Seed uint64
	// ToEnd makes every write after flush Flush unstable, up to the end of
	// the log, treating later FLUSH entries as flushes that never
	// completed: the state of a cut while flush Flush+1 was in progress,
	// which is what VolatileCache.PowerCut sees when a Sync is in flight.
	ToEnd bool
}

// ReplayWriteLog builds a crash image on dst (which holds the base image
// the log started from): it applies every write and discard logged before
// flush o.Flush, then lets o.Policy decide which of the writes logged
// between that flush and the next one survive, and applies the survivors
// (whole or, when torn, their kept pieces) in log order. Discards and
// zeroes are applied as WriteZeroes with unmap, so they leave holes rather
// than allocated zeroes; FUA writes are always kept. It syncs dst at the
// end and returns the report of the cut. Given the same writes in the same
// order, the same policy and seed decide exactly as VolatileCache.PowerCut
// does, so the image is the one the model leaves.
//
// It replays from the log's first entry, whatever lr read before, and
// first checks the whole log as CheckWriteLogReplay does, so a damaged log
// or a missing flush leaves dst untouched. Its memory and the report grow
// with the number of entries, not with the lengths they claim.
func ReplayWriteLog(lr *WriteLogReader, dst Backend, o ReplayOptions) (*PowerCutReport, error) {
	if err := CheckWriteLogReplay(lr, dst.Size(), o); err != nil {
		return nil, err
	}
	rp := replayer{lr: lr, dst: dst, v: NewVec(1)}
	pending, err := walkReplay(lr, dst.Size(), o, func(e WriteLogEntry) error {
		return rp.apply(e, Extent{e.Offset, e.Length})
	})
	if err != nil {
		return nil, err
	}
	rep, err := planReplay(o, pending)
	if err != nil {
		return nil, err
	}
	for i, e := range pending {
		for _, x := range rep.Writes[i].keptExtents() {
			if err := rp.apply(e, x); err != nil {
				return rep, err
			}
		}
	}
	if err := dst.Sync(); err != nil {
		return rep, fmt.Errorf("blk: replay: sync image: %w", err)
	}
	return rep, nil
}

// CheckWriteLogReplay reads the entry headers of the log (not their data)
// as ReplayWriteLog with o would on an image of size bytes, and returns
// what would stop the replay: a bad policy, a damaged log (ErrBadWriteLog),
// an entry past the image, or a flush the log does not have
// (ErrNoSuchFlush). A command calls it before it creates the output image.
// It leaves lr at the first entry.
func CheckWriteLogReplay(lr *WriteLogReader, size int64, o ReplayOptions) error {
	if err := o.Policy.Validate(); err != nil {
		return err
	}
	_, err := walkReplay(lr, size, o, nil)
	lr.rewind()
	return err
}

// walkReplay reads lr from its first entry to the end of replay o's window
// of unstable writes, checking each entry against an image of size bytes.
// It passes every write and discard before the window to stable (when not
// nil) and returns those in the window.
func walkReplay(lr *WriteLogReader, size int64, o ReplayOptions, stable func(WriteLogEntry) error) ([]WriteLogEntry, error) {
	lr.rewind()
	var (
		flushes  uint64
		unstable = o.Flush == 0
		pending  []WriteLogEntry
	)
	for {
		e, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if e.IsFlush() {
			if unstable && !o.ToEnd {
				break // the next flush ends the window
			}
			if !unstable {
				flushes++
				unstable = flushes == o.Flush
			}
		}
		if !e.HasData() && !e.IsDiscard() || e.Length == 0 {
			continue
		}
		if e.Offset+e.Length > size {
			return nil, fmt.Errorf("%w: entry %d covers [%d, +%d), past the %d-byte image", ErrBadWriteLog, e.Index, e.Offset, e.Length, size)
		}
		if unstable {
			pending = append(pending, e)
		} else if stable != nil {
			if err := stable(e); err != nil {
				return nil, err
			}
		}
	}
	if flushes < o.Flush {
		return nil, fmt.Errorf("%w: flush %d asked, the log has %d", ErrNoSuchFlush, o.Flush, flushes)
	}
	return pending, nil
}

// planReplay lets o.Policy decide the fate of the window's entries, then
// keeps the FUA writes, which were durable at completion whatever the
// policy says.
func planReplay(o ReplayOptions, pending []WriteLogEntry) (*PowerCutReport, error) {
	ws := make([]PowerCutWrite, len(pending))
	for i, e := range pending {
		op := OpWrite
		if e.IsDiscard() {
			op = OpDiscard
		}
		ws[i] = PowerCutWrite{Seq: e.Index, Op: op, Offset: e.Offset, Length: e.Length}
	}
	rep, err := planPowerCut(o.Policy, o.Seed, ws)
	if err != nil {
		return nil, err
	}
	for i, e := range pending {
		w := &rep.Writes[i]
		if e.Flags&WriteLogFUA == 0 || w.Fate == FateKept {
			continue
		}
		kept := w.Length
		for _, x := range w.Kept {
			kept -= x.Length
		}
		if w.Fate == FateLost {
			rep.Lost--
		} else {
			rep.Torn--
		}
		rep.KeptBytes += kept
		rep.LostBytes -= kept
		w.Fate, w.Kept = FateKept, nil
		rep.Kept++
	}
	return rep, nil
}

// maxReplayChunk bounds the buffer a replay copies data through.
const maxReplayChunk = 1 << 20

// replayer copies entries' data from a log to an image.
type replayer struct {
	lr  *WriteLogReader
	dst Backend
	buf []byte // grown on demand up to maxReplayChunk
	v   *Vec
}

// apply writes the part x of entry e to the image.
func (rp *replayer) apply(e WriteLogEntry, x Extent) error {
	if x.End() > rp.dst.Size() {
		return fmt.Errorf("%w: entry %d writes [%d, +%d) past the %d-byte image", ErrBadWriteLog, e.Index, x.Offset, x.Length, rp.dst.Size())
	}
	if e.IsDiscard() {
		// Unmap: a hole reads as zeroes and costs no disk space.
		if err := rp.dst.WriteZeroes(x.Offset, x.Length, true); err != nil {
			return fmt.Errorf("blk: replay entry %d: zero [%d, +%d): %w", e.Index, x.Offset, x.Length, err)
		}
		return nil
	}
	if n := min(x.Length, maxReplayChunk); int64(len(rp.buf)) < n {
		rp.buf = make([]byte, n)
	}
	for at := x.Offset; at < x.End(); {
		n := min(int64(len(rp.buf)), x.End()-at)
		chunk := rp.buf[:n]
		if err := rp.lr.ReadData(e, chunk, at-e.Offset); err != nil {
			return err
		}
		var err error
		if allZero(chunk) {
			err = rp.dst.WriteZeroes(at, n, true)
		} else {
			rp.v.Reset()
			if err = rp.v.Append(chunk); err == nil {
				err = rp.dst.WriteAt(rp.v, at)
			}
		}
		if err != nil {
			return fmt.Errorf("blk: replay entry %d: write [%d, +%d): %w", e.Index, at, n, err)
		}
		at += n
	}
	return nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
