package blk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/flushvm/flushvm/protocol"
)

// ErrCrashWritesFull reports a write to a crash state disk whose private
// writes already hold maxCrashPrivateSectors sectors.
var ErrCrashWritesFull = errors.New("blk: crash state disk: private writes full")

// maxCrashPrivateSectors bounds the private writes of a crash state disk
// (512 MiB of data).
const maxCrashPrivateSectors = (512 << 20) / SectorSize

// CrashStateBackend is the Backend of a crashstates= disk: it shows one
// crash state of a set at a time, over a base image it never writes. A
// checker guest selects state I by printing protocol.FormatCrashCheckNext
// (Select), then reads the state's serial (Serial) through GET_ID.
//
// Reads see the guest's private writes first, then the state's image,
// then the base. Writes, discards and write-zeroes (a mount replaying its
// journal, a checker repairing) go to the private writes, in memory, which
// the next Select drops; beyond 512 MiB of them writes fail (the guest sees
// IOERR). Discard is a hint and does nothing. Sync does nothing: nothing
// here is durable, nor needs to be.
type CrashStateBackend struct {
	base   Backend
	logF   *os.File
	log    *CrashLog
	states []CrashState

	mu      sync.RWMutex
	img     *CrashImage // nil after a Select that failed
	serial  string
	private map[int64][]byte // sector -> its bytes (nil: zeroes)
}

// NewCrashStateBackend opens set.Log, indexes it over base (the image the
// log started from, opened read-only) and checks every state of set. The
// disk shows the base until the first Select. On success the backend owns
// base (Close closes it); on error the caller still does.
func NewCrashStateBackend(base Backend, set *CrashStateSet) (*CrashStateBackend, error) {
	f, err := os.Open(set.Log)
	if err != nil {
		return nil, fmt.Errorf("blk: crash states: write log: %w", err)
	}
	cl, err := newCrashLogFile(f, base)
	if err == nil {
		err = checkStates(cl, set.States)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blk: crash states of %s: %w", set.Log, err)
	}
	return &CrashStateBackend{
		base: base, logF: f, log: cl, states: set.States,
		img: cl.BaseImage(), serial: protocol.CrashStateNoneSerial, private: map[int64][]byte{},
	}, nil
}

func newCrashLogFile(f *os.File, base Backend) (*CrashLog, error) {
	lr, err := NewWriteLogReader(f)
	if err != nil {
		return nil, err
	}
	return NewCrashLog(lr, backendReader{base}, base.Size())
}

func checkStates(cl *CrashLog, states []CrashState) error {
	for i, st := range states {
		if err := cl.Check(st); err != nil {
			return fmt.Errorf("state %d: %w", i, err)
		}
	}
	return nil
}

// backendReader reads a Backend as an io.ReaderAt.
type backendReader struct{ b Backend }

func (r backendReader) ReadAt(p []byte, off int64) (int, error) {
	v := NewVec(1)
	if err := v.Append(p); err != nil {
		return 0, err
	}
	if err := r.b.ReadAt(v, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Select makes the disk show state i, dropping the private writes, and
// sets its serial to protocol.CrashStateSerial(i). When state i cannot be
// built (i out of range, a log read failing), the serial becomes
// protocol.CrashStateErrorSerial and every read and write fails until the
// next Select, so a checker that does not wait for the serial checks
// nothing rather than a wrong disk. It is safe while the device does I/O.
func (b *CrashStateBackend) Select(i int) error {
	var img *CrashImage
	err := fmt.Errorf("%w: state %d of a set of %d", ErrBadCrashState, i, len(b.states))
	if i >= 0 && i < len(b.states) {
		img, err = b.log.Image(b.states[i])
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.private = map[int64][]byte{}
	b.img = img
	if err != nil {
		b.serial = protocol.CrashStateErrorSerial
		return err
	}
	b.serial = protocol.CrashStateSerial(i)
	return nil
}

// Serial is the disk's virtio-blk serial: protocol.CrashStateNoneSerial
// until the first Select, then the selected state's.
func (b *CrashStateBackend) Serial() string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.serial
}

// Size returns the base image's size.
func (b *CrashStateBackend) Size() int64 { return b.base.Size() }

// errNoState is what I/O fails with after a Select failed.
var errNoState = fmt.Errorf("%w: no state selected (the last Select failed)", ErrBadCrashState)

// crashBufPool holds the buffers reads go through (*[]byte).
var crashBufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// ReadAt reads the private writes over the state's image.
func (b *CrashStateBackend) ReadAt(v *Vec, off int64) error {
	if err := b.checkRange(off, v.Len()); err != nil {
		return err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.img == nil {
		return errNoState
	}
	bp := crashBufPool.Get().(*[]byte)
	defer crashBufPool.Put(bp)
	for done := int64(0); done < v.Len(); {
		chunk := (*bp)[:min(int64(len(*bp)), v.Len()-done)]
		if err := b.img.ReadAt(chunk, off+done); err != nil {
			return err
		}
		b.overlay(chunk, off+done)
		v.CopyIn(done, chunk)
		done += int64(len(chunk))
	}
	return nil
}

// overlay copies the private writes into p, the bytes from off. b.mu is
// held.
func (b *CrashStateBackend) overlay(p []byte, off int64) {
	if len(b.private) == 0 {
		return
	}
	s0 := off / SectorSize
	for k := 0; k < len(p); k += SectorSize {
		if data, ok := b.private[s0+int64(k/SectorSize)]; ok {
			sec := p[k : k+SectorSize]
			if data == nil {
				clear(sec)
			} else {
				copy(sec, data)
			}
		}
	}
}

// checkRange checks a request against the contract: sector-aligned and
// inside the disk.
func (b *CrashStateBackend) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off%SectorSize != 0 || n%SectorSize != 0 || n > b.Size()-off {
		return fmt.Errorf("blk: crash state disk: [%d, +%d) is not sector-aligned inside the %d-byte disk", off, n, b.Size())
	}
	return nil
}

// WriteAt records v as private writes.
func (b *CrashStateBackend) WriteAt(v *Vec, off int64) error {
	return b.update(off, v.Len(), func(s int64, k int64) []byte {
		data := b.private[s]
		if data == nil {
			data = make([]byte, SectorSize)
		}
		v.CopyOut(data, k*SectorSize)
		return data
	})
}

// WriteZeroes records zeroes as private writes.
func (b *CrashStateBackend) WriteZeroes(off, n int64, unmap bool) error {
	return b.update(off, n, func(int64, int64) []byte { return nil })
}

// Discard does nothing: a discard is a hint, and the state keeps its data.
func (b *CrashStateBackend) Discard(off, n int64) error { return b.checkRange(off, n) }

// update sets each sector s of [off, off+n), the k-th, to sector(s, k),
// within the bound of private writes.
func (b *CrashStateBackend) update(off, n int64, sector func(s, k int64) []byte) error {
	if err := b.checkRange(off, n); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.img == nil {
		return errNoState
	}
	s0, count := off/SectorSize, n/SectorSize
	added := int64(0)
	for k := range count {
		if _, ok := b.private[s0+k]; !ok {
			added++
		}
	}
	if int64(len(b.private))+added > maxCrashPrivateSectors {
		return fmt.Errorf("%w: [%d, +%d) would exceed %d sectors", ErrCrashWritesFull, off, n, maxCrashPrivateSectors)
	}
	for k := range count {
		b.private[s0+k] = sector(s0+k, k)
	}
	return nil
}

// Sync does nothing: the private writes are never durable.
func (b *CrashStateBackend) Sync() error { return nil }

// Close closes the write log and the base.
func (b *CrashStateBackend) Close() error {
	err := b.logF.Close()
	if berr := b.base.Close(); berr != nil && err == nil {
		err = berr
	}
	if err != nil {
		return fmt.Errorf("blk: close crash state disk: %w", err)
	}
	return nil
}

var (
	_ Backend     = (*CrashStateBackend)(nil)
	_ io.ReaderAt = backendReader{}
)
