package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/flushvm/flushvm/internal/fuzzseed"
)

// The write-log fuzz targets take a log packed to fuzzLogStride bytes per
// block (of the sector size the super block names, when it names a valid
// one, else 512 bytes): input bytes [32i, 32i+32) are the start of block i
// and the rest of the block is zero. Everything the reader parses (the super
// block, the 32-byte entry headers) sits at the start of a block, so
// nothing is lost but the tail of data sectors and of mark text, while a
// real log of a dozen entries packs into a few hundred bytes. That size is
// what keeps the fuzzer moving: Go minimises each new input by trying to
// drop every subset of its bytes, quadratic in its length, and with
// unpacked logs (kilobytes of zero padding) FuzzWriteLogReplay spent the
// whole minimisation budget on one input at 0 execs/s.
const (
	fuzzLogStride = 32
	// maxFuzzLog bounds an unpacked log, so the mutator cannot make one
	// execution slow.
	maxFuzzLog = 256 << 10
	// fuzzImageSize is the disk the fuzzed replays write to.
	fuzzImageSize = 64 << 10
)

// fuzzLogBlock returns the block size a packed log unpacks to: the sector
// size in its super block if valid, else 512.
func fuzzLogBlock(packed []byte) int {
	if len(packed) < 28 {
		return WriteLogSectorSize
	}
	ss := int(binary.LittleEndian.Uint32(packed[24:]))
	if ss < WriteLogSectorSize || ss > 64<<10 || ss&(ss-1) != 0 {
		return WriteLogSectorSize
	}
	return ss
}

// expandFuzzLog unpacks a fuzz input into a log, or returns nil when the
// log would be longer than maxFuzzLog.
func expandFuzzLog(packed []byte) []byte {
	bs := fuzzLogBlock(packed)
	blocks := (len(packed) + fuzzLogStride - 1) / fuzzLogStride
	if blocks*bs > maxFuzzLog {
		return nil
	}
	log := make([]byte, blocks*bs)
	for i := 0; i < blocks; i++ {
		copy(log[i*bs:], packed[i*fuzzLogStride:min(len(packed), (i+1)*fuzzLogStride)])
	}
	return log
}

// packFuzzLog packs a log (a whole number of blocks) into a fuzz input.
func packFuzzLog(log []byte) []byte {
	var packed []byte
	bs := fuzzLogBlock(log)
	for i := 0; i < len(log); i += bs {
		packed = append(packed, log[i:i+fuzzLogStride]...)
	}
	return packed
}

// FuzzWriteLogReplay: any packed log gives entries or a typed error, never
// a panic; a replay never writes outside the image; a refused replay
// leaves the image untouched and CheckWriteLogReplay refuses it too; the
// report accounts for every unstable write and every byte of it.
func FuzzWriteLogReplay(f *testing.F) {
	pols := allTestPolicies()
	f.Fuzz(func(t *testing.T, packed []byte, flush uint64, pol uint8) {
		log := expandFuzzLog(packed)
		if log == nil {
			return
		}
		lr, err := NewWriteLogReader(bytes.NewReader(log))
		if err != nil {
			if !errors.Is(err, ErrBadWriteLog) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		o := ReplayOptions{Flush: flush % 4, Policy: pols[int(pol&0x7f)%len(pols)], Seed: flush, ToEnd: pol&0x80 != 0}
		checkErr := CheckWriteLogReplay(lr, fuzzImageSize, o)
		img := newMemBackend(fuzzImageSize)
		rep, err := ReplayWriteLog(lr, img, o)
		if err != nil && !errors.Is(err, ErrBadWriteLog) && !errors.Is(err, ErrNoSuchFlush) {
			t.Fatalf("untyped error %v", err)
		}
		if (err == nil) != (checkErr == nil) {
			t.Fatalf("check says %v, replay %v", checkErr, err)
		}
		if err != nil {
			if !allZero(img.data) {
				t.Fatalf("refused replay (%v) changed the image", err)
			}
			return
		}
		if err := checkReport(rep, lr.Entries()); err != nil {
			t.Fatal(err)
		}
	})
}

// checkReport checks that rep accounts for each of its writes and bytes.
func checkReport(rep *PowerCutReport, entries uint64) error {
	if rep.Unstable != len(rep.Writes) || uint64(rep.Unstable) > entries || rep.Kept+rep.Torn+rep.Lost != rep.Unstable {
		return fmt.Errorf("report counts: %s (%d entries)", rep.Summary(), entries)
	}
	var total int64
	for _, w := range rep.Writes {
		total += w.Length
		if err := checkGrain(w, w.Offset, 1); err != nil {
			return err
		}
	}
	if rep.KeptBytes+rep.LostBytes != total || rep.KeptBytes < 0 || rep.LostBytes < 0 {
		return fmt.Errorf("report bytes: %s, writes cover %d", rep.Summary(), total)
	}
	return nil
}

// writeLogFuzzSeed is one input of the committed seed corpus.
type writeLogFuzzSeed struct {
	name   string
	log    []byte // unpacked
	flush  uint64
	policy uint8
}

// writeLogFuzzSeeds builds the seed corpus: logs written by the package's
// WriteLog (byte for byte what Linux's dm-log-writes writes, as
// TestWriteLogMatchesLinux checks) for small workloads that reach every
// kind of entry, and a log in the shape Linux writes with 4 KiB sectors.
func writeLogFuzzSeeds(t *testing.T) []writeLogFuzzSeed {
	disc := func(off, n int64) pcOp { return pcOp{kind: 'd', off: off, n: n} }
	zero := func(off, n int64) pcOp { return pcOp{kind: 'z', off: off, n: n} }
	workloads := []struct {
		name   string
		ops    []pcOp
		mark   string
		flush  uint64
		policy uint8
	}{
		{"every-entry-kind", []pcOp{w(0, 1024, 1), syncOp, disc(4096, 512), zero(8192, 1024), w(512, 512, 2)}, "m", 1, 3},
		{"flush-windows", []pcOp{w(0, 4096, 1), syncOp, w(4096, 2048, 2), w(0, 512, 3), syncOp, w(8192, 1024, 4), w(2048, 1536, 5)}, "", 1, 5},
		{"overlapping-unstable", []pcOp{w(0, 2048, 1), w(1024, 2048, 2), disc(0, 4096), w(512, 512, 3)}, "", 0, 4},
		{"whole-disk-discards", []pcOp{disc(0, fuzzImageSize), syncOp, disc(0, fuzzImageSize), disc(512, fuzzImageSize-1024)}, "", 1, 3},
		{"sync-failed-mark", []pcOp{w(0, 512, 1), syncOp, w(512, 512, 2)}, "flushvm-sync-failed", 1, 0x82},
		{"to-end", []pcOp{w(0, 512, 1), syncOp, w(512, 1024, 2), syncOp, zero(0, 4096), syncOp, w(60<<10, 4096, 3)}, "dm-log-writes-end", 1, 0x83},
	}
	var seeds []writeLogFuzzSeed
	for _, wl := range workloads {
		path := filepath.Join(t.TempDir(), "log")
		l, err := CreateWriteLog(newPCDisk(fuzzImageSize, 1), path)
		if err != nil {
			t.Fatal(err)
		}
		runOps(t, l, wl.ops)
		if wl.mark != "" {
			if err := l.Mark(wl.mark); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, writeLogFuzzSeed{wl.name, raw, wl.flush, wl.policy})
	}
	return append(seeds, writeLogFuzzSeed{"linux-4k-fua-flush-data", linuxShapedLog(), 1, 0})
}

// linuxShapedLog is a log as Linux writes it on a 4Kn log device: 4 KiB
// sectors, a FUA write, a flush carrying data and a metadata write (as in
// TestReplayLinuxLog, with the data reduced to its first bytes).
func linuxShapedLog() []byte {
	const ss = 4096
	le := binary.LittleEndian
	var log bytes.Buffer
	block := func(words ...uint64) {
		b := make([]byte, ss)
		for i, v := range words {
			le.PutUint64(b[8*i:], v)
		}
		log.Write(b)
	}
	block(writeLogMagic, 1, 5, ss) // sector size in the low half of word 3
	entries := []struct{ sector, nr, flags uint64 }{
		{0, 1, 0}, {1, 1, WriteLogFlush}, {2, 1, WriteLogFUA}, {3, 1, WriteLogMetadata}, {0, 0, WriteLogFlush},
	}
	for i, e := range entries {
		block(e.sector, e.nr, e.flags)
		if e.nr > 0 {
			block(uint64(i+1) * 0x0101010101010101)
		}
	}
	return log.Bytes()
}

// marshalFuzzInput writes the corpus file `go test` reads for one input of
// FuzzWriteLogReplay (internal/fuzz's "go test fuzz v1" encoding).
func marshalFuzzInput(packed []byte, flush uint64, policy uint8) []byte {
	return fuzzseed.Encode(packed, flush, policy)
}

// TestWriteLogFuzzCorpus checks that testdata/fuzz/FuzzWriteLogReplay holds
// the seeds writeLogFuzzSeeds builds, and that each one replays. To
// regenerate them after changing the writer or the seeds:
//
//	FLUSHVM_UPDATE_FUZZ_SEEDS=1 go test -run '^TestWriteLogFuzzCorpus$' ./blk/
func TestWriteLogFuzzCorpus(t *testing.T) {
	pols := allTestPolicies()
	for _, s := range writeLogFuzzSeeds(t) {
		packed := packFuzzLog(s.log)
		lr, err := NewWriteLogReader(bytes.NewReader(expandFuzzLog(packed)))
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		o := ReplayOptions{Flush: s.flush, Policy: pols[int(s.policy&0x7f)%len(pols)], Seed: s.flush, ToEnd: s.policy&0x80 != 0}
		if _, err := ReplayWriteLog(lr, newMemBackend(fuzzImageSize), o); err != nil {
			t.Fatalf("%s: seed does not replay: %v", s.name, err)
		}
		fuzzseed.Check(t, "FuzzWriteLogReplay", "seed-"+s.name, marshalFuzzInput(packed, s.flush, s.policy))
	}
}
