package blk

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
)

// PowerCutKind names a rule that decides which unstable writes reach the
// disk when the power is cut.
type PowerCutKind string

// The power-cut policies. Each is deterministic from the seed.
const (
	// PowerCutLoseAll loses every unstable write: the disk holds exactly
	// what completed flushes made durable (the strictest adversary).
	PowerCutLoseAll PowerCutKind = "lose-all"
	// PowerCutKeepAll keeps every unstable write, as if the cache had been
	// destaged just before the cut.
	PowerCutKeepAll PowerCutKind = "keep-all"
	// PowerCutRandomSubset keeps each unstable write whole or loses it
	// whole, independently, with probability 1/2.
	PowerCutRandomSubset PowerCutKind = "random-subset"
	// PowerCutRandomSectors keeps each atomic unit (AtomicUnit bytes,
	// aligned on the disk) of each unstable write independently with
	// probability 1/2, so multi-unit writes may be torn. Very long writes
	// and discards are torn at coarser, unit-aligned pieces (see
	// MaxTearPieces and MaxDiscardTearPieces), so the work and the report
	// of a cut stay bounded by the number of writes.
	PowerCutRandomSectors PowerCutKind = "random-sectors"
	// PowerCutPrefix keeps the first k unstable writes in submission order
	// and loses the rest, k uniform in [0, number of unstable writes].
	PowerCutPrefix PowerCutKind = "prefix"
)

// PowerCutKinds lists every policy kind.
var PowerCutKinds = []PowerCutKind{PowerCutLoseAll, PowerCutKeepAll, PowerCutRandomSubset, PowerCutRandomSectors, PowerCutPrefix}

// Bounds on how finely random-sectors tears one write. A discard carries
// no data, in a write log or in the model, so its length is a claim that
// costs the writer nothing: tearing it per unit would let a 512-byte log
// entry cost a draw, an extent and a report row per sector of the disk.
// Written data is already paid for in the log, but a write of zeroes is a
// hole there, so writes get a bound too, far above any real request.
const (
	// MaxTearPieces is the most pieces random-sectors tears a write or a
	// write-zeroes into: a write of more atomic units is torn at groups of
	// consecutive units, the fewest per group that keep the pieces within
	// the bound (8192 units: 4 MiB at 512 B, 32 MiB at 4 KiB).
	MaxTearPieces = 8192
	// MaxDiscardTearPieces is the same bound for a discard.
	MaxDiscardTearPieces = 16
)

// Atomic units random-sectors can tear at.
const (
	// AtomicUnit512 tears at 512-byte sectors (a 512n disk).
	AtomicUnit512 = 512
	// AtomicUnit4K tears at 4 KiB physical sectors (a 4Kn or 512e disk).
	AtomicUnit4K = 4096
)

// ErrBadPowerCutPolicy reports a power-cut policy that cannot be parsed or
// is not valid.
var ErrBadPowerCutPolicy = errors.New("bad power-cut policy")

// PowerCutPolicy decides which unstable writes survive a power cut.
type PowerCutPolicy struct {
	// Kind is the rule.
	Kind PowerCutKind
	// AtomicUnit is the size in bytes of the unit a write can be torn at
	// (512 or 4096); only random-sectors uses it, and 0 there means 512.
	AtomicUnit int64
}

// ParsePowerCutPolicy parses a policy as written on the command line and in
// the powercut= disk SPEC key: lose-all, keep-all, random-subset, prefix,
// random-sectors (tears at 512 B), random-sectors:512, random-sectors:4k
// (or :4096). The text has no commas or '=' so it fits inside a SPEC.
func ParsePowerCutPolicy(s string) (PowerCutPolicy, error) {
	name, unit, hasUnit := strings.Cut(s, ":")
	for _, k := range PowerCutKinds {
		if string(k) != name {
			continue
		}
		p := PowerCutPolicy{Kind: k}
		if k != PowerCutRandomSectors {
			if hasUnit {
				return PowerCutPolicy{}, fmt.Errorf("%w %q: only random-sectors takes an atomic unit", ErrBadPowerCutPolicy, s)
			}
			return p, nil
		}
		p.AtomicUnit = AtomicUnit512
		if hasUnit {
			switch strings.ToLower(unit) {
			case "512", "512b":
				p.AtomicUnit = AtomicUnit512
			case "4k", "4096", "4kib":
				p.AtomicUnit = AtomicUnit4K
			default:
				return PowerCutPolicy{}, fmt.Errorf("%w %q: atomic unit %q, want 512 or 4k", ErrBadPowerCutPolicy, s, unit)
			}
		}
		return p, nil
	}
	return PowerCutPolicy{}, fmt.Errorf("%w %q (want lose-all, keep-all, random-subset, random-sectors[:512|:4k] or prefix)", ErrBadPowerCutPolicy, s)
}

// String returns the policy in the form ParsePowerCutPolicy reads.
func (p PowerCutPolicy) String() string {
	if p.Kind == PowerCutRandomSectors {
		if p.unit() == AtomicUnit4K {
			return string(p.Kind) + ":4k"
		}
		return string(p.Kind) + ":512"
	}
	return string(p.Kind)
}

// Validate reports whether p is a policy PowerCut can apply.
func (p PowerCutPolicy) Validate() error {
	for _, k := range PowerCutKinds {
		if k == p.Kind {
			if k == PowerCutRandomSectors {
				if u := p.unit(); u != AtomicUnit512 && u != AtomicUnit4K {
					return fmt.Errorf("%w: atomic unit %d, want 512 or 4096", ErrBadPowerCutPolicy, p.AtomicUnit)
				}
			}
			return nil
		}
	}
	return fmt.Errorf("%w: unknown kind %q", ErrBadPowerCutPolicy, p.Kind)
}

func (p PowerCutPolicy) unit() int64 {
	if p.AtomicUnit == 0 {
		return AtomicUnit512
	}
	return p.AtomicUnit
}

// Extent is a byte range of the disk.
type Extent struct {
	// Offset is the first byte.
	Offset int64 `json:"offset"`
	// Length is the number of bytes.
	Length int64 `json:"length"`
}

// End returns the offset just past e.
func (e Extent) End() int64 { return e.Offset + e.Length }

// Fates of an unstable write at a power cut.
const (
	// FateKept: every byte of the write reached the disk.
	FateKept = "kept"
	// FateTorn: some atomic units reached the disk, others did not.
	FateTorn = "torn"
	// FateLost: none of the write reached the disk.
	FateLost = "lost"
)

// Names of the operations a power-cut report lists.
const (
	// OpWrite is a WriteAt (or, in a write log, any write with data).
	OpWrite = "write"
	// OpDiscard is a Discard.
	OpDiscard = "discard"
	// OpWriteZeroes is a WriteZeroes.
	OpWriteZeroes = "write-zeroes"
)

// PowerCutWrite is what happened to one unstable write at a power cut.
type PowerCutWrite struct {
	// Seq numbers the write in submission order (the model's sequence
	// number, or the entry index in a write log).
	Seq uint64 `json:"seq"`
	// Op is write, discard or write-zeroes.
	Op string `json:"op"`
	// Offset and Length are the bytes the write covered.
	Offset int64 `json:"offset"`
	// Length is the write's size in bytes.
	Length int64 `json:"length"`
	// Fate is kept, torn or lost.
	Fate string `json:"fate"`
	// Kept lists, for a torn write, the byte ranges that reached the disk.
	Kept []Extent `json:"kept,omitempty"`
}

// PowerCutReport says what a power cut did. It is JSON-serialisable and
// is the record a campaign keeps of each cut.
type PowerCutReport struct {
	// Policy is the policy in ParsePowerCutPolicy form.
	Policy string `json:"policy"`
	// Seed is the seed the policy drew from.
	Seed uint64 `json:"seed"`
	// Unstable is the number of writes not covered by a completed flush.
	Unstable int `json:"unstable_writes"`
	// Kept, Torn and Lost count writes by fate.
	Kept int `json:"kept"`
	// Torn counts writes of which only some units survived.
	Torn int `json:"torn"`
	// Lost counts writes of which nothing survived.
	Lost int `json:"lost"`
	// KeptBytes and LostBytes sum the bytes that did and did not survive.
	KeptBytes int64 `json:"kept_bytes"`
	// LostBytes sums the bytes of unstable writes that did not survive.
	LostBytes int64 `json:"lost_bytes"`
	// Writes lists every unstable write in submission order.
	Writes []PowerCutWrite `json:"writes"`
}

// Summary is the one-line account of the cut for a terminal.
func (r *PowerCutReport) Summary() string {
	return fmt.Sprintf("power cut (%s, seed %d): %d unstable writes: %d kept, %d torn, %d lost (%d bytes kept, %d bytes lost)",
		r.Policy, r.Seed, r.Unstable, r.Kept, r.Torn, r.Lost, r.KeptBytes, r.LostBytes)
}

// planPowerCut decides the fate of each unstable write (given in submission
// order, Fate and Kept unset) under p with seed, fills them in, and returns
// the report. The random draws depend only on the order, offsets and
// lengths of the writes, never on their sequence numbers or data, so the
// model and a replay of its write log decide identically.
func planPowerCut(p PowerCutPolicy, seed uint64, ws []PowerCutWrite) (*PowerCutReport, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	// The stream constant is arbitrary and fixed: it keeps seeds 0 and 1
	// (common choices) from giving related streams.
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	prefix := 0
	if p.Kind == PowerCutPrefix {
		prefix = rng.IntN(len(ws) + 1)
	}
	r := &PowerCutReport{Policy: p.String(), Seed: seed, Unstable: len(ws), Writes: ws}
	for i := range ws {
		w := &ws[i]
		w.Kept = nil
		switch p.Kind {
		case PowerCutLoseAll:
			w.Fate = FateLost
		case PowerCutKeepAll:
			w.Fate = FateKept
		case PowerCutRandomSubset:
			w.Fate = FateLost
			if rng.Uint64()&1 == 1 {
				w.Fate = FateKept
			}
		case PowerCutPrefix:
			w.Fate = FateLost
			if i < prefix {
				w.Fate = FateKept
			}
		case PowerCutRandomSectors:
			tearWrite(w, p.unit(), maxTearPieces(w.Op), rng)
		}
		switch w.Fate {
		case FateKept:
			r.Kept++
			r.KeptBytes += w.Length
		case FateLost:
			r.Lost++
			r.LostBytes += w.Length
		case FateTorn:
			r.Torn++
			var k int64
			for _, e := range w.Kept {
				k += e.Length
			}
			r.KeptBytes += k
			r.LostBytes += w.Length - k
		}
	}
	return r, nil
}

// maxTearPieces returns the bound on the pieces a write of kind op is torn
// into. The model and a replay of its log must agree: a write-zeroes is a
// write in a log, so only discards get the smaller bound.
func maxTearPieces(op string) int64 {
	if op == OpDiscard {
		return MaxDiscardTearPieces
	}
	return MaxTearPieces
}

// tearWrite decides each piece of w and sets w.Fate and, when torn,
// w.Kept. A piece is one atomic unit (units aligned on the disk, so a
// write that starts or ends inside a unit has a partial unit at that edge,
// which is still all-or-nothing) or, when w spans more than maxPieces
// units, a run of consecutive units, so there are at most maxPieces draws
// and at most maxPieces/2+1 kept extents.
func tearWrite(w *PowerCutWrite, unit, maxPieces int64, rng *rand.Rand) {
	first := w.Offset / unit
	units := (w.Offset+w.Length-1)/unit - first + 1
	per := (units + maxPieces - 1) / maxPieces // units per piece
	kept, lost := false, false
	var cur Extent // the kept run being built
	for off := w.Offset; off < w.Offset+w.Length; {
		piece := (off/unit - first) / per
		end := min((first+(piece+1)*per)*unit, w.Offset+w.Length)
		if rng.Uint64()&1 == 1 {
			kept = true
			if cur.Length > 0 && cur.End() == off {
				cur.Length += end - off
			} else {
				if cur.Length > 0 {
					w.Kept = append(w.Kept, cur)
				}
				cur = Extent{Offset: off, Length: end - off}
			}
		} else {
			lost = true
		}
		off = end
	}
	switch {
	case kept && !lost:
		w.Fate, w.Kept = FateKept, nil
	case !kept:
		w.Fate, w.Kept = FateLost, nil
	default:
		w.Fate = FateTorn
		w.Kept = append(w.Kept, cur)
	}
}

// keptExtents returns the ranges of w that survive the cut (nil when lost).
func (w *PowerCutWrite) keptExtents() []Extent {
	switch w.Fate {
	case FateKept:
		return []Extent{{w.Offset, w.Length}}
	case FateTorn:
		return w.Kept
	}
	return nil
}

// lostExtents returns the ranges of w that do not survive the cut.
func (w *PowerCutWrite) lostExtents() []Extent {
	switch w.Fate {
	case FateLost:
		return []Extent{{w.Offset, w.Length}}
	case FateKept:
		return nil
	}
	var out []Extent
	at := w.Offset
	for _, e := range w.Kept {
		if e.Offset > at {
			out = append(out, Extent{at, e.Offset - at})
		}
		at = e.End()
	}
	if end := w.Offset + w.Length; end > at {
		out = append(out, Extent{at, end - at})
	}
	return out
}

// extentSet is a set of disjoint, sorted, non-adjacent byte ranges. The
// power cut uses it to remember which bytes a newer kept write has already
// decided.
type extentSet struct{ es []Extent }

// add puts e into the set.
func (s *extentSet) add(e Extent) {
	if e.Length <= 0 {
		return
	}
	// First extent that ends at or after e starts (may merge).
	i := searchExtents(s.es, e.Offset)
	j := i
	for j < len(s.es) && s.es[j].Offset <= e.End() {
		lo := min(e.Offset, s.es[j].Offset)
		hi := max(e.End(), s.es[j].End())
		e = Extent{lo, hi - lo}
		j++
	}
	s.es = append(s.es[:i], append([]Extent{e}, s.es[j:]...)...)
}

// gaps calls fn for each part of e not in the set, in order.
func (s *extentSet) gaps(e Extent, fn func(Extent) error) error {
	at := e.Offset
	for i := searchExtents(s.es, e.Offset); i < len(s.es) && s.es[i].Offset < e.End(); i++ {
		if s.es[i].Offset > at {
			if err := fn(Extent{at, s.es[i].Offset - at}); err != nil {
				return err
			}
		}
		at = max(at, s.es[i].End())
	}
	if at < e.End() {
		return fn(Extent{at, e.End() - at})
	}
	return nil
}

// searchExtents returns the index of the first extent ending at or after
// off.
func searchExtents(es []Extent, off int64) int {
	lo, hi := 0, len(es)
	for lo < hi {
		m := (lo + hi) / 2
		if es[m].End() < off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}
