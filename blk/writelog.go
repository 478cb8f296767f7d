package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// The write log format is the one Linux's dm-log-writes target writes, so
// the kernel's and xfstests' tooling (replay-log) reads flushvm's logs and
// flushvm replays theirs. All integers are little-endian; the log is cut
// into blocks of the log's sector size (flushvm writes 512):
//
//	block 0: super block: magic u64, version u64, number of entries u64,
//	         sector size u32, zero padding
//	then, for each entry:
//	  one block: sector u64, nr_sectors u64, flags u64, data_len u64,
//	             then (MARK entries only) data_len bytes of mark text,
//	             zero padding
//	  nr_sectors blocks of written data (write entries only: not for
//	             DISCARD, FLUSH without data, or MARK)
//
// sector and nr_sectors count sectors of the log's sector size. A FLUSH
// entry says that every write logged before it was covered by a flush.
// For the same workload, a WriteLog writes byte for byte the log Linux 6.1's
// dm-log-writes writes (TestWriteLogMatchesLinux checks it against one).
const (
	// WriteLogFlush marks a flush: the writes before the entry are durable
	// once it completes.
	WriteLogFlush uint64 = 1 << 0
	// WriteLogFUA marks a write that was durable at completion.
	WriteLogFUA uint64 = 1 << 1
	// WriteLogDiscard marks a discard of nr_sectors sectors (no data).
	WriteLogDiscard uint64 = 1 << 2
	// WriteLogMark marks a named point in the log (data_len bytes of text).
	WriteLogMark uint64 = 1 << 3
	// WriteLogMetadata marks file-system metadata (set by Linux only).
	WriteLogMetadata uint64 = 1 << 4
)

const (
	writeLogMagic   = 0x6a736677736872
	writeLogVersion = 1
	// WriteLogSectorSize is the sector size of the logs flushvm writes: the
	// virtio-blk sector.
	WriteLogSectorSize = 512
	// writeLogEntryHeader is the size of the fixed part of an entry.
	writeLogEntryHeader = 32
	// MaxWriteLogMark is the longest mark text flushvm writes.
	MaxWriteLogMark = WriteLogSectorSize - writeLogEntryHeader - 1
)

// ErrWriteLog reports that writing the write log failed; the log is then
// incomplete and every later write through the WriteLog fails too.
var ErrWriteLog = errors.New("blk: write log failed")

// ErrBadWriteLog reports a file that is not a valid write log.
var ErrBadWriteLog = errors.New("blk: bad write log")

// WriteLogFile is where a WriteLog writes: an *os.File satisfies it.
type WriteLogFile interface {
	io.WriterAt
	// Truncate sets the file size; the log uses it to leave the data of
	// write-zeroes entries as a hole.
	Truncate(size int64) error
	// Sync makes the log durable.
	Sync() error
	// Close closes the file.
	Close() error
}

// WriteLog is a Backend that passes every call to another Backend and
// records, in dm-log-writes format, each completed write with its data,
// each discard, and a FLUSH entry for each Sync.
//
// Entries are in completion order. The FLUSH entry is logged when Sync is
// called, before the lower Backend syncs, so it covers exactly the writes
// logged before it — those that completed before the Sync was called (the
// virtio rule); a write completing while the Sync runs is logged after it.
// A write-zeroes is logged as a write of zeroes (its data a hole in the
// log file). The super block's entry count is rewritten at every flush,
// every mark and at Close, so a log cut short by a crash still reads up to
// its last flush, and one whose writer stops at a mark (a vhost-user
// backend ending at a power cut, without closing) reads up to the mark.
// Concurrent overlapping writes (which only a guest racing with itself
// issues) are logged in completion order, which may differ from the order
// the lower Backend applied them.
type WriteLog struct {
	lower Backend
	f     WriteLogFile

	mu      sync.Mutex
	next    int64 // where the next entry goes
	size    int64 // file size
	entries uint64
	flushes uint64
	err     error // sticky: the first log write failure
	block   [WriteLogSectorSize]byte
}

// CreateWriteLog creates (or truncates) the log file at path and returns a
// WriteLog over lower recording into it.
func CreateWriteLog(lower Backend, path string) (*WriteLog, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("blk: create write log: %w", err)
	}
	l, err := NewWriteLog(lower, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// NewWriteLog returns a WriteLog over lower recording into f, which it
// empties first. The WriteLog owns lower and f: Close closes both.
func NewWriteLog(lower Backend, f WriteLogFile) (*WriteLog, error) {
	l := &WriteLog{lower: lower, f: f, next: WriteLogSectorSize, size: WriteLogSectorSize}
	if err := f.Truncate(0); err != nil {
		return nil, fmt.Errorf("blk: write log: truncate: %w", err)
	}
	if err := l.writeSuper(); err != nil {
		return nil, err
	}
	return l, nil
}

// Size returns the lower Backend's size.
func (l *WriteLog) Size() int64 { return l.lower.Size() }

// ReadAt reads from the lower Backend; reads are not logged.
func (l *WriteLog) ReadAt(v *Vec, off int64) error { return l.lower.ReadAt(v, off) }

// WriteAt writes to the lower Backend, then logs the write and its data.
func (l *WriteLog) WriteAt(v *Vec, off int64) error {
	if err := l.sticky(); err != nil {
		return err
	}
	if err := l.lower.WriteAt(v, off); err != nil {
		return err
	}
	if v.Len() == 0 {
		return nil
	}
	return l.append(0, off, v.Len(), v, "")
}

// Discard discards on the lower Backend, then logs a DISCARD entry.
func (l *WriteLog) Discard(off, n int64) error {
	if err := l.sticky(); err != nil {
		return err
	}
	if err := l.lower.Discard(off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	return l.append(WriteLogDiscard, off, n, nil, "")
}

// WriteZeroes zeroes on the lower Backend, then logs a write of zeroes.
func (l *WriteLog) WriteZeroes(off, n int64, unmap bool) error {
	if err := l.sticky(); err != nil {
		return err
	}
	if err := l.lower.WriteZeroes(off, n, unmap); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	return l.append(0, off, n, nil, "")
}

// Sync logs a FLUSH entry (covering every write logged so far) and then
// syncs the lower Backend. If that fails, a MARK entry
// "flushvm-sync-failed" follows, so a replay can tell.
func (l *WriteLog) Sync() error {
	if err := l.sticky(); err != nil {
		return err
	}
	if err := l.append(WriteLogFlush, 0, 0, nil, ""); err != nil {
		return err
	}
	if err := l.lower.Sync(); err != nil {
		if merr := l.Mark("flushvm-sync-failed"); merr != nil {
			return errors.Join(err, merr)
		}
		return err
	}
	return nil
}

// Mark logs a MARK entry named text (at most MaxWriteLogMark bytes), as
// `dmsetup message ... mark` does; replay-log --end-mark finds it.
func (l *WriteLog) Mark(text string) error {
	if len(text) > MaxWriteLogMark {
		return fmt.Errorf("blk: write log mark of %d bytes, at most %d", len(text), MaxWriteLogMark)
	}
	if err := l.sticky(); err != nil {
		return err
	}
	return l.append(WriteLogMark, 0, 0, nil, text)
}

// Flushes returns the number of FLUSH entries logged.
func (l *WriteLog) Flushes() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.flushes
}

// Close writes the final entry count, syncs and closes the log file, and
// closes the lower Backend (without syncing it).
func (l *WriteLog) Close() error {
	l.mu.Lock()
	err := l.err
	if err == nil {
		err = l.writeSuper()
	}
	if err == nil {
		if serr := l.f.Sync(); serr != nil {
			err = fmt.Errorf("%w: sync: %v", ErrWriteLog, serr)
		}
	}
	l.mu.Unlock()
	if cerr := l.f.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("%w: close: %v", ErrWriteLog, cerr)
	}
	if cerr := l.lower.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

func (l *WriteLog) sticky() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// append logs one entry. For a write, v holds the data, or v is nil for a
// write of zeroes (left as a hole).
func (l *WriteLog) append(flags uint64, off, n int64, v *Vec, mark string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	if off%WriteLogSectorSize != 0 || n%WriteLogSectorSize != 0 {
		return fmt.Errorf("blk: write log: [%d, +%d) is not sector-aligned", off, n)
	}
	b := l.block[:]
	clear(b)
	binary.LittleEndian.PutUint64(b[0:], uint64(off/WriteLogSectorSize))
	binary.LittleEndian.PutUint64(b[8:], uint64(n/WriteLogSectorSize))
	binary.LittleEndian.PutUint64(b[16:], flags)
	binary.LittleEndian.PutUint64(b[24:], uint64(len(mark)))
	copy(b[writeLogEntryHeader:], mark)
	pos := l.next
	if _, err := l.f.WriteAt(b, pos); err != nil {
		return l.fail("entry", err)
	}
	pos += WriteLogSectorSize
	hasData := flags&(WriteLogDiscard|WriteLogMark) == 0 && n > 0
	if hasData && v != nil {
		for _, buf := range v.Bufs {
			if _, err := l.f.WriteAt(buf, pos); err != nil {
				return l.fail("data", err)
			}
			pos += int64(len(buf))
		}
	} else if hasData {
		pos += n // zeroes: a hole
	}
	if pos > l.size {
		if v == nil && hasData {
			if err := l.f.Truncate(pos); err != nil {
				return l.fail("extend", err)
			}
		}
		l.size = pos
	}
	l.next = pos
	l.entries++
	if flags&WriteLogFlush != 0 {
		l.flushes++
	}
	if flags&(WriteLogFlush|WriteLogMark) != 0 {
		// Keep the count on disk current at every flush and mark.
		if err := l.writeSuper(); err != nil {
			return err
		}
	}
	return nil
}

// writeSuper writes the super block. l.mu is held (or l is not shared
// yet).
func (l *WriteLog) writeSuper() error {
	b := l.block[:]
	clear(b)
	binary.LittleEndian.PutUint64(b[0:], writeLogMagic)
	binary.LittleEndian.PutUint64(b[8:], writeLogVersion)
	binary.LittleEndian.PutUint64(b[16:], l.entries)
	binary.LittleEndian.PutUint32(b[24:], WriteLogSectorSize)
	if _, err := l.f.WriteAt(b, 0); err != nil {
		return l.fail("super block", err)
	}
	return nil
}

func (l *WriteLog) fail(what string, err error) error {
	l.err = fmt.Errorf("%w: %s: %v", ErrWriteLog, what, err)
	return l.err
}

var _ Backend = (*WriteLog)(nil)
