package disk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/internal/atomicfile"
	"github.com/flushvm/flushvm/protocol"
)

// Disk is one --disk of a machine with the layers under its device.
type Disk struct {
	// Dev is the virtio-blk device.
	Dev *blk.Device
	// cache is the power-cut model (powercut= disks only).
	cache *blk.VolatileCache
	// log is the --write-log layer (on the disk --write-log names).
	log     *blk.WriteLog
	logPath string
	// crash is the crash state backend (crashstates= disks only).
	crash *blk.CrashStateBackend
	// faults is the fault-injection layer (every disk but crashstates=).
	faults *blk.FaultBackend
	// diag receives what ConsoleLine could not do (nil: dropped).
	diag io.Writer
	// Cut is what the power cut did to this disk (after a cut).
	Cut *PowerCutStats
}

// DiskStats is one disk's entry in the --stats document and GET /stats:
// blk.Stats plus, for power-cut disks, the model's counters and the cut's
// report (additive fields: the blk.Stats names stay as they are).
type DiskStats struct {
	blk.Stats
	// VolatileCache are the power-cut model's counters (powercut= disks).
	VolatileCache *blk.VolatileCacheStats `json:"volatile_cache,omitempty"`
	// PowerCut says what the cut did (after a power cut).
	PowerCut *PowerCutStats `json:"power_cut,omitempty"`
	// Faults are the fault layer's rules, counters and losses (disks
	// with fault rules, now or earlier in the run).
	Faults *blk.FaultStats `json:"faults,omitempty"`
}

// PowerCutStats is the "power_cut" object of a disk in --stats.
type PowerCutStats struct {
	// Cause says what cut the power: the trigger and the call it fired on,
	// or the API.
	Cause string `json:"cause"`
	// CompletedFlushes is the number of flushes the disk completed before
	// the cut: `flushvm replay --flush` takes it.
	CompletedFlushes uint64 `json:"completed_flushes"`
	// Destaged is the number of writes the cache made stable early to
	// respect --cache-bound; when it is 0 a replay of the write log
	// rebuilds the image exactly.
	Destaged uint64 `json:"destaged"`
	// WriteLog is the --write-log file of this disk, if any.
	WriteLog string `json:"write_log,omitempty"`
	// Replay is the command that rebuilds the crash image from the write
	// log (BASE: the image as it was before the run).
	Replay string `json:"replay,omitempty"`
	// Report lists every unstable write and its fate.
	Report *blk.PowerCutReport `json:"report"`
	// Error is set when applying the cut failed (the image is then
	// partially restored).
	Error string `json:"error,omitempty"`
}

// Stats is the whole --stats document (and GET /stats); its schema is
// protocol/schema/stats.schema.json.
type Stats struct {
	// Schema is protocol.StatsSchema; FlushvmVersion the binary that
	// wrote the document (both set by NewStats).
	Schema         int         `json:"schema"`
	FlushvmVersion string      `json:"flushvm_version"`
	Disks          []DiskStats `json:"disks"`
}

// NewStats is the stats document of the disks' entries.
func NewStats(disks ...DiskStats) Stats {
	if disks == nil {
		disks = []DiskStats{}
	}
	return Stats{Schema: protocol.StatsSchema, FlushvmVersion: protocol.Version(), Disks: disks}
}

// Options are how Open builds a disk's stack.
type Options struct {
	// WriteLog is the --write-log file recording this disk ("": none).
	WriteLog string
	// CacheBound is --cache-bound: the most unstable bytes the volatile
	// cache keeps (0: its default).
	CacheBound int64
	// Supply is the machine's power supply; a powercut= disk joins it
	// (nil: no power cuts).
	Supply *PowerSupply
	// Device are the device's own options (queues, ring size).
	Device blk.Options
	// Diag receives the errors of ConsoleLine's actions, one line each
	// (nil: dropped).
	Diag io.Writer
	// Seed seeds the fault rules' prob= draws (--seed).
	Seed uint64
}

// Open opens the disk sp describes: device -> [cut layer] -> fault layer
// -> [write log] -> [volatile cache] -> file, or, for a crashstates= disk,
// device -> crash state backend -> file (read-only). The fault layer is
// there on every other disk, so rules can be set at run time; without
// rules it passes every call through.
func Open(sp blk.Spec, o Options) (*Disk, error) {
	logPath, bound, ps := o.WriteLog, o.CacheBound, o.Supply
	if sp.CrashStates != "" {
		return openCrashStates(sp, o)
	}
	var rules []blk.FaultRule
	if sp.Faults != "" {
		var err error
		if rules, err = blk.ReadFaultRules(sp.Faults); err != nil {
			return nil, err
		}
	}
	direct := sp.Cache == blk.CacheNone || sp.Cache == blk.CacheDirectSync
	fb, err := blk.OpenFile(sp.Path, blk.FileOptions{ReadOnly: sp.ReadOnly, Direct: direct, NoLock: sp.NoLock})
	if err != nil {
		return nil, err
	}
	d := &Disk{logPath: logPath, diag: o.Diag}
	var b blk.Backend = fb
	if sp.HasPowerCut() {
		c, err := blk.NewVolatileCache(b, blk.VolatileCacheOptions{MaxUnstableBytes: bound})
		if err != nil {
			fb.Close()
			return nil, err
		}
		d.cache, b = c, c
	}
	if logPath != "" {
		l, err := blk.CreateWriteLog(b, logPath)
		if err != nil {
			b.Close()
			return nil, err
		}
		d.log, b = l, l
	}
	if d.faults, err = blk.NewFaultBackend(b, rules, o.Seed); err != nil {
		b.Close()
		return nil, err
	}
	b = d.faults
	if d.log != nil {
		d.faults.SetMarker(d.log.Mark)
	}
	if sp.HasPowerCut() && ps != nil {
		ps.caches = append(ps.caches, d.cache)
		b = ps.wire(b)
	}
	dopts := o.Device
	dopts.Backend = b
	if d.Dev, err = blk.Open(sp, dopts); err != nil {
		return nil, err
	}
	return d, nil
}

// openCrashStates opens a crashstates= disk: its path, the base image,
// read-only (with a shared lock unless locking=off), under a
// CrashStateBackend showing the set's states; the device itself is
// writable (the guest's writes stay in the backend's memory).
func openCrashStates(sp blk.Spec, o Options) (*Disk, error) {
	if o.WriteLog != "" {
		return nil, fmt.Errorf("a crashstates= disk has no write log (its writes are dropped at each state)")
	}
	set, err := blk.ReadCrashStateSet(sp.CrashStates)
	if err != nil {
		return nil, err
	}
	fb, err := blk.OpenFile(sp.Path, blk.FileOptions{ReadOnly: true, NoLock: sp.NoLock})
	if err != nil {
		return nil, err
	}
	cb, err := blk.NewCrashStateBackend(fb, set)
	if err != nil {
		fb.Close()
		return nil, err
	}
	dopts := o.Device
	dopts.Backend = cb
	dev, err := blk.Open(sp, dopts)
	if err != nil {
		return nil, err
	}
	return &Disk{Dev: dev, crash: cb, diag: o.Diag}, nil
}

// CrashStates returns the crash state backend of a crashstates= disk (nil
// for other disks).
func (d *Disk) CrashStates() *blk.CrashStateBackend { return d.crash }

// ConsoleLine acts on one line the guest printed on its console (see
// vmm.Config.ConsoleLine, which calls it on the vCPU that printed it,
// before the guest goes on):
//
//   - On the disk with the write log, an acknowledgement line
//     (protocol.IsAckLine: its key bounded so the line fits) becomes a
//     MARK entry whose text is the trimmed line. The mark's place in the log
//     is exact: a guest prints an ACK only after its fdatasync returned,
//     that is after the flush request completed; WriteLog.Sync appends
//     the FLUSH entry before the device completes the flush; the mark is
//     appended here, inside the guest's OUT to the UART's transmit
//     register, which the guest executes after it saw the completion; both
//     appends take the log's mutex. Threads included: the device's I/O
//     goroutine appends the FLUSH (under the mutex) before it publishes the
//     used-ring entry and injects the interrupt (a KVM ioctl), and the vCPU
//     that reads the completion, and later the vCPU that transmits the ACK
//     (the guest's tty may send it from another CPU's interrupt), run after
//     that; the transmit exits to this goroutine, which takes the same
//     mutex. So the MARK lands after the FLUSH, and after every write that
//     flush covered. The guest's tty can only delay the mark, never advance
//     it, and a later mark only expects less. Writes from other vCPUs
//     completing meanwhile may land on either side of the mark, which only
//     weakens what the mark asserts (those writes were not acknowledged),
//     never falsifies it.
//   - On a crashstates= disk, protocol.CrashCheckNext I selects state I
//     (blk.CrashStateBackend.Select); a state that cannot be built shows
//     as protocol.CrashStateErrorSerial to the guest.
//
// Errors go to Options.Diag; the guest goes on either way.
func (d *Disk) ConsoleLine(line []byte) {
	if d.log != nil && protocol.IsAckLine(line) {
		text := bytes.TrimSpace(line)
		if err := d.log.Mark(string(text)); err != nil {
			d.diagf("write log: mark %q: %v", text, err)
		}
	}
	if d.crash != nil {
		if i, ok := protocol.ParseCrashCheckNext(line); ok {
			if err := d.crash.Select(i); err != nil {
				d.diagf("crash state %d: %v", i, err)
			}
		}
	}
}

// diagf writes one diagnostic line about the disk.
func (d *Disk) diagf(format string, a ...any) {
	if d.diag != nil {
		fmt.Fprintf(d.diag, "flushvm: disk %s: %s\n", d.Dev.Spec().Path, fmt.Sprintf(format, a...))
	}
}

// Stats returns the disk's --stats entry.
func (d *Disk) Stats() DiskStats {
	s := DiskStats{Stats: d.Dev.Stats(), PowerCut: d.Cut}
	if d.faults != nil {
		if fs := d.faults.Stats(); len(fs.Rules) > 0 || len(fs.Losses) > 0 || len(fs.BadSectors) > 0 {
			s.Faults = &fs
		}
	}
	if d.cache != nil {
		cs := d.cache.Stats()
		s.VolatileCache = &cs
	}
	return s
}

// PowerCut applies the disk's policy after the machine stopped, marks the
// write log, and records the result in d.Cut.
func (d *Disk) PowerCut(cause string, seed uint64) (*blk.PowerCutReport, error) {
	if d.cache == nil {
		return nil, nil
	}
	st := d.cache.Stats()
	pol := d.Dev.Spec().PowerCut
	rep, err := d.cache.PowerCut(pol, seed)
	d.Cut = &PowerCutStats{
		Cause:            cause,
		CompletedFlushes: st.Syncs,
		Destaged:         st.Destaged,
		Report:           rep,
	}
	if err != nil {
		d.Cut.Error = err.Error()
	}
	if d.log != nil {
		d.Cut.WriteLog = d.logPath
		d.Cut.Replay = ReplayCommandLine(d.logPath, st.Syncs, pol, seed)
		if merr := d.log.Mark(protocol.PowerCutMark); merr != nil {
			err = errors.Join(err, fmt.Errorf("write log mark: %w", merr))
		}
	}
	return rep, err
}

// ReplayCommandLine is the flushvm replay command that rebuilds the crash
// image from the write log: every write after the last completed flush is
// unstable (--to-end: a flush in flight at the cut covered nothing).
func ReplayCommandLine(logPath string, flushes uint64, pol blk.PowerCutPolicy, seed uint64) string {
	return fmt.Sprintf("flushvm replay --log %s --base BASE --out crash.img --flush %d --to-end --policy %s --seed %d",
		ShellQuote(logPath), flushes, pol, seed)
}

// Summary is the one-line account of a cut; the command that prints it
// puts its own prefix before it.
func (d *Disk) Summary(name string) string {
	c := d.Cut
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", name, c.Cause)
	if c.Report != nil {
		fmt.Fprintf(&b, "; %s", c.Report.Summary())
	}
	if c.Error != "" {
		fmt.Fprintf(&b, "; FAILED: %s", c.Error)
	}
	if c.Replay != "" {
		fmt.Fprintf(&b, "; rebuild (BASE = the image before this run): %s", c.Replay)
		if c.Destaged > 0 {
			fmt.Fprintf(&b, " (inexact: %d writes destaged early by --cache-bound)", c.Destaged)
		}
	} else {
		b.WriteString("; no --write-log, so no replay")
	}
	return b.String()
}

// ShellQuote quotes s for a POSIX shell when it needs it.
func ShellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Collect returns the stats document of disks.
func Collect(disks []*Disk) Stats {
	doc := NewStats(make([]DiskStats, 0, len(disks))...)
	for _, d := range disks {
		doc.Disks = append(doc.Disks, d.Stats())
	}
	return doc
}

// WriteStats writes doc to path atomically: a reader (a harness polling
// the file) never sees half a document.
func WriteStats(path string, doc Stats) error {
	if err := atomicfile.WriteJSON(path, doc); err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	return nil
}

// HasPowerCut reports whether the disk has the power-cut model
// (powercut=), so a power cut has something to decide about it.
func (d *Disk) HasPowerCut() bool { return d.cache != nil }

// ErrNoFaultLayer reports fault rules asked of a disk without the fault
// layer (a crashstates= disk).
var ErrNoFaultLayer = errors.New("this disk has no fault layer (crashstates= disks have none)")

// SetFaultRules replaces the disk's fault rules (blk.FaultBackend.SetRules).
func (d *Disk) SetFaultRules(rules []blk.FaultRule) error {
	if d.faults == nil {
		return ErrNoFaultLayer
	}
	return d.faults.SetRules(rules)
}

// FaultStats returns the fault layer's rules, counters and losses.
func (d *Disk) FaultStats() (blk.FaultStats, error) {
	if d.faults == nil {
		return blk.FaultStats{}, ErrNoFaultLayer
	}
	return d.faults.Stats(), nil
}

// HasStopPolicy reports whether an error policy of the disk can hold
// requests (werror=stop or enospc, rerror=stop).
func HasStopPolicy(sp blk.Spec) bool {
	return sp.WError == blk.ErrorStop || sp.WError == blk.ErrorENOSPC || sp.RError == blk.ErrorStop
}
