package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/flushvm/flushvm/blk"
)

// disk is one --disk of flushvm run with the layers under its device.
type disk struct {
	dev *blk.Device
	// cache is the power-cut model (powercut= disks only).
	cache *blk.VolatileCache
	// log is the --write-log layer (on the disk --write-log names).
	log     *blk.WriteLog
	logPath string
	// cut is what the power cut did to this disk (after a cut).
	cut *powerCutStats
}

// diskStats is one disk's entry in the --stats document and GET /stats:
// blk.Stats plus, for power-cut disks, the model's counters and the cut's
// report (additive fields: the blk.Stats names stay as they are).
type diskStats struct {
	blk.Stats
	// VolatileCache are the power-cut model's counters (powercut= disks).
	VolatileCache *blk.VolatileCacheStats `json:"volatile_cache,omitempty"`
	// PowerCut says what the cut did (after a power cut).
	PowerCut *powerCutStats `json:"power_cut,omitempty"`
}

// powerCutStats is the "power_cut" object of a disk in --stats.
type powerCutStats struct {
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

// statsDoc is the whole --stats document.
type statsDoc struct {
	Disks []diskStats `json:"disks"`
}

// openDisk opens the disk sp describes: device -> [cut layer] -> [write
// log] -> [volatile cache] -> file. ps is nil when no disk has powercut=.
func openDisk(sp blk.Spec, logPath string, bound int64, ps *powerSupply) (*disk, error) {
	needStack := sp.HasPowerCut() || logPath != ""
	if !needStack {
		dev, err := blk.Open(sp, blk.Options{})
		if err != nil {
			return nil, err
		}
		return &disk{dev: dev}, nil
	}
	direct := sp.Cache == blk.CacheNone || sp.Cache == blk.CacheDirectSync
	fb, err := blk.OpenFile(sp.Path, blk.FileOptions{ReadOnly: sp.ReadOnly, Direct: direct})
	if err != nil {
		return nil, err
	}
	d := &disk{logPath: logPath}
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
	if sp.HasPowerCut() && ps != nil {
		ps.caches = append(ps.caches, d.cache)
		b = ps.wire(b)
	}
	if d.dev, err = blk.Open(sp, blk.Options{Backend: b}); err != nil {
		return nil, err
	}
	return d, nil
}

// stats returns the disk's --stats entry.
func (d *disk) stats() diskStats {
	s := diskStats{Stats: d.dev.Stats(), PowerCut: d.cut}
	if d.cache != nil {
		cs := d.cache.Stats()
		s.VolatileCache = &cs
	}
	return s
}

// powerCut applies the disk's policy after the machine stopped, marks the
// write log, and records the result in d.cut.
func (d *disk) powerCut(cause string, seed uint64) (*blk.PowerCutReport, error) {
	if d.cache == nil {
		return nil, nil
	}
	st := d.cache.Stats()
	pol := d.dev.Spec().PowerCut
	rep, err := d.cache.PowerCut(pol, seed)
	d.cut = &powerCutStats{
		Cause:            cause,
		CompletedFlushes: st.Syncs,
		Destaged:         st.Destaged,
		Report:           rep,
	}
	if err != nil {
		d.cut.Error = err.Error()
	}
	if d.log != nil {
		d.cut.WriteLog = d.logPath
		d.cut.Replay = replayCommandLine(d.logPath, st.Syncs, pol, seed)
		if merr := d.log.Mark(powerCutMark); merr != nil {
			err = errors.Join(err, fmt.Errorf("write log mark: %w", merr))
		}
	}
	return rep, err
}

// replayCommandLine is the flushvm replay command that rebuilds the crash
// image from the write log: every write after the last completed flush is
// unstable (--to-end: a flush in flight at the cut covered nothing).
func replayCommandLine(logPath string, flushes uint64, pol blk.PowerCutPolicy, seed uint64) string {
	return fmt.Sprintf("flushvm replay --log %s --base BASE --out crash.img --flush %d --to-end --policy %s --seed %d",
		shellQuote(logPath), flushes, pol, seed)
}

// summary is the one-line account of a cut printed on stderr.
func (d *disk) summary(name string) string {
	c := d.cut
	var b strings.Builder
	fmt.Fprintf(&b, "flushvm: %s: %s", name, c.Cause)
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

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// writeStatsDoc writes doc as the --stats file.
func writeStatsDoc(path string, doc statsDoc) error {
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("--stats: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return userErrorf("--stats: %v", fileError(err))
	}
	return nil
}

// collectStats returns the stats document of disks.
func collectStats(disks []*disk) statsDoc {
	doc := statsDoc{Disks: make([]diskStats, 0, len(disks))}
	for _, d := range disks {
		doc.Disks = append(doc.Disks, d.stats())
	}
	return doc
}
