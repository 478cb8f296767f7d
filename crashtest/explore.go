package crashtest

import (
	"fmt"
	"io"
	"math"
	"math/big"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/protocol"
)

// The crash-state space of one recorded run (the systematic mode).
//
// The record boot's write log holds, in order, every write and discard the
// guest completed, a FLUSH entry for every host sync (logged when the sync
// starts: it covers exactly the writes logged before it), and a MARK for
// every acknowledgement the guest printed (logged after the flush that made
// it durable: see disk.Disk.ConsoleLine). A FLUSH entry covers what the
// host sync really synced; the virtio rule promises a guest's flush only
// the writes completed before the guest submitted it, so a write that
// completed between a flush's submission and the start of the host sync
// satisfying it (a flush merged into a later sync) counts as covered here:
// the space leaves out the states that lose such a write after that flush,
// states only a guest relying on an unflushed write would fail in. The
// FLUSH entries cut the log
// into windows: window 0 runs from the start to the first FLUSH, window j
// from FLUSH j to FLUSH j+1 (the last one to the end of the log). A power
// cut between the completion of flush j and that of flush j+1 leaves every
// write before FLUSH j durable and any subset of window j's writes, each
// whole or torn; the writes after FLUSH j+1 had not completed before it
// was submitted, and a crash state that keeps them without the window's is
// one a later window explores. Every acknowledgement logged before FLUSH
// j+1 was printed before that flush was even submitted, so it rests on
// flush j or earlier: each state of window j must keep all of them.
//
// States of window j, in the order they are generated (identical images,
// by content hash, are checked once, against the most acknowledgements
// any of them must keep):
//
//	wJ.sMASK        a subset of the window's writes (MASK: hex, bit i = write i)
//	                all 2^n subsets when the window has n <= k writes, else
//	                the whole window, none, and 2^k seeded samples
//	wJ.pN           the window's first N writes (windows of more than k writes)
//	wJ.tI.UNIT.MASK the first I writes whole, write I torn: its UNIT-byte
//	                pieces in MASK kept (UNIT 4096 or 512; seeded MASK)
//
// A state ID names its image exactly, given the log: `flushvm crashtest
// --reproduce LOG ID` rebuilds it byte for byte.

// Window is one window of the write log.
type Window struct {
	// Start is the index of the FLUSH entry that opens the window (0 for
	// window 0): the state applies every entry before it.
	Start uint64
	// End is the index of the FLUSH entry that closes it, or the number of
	// entries for the last window.
	End uint64
	// Writes are the indexes of the window's writes and discards.
	Writes []uint64
	// Acks is the number of acknowledgements logged before End.
	Acks int
}

// LogModel is a recorded run's log cut into windows, with its
// acknowledgements in order.
type LogModel struct {
	Log     *blk.CrashLog
	Windows []Window
	// AckKeys are the keys of the acknowledgements (their MARK texts
	// "ACK KEY"), in log order.
	AckKeys []string
	// Writes and Flushes count the log's writes (and discards) and FLUSH
	// entries.
	Writes, Flushes int
	// closers are the files Close closes.
	closers []io.Closer
}

// NewLogModel cuts cl's entries into windows.
func NewLogModel(cl *blk.CrashLog) *LogModel {
	m := &LogModel{Log: cl}
	w := Window{}
	for _, e := range cl.Entries() {
		switch {
		case e.IsFlush():
			w.End, w.Acks = e.Index, len(m.AckKeys)
			m.Windows = append(m.Windows, w)
			w = Window{Start: e.Index}
			m.Flushes++
		case e.IsMark():
			if k, ok := protocol.AckKey(e.Mark); ok {
				m.AckKeys = append(m.AckKeys, k)
			}
		case e.Length > 0 && (e.HasData() || e.IsDiscard()):
			w.Writes = append(w.Writes, e.Index)
			m.Writes++
		}
	}
	w.End, w.Acks = uint64(len(cl.Entries())), len(m.AckKeys)
	m.Windows = append(m.Windows, w)
	return m
}

// Candidate is one generated crash state.
type Candidate struct {
	State blk.CrashState
	// Kind is "subset", "prefix" or "torn"; Window the window's number.
	Kind   string
	Window int
	// Acks is the number of acknowledgements the state must keep (the
	// first Acks of LogModel.AckKeys).
	Acks int
}

// ExploreOptions bound the generation.
type ExploreOptions struct {
	// K: windows of at most K writes get every subset; larger ones get
	// 2^K seeded samples and every prefix.
	K int
	// Seed seeds the samples and the torn pieces.
	Seed uint64
	// TornUnits are the units writes tear at (none: no torn states):
	// 4096 tears only at the device's physical blocks (what its topology
	// advertises, and the atomic unit of today's drives), 512 also
	// inside them (a disk that keeps only some sectors of a block).
	TornUnits []int64
}

// Space returns the number of states in the space generation samples
// from: for each window of n writes, its 2^n subsets, plus two torn states
// per write of more than one 512-byte unit. It may exceed what a float64
// counts exactly (it is then approximate).
func (m *LogModel) Space(o ExploreOptions) float64 {
	var s float64
	for _, w := range m.Windows {
		s += math.Pow(2, float64(len(w.Writes)))
		for _, i := range w.Writes {
			s += float64(len(m.tornUnits(i, o.TornUnits)))
		}
	}
	return s
}

// Generate calls yield for every candidate in generation order until
// yield returns false.
func (m *LogModel) Generate(o ExploreOptions, yield func(Candidate) bool) {
	for j, w := range m.Windows {
		r := rand.New(rand.NewPCG(o.Seed, uint64(j)))
		for _, c := range m.windowStates(j, w, o, r) {
			if !yield(c) {
				return
			}
		}
	}
}

// windowStates returns window j's candidates.
func (m *LogModel) windowStates(j int, w Window, o ExploreOptions, r *rand.Rand) []Candidate {
	n := len(w.Writes)
	var out []Candidate
	add := func(kind, id string, st blk.CrashState) {
		st.ID = fmt.Sprintf("w%d.%s", j, id)
		out = append(out, Candidate{Kind: kind, Window: j, Acks: w.Acks, State: st})
	}
	var masks []*big.Int
	if n <= o.K {
		for v := int64(1)<<n - 1; v >= 0; v-- {
			masks = append(masks, big.NewInt(v))
		}
	} else {
		all := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), uint(n)), big.NewInt(1))
		masks = append(masks, all, big.NewInt(0))
		for s := 0; s < 1<<o.K; s++ {
			masks = append(masks, randomMask(r, n))
		}
	}
	for _, mask := range masks {
		add("subset", "s"+mask.Text(16), m.maskState(w, mask))
	}
	if n > o.K {
		for p := 1; p < n; p++ {
			add("prefix", "p"+strconv.Itoa(p), m.maskState(w, prefixMask(p)))
		}
	}
	{
		for i, e := range w.Writes {
			for _, unit := range m.tornUnits(e, o.TornUnits) {
				mask := tornMask(r, int(m.entry(e).Length/unit))
				id := fmt.Sprintf("t%d.%d.%s", i, unit, mask.Text(16))
				st := m.maskState(w, prefixMask(i))
				st.Pieces = tornPieces(e, unit, mask)
				add("torn", id, st)
			}
		}
	}
	return out
}

// entry returns log entry i.
func (m *LogModel) entry(i uint64) blk.WriteLogEntry { return m.Log.Entries()[i] }

// tornUnits returns the units of units a write can tear at: those it
// spans more than one of, aligned (discards do not tear: they leave zeroes
// or the old data, and the subsets cover both).
func (m *LogModel) tornUnits(i uint64, units []int64) []int64 {
	e := m.entry(i)
	if e.IsDiscard() {
		return nil
	}
	var u []int64
	for _, unit := range units {
		if e.Length > unit && e.Length%unit == 0 && e.Offset%unit == 0 {
			u = append(u, unit)
		}
	}
	return u
}

// maskState returns the state that keeps the window's writes selected by
// mask, whole, in log order. The run of selected writes from the window's
// first is expressed as the state's prefix (every entry before the first
// write not selected), so prefixes cost no pieces however long.
func (m *LogModel) maskState(w Window, mask *big.Int) blk.CrashState {
	t := 0
	for t < len(w.Writes) && mask.Bit(t) == 1 {
		t++
	}
	st := blk.CrashState{Prefix: w.End}
	if t < len(w.Writes) {
		st.Prefix = w.Writes[t]
	}
	for i := t + 1; i < len(w.Writes); i++ {
		if mask.Bit(i) == 1 {
			st.Pieces = append(st.Pieces, blk.CrashPiece{Entry: w.Writes[i]})
		}
	}
	return st
}

func prefixMask(n int) *big.Int {
	return new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), uint(n)), big.NewInt(1))
}

// randomMask draws a uniform subset of n writes.
func randomMask(r *rand.Rand, n int) *big.Int {
	v := new(big.Int)
	for i := 0; i < n; i++ {
		if r.IntN(2) == 1 {
			v.SetBit(v, i, 1)
		}
	}
	return v
}

// tornMask draws which of n units a torn write keeps: a non-empty proper
// subset (n >= 2).
func tornMask(r *rand.Rand, n int) *big.Int {
	for {
		v := randomMask(r, n)
		if v.Sign() != 0 && v.Cmp(prefixMask(n)) != 0 {
			return v
		}
	}
}

// tornPieces returns the kept units of entry e as pieces, adjacent units
// merged.
func tornPieces(e uint64, unit int64, mask *big.Int) []blk.CrashPiece {
	var p []blk.CrashPiece
	for i := 0; i < mask.BitLen(); i++ {
		if mask.Bit(i) == 0 {
			continue
		}
		off := int64(i) * unit
		if k := len(p) - 1; k >= 0 && p[k].Offset+p[k].Length == off {
			p[k].Length += unit
			continue
		}
		p = append(p, blk.CrashPiece{Entry: e, Offset: off, Length: unit})
	}
	return p
}

// ErrBadStateID reports a state ID that does not name a state of the log.
var ErrBadStateID = fmt.Errorf("crashtest: no such crash state")

// Lookup rebuilds the candidate a state ID names (see the ID grammar
// above), checking it against the log. Torn states may tear at 4096 or
// 512 whatever the campaign's units were.
func (m *LogModel) Lookup(id string) (Candidate, error) {
	bad := func(why string) (Candidate, error) {
		return Candidate{}, fmt.Errorf("%w: %q: %s", ErrBadStateID, id, why)
	}
	ws, rest, ok := strings.Cut(id, ".")
	j, err := strconv.Atoi(strings.TrimPrefix(ws, "w"))
	if !ok || !strings.HasPrefix(ws, "w") || err != nil || j < 0 || j >= len(m.Windows) {
		return bad(fmt.Sprintf("want wJ.KIND with J a window of the log (0..%d)", len(m.Windows)-1))
	}
	w := m.Windows[j]
	n := len(w.Writes)
	c := Candidate{Window: j, Acks: w.Acks}
	switch {
	case strings.HasPrefix(rest, "s"):
		mask, ok := new(big.Int).SetString(rest[1:], 16)
		if !ok || mask.Sign() < 0 || mask.BitLen() > n || rest[1:] != mask.Text(16) {
			return bad(fmt.Sprintf("subset mask: want hex over the window's %d writes", n))
		}
		c.Kind, c.State = "subset", m.maskState(w, mask)
	case strings.HasPrefix(rest, "p"):
		p, err := strconv.Atoi(rest[1:])
		if err != nil || p < 1 || p >= n || rest[1:] != strconv.Itoa(p) {
			return bad(fmt.Sprintf("prefix: want 1..%d", n-1))
		}
		c.Kind, c.State = "prefix", m.maskState(w, prefixMask(p))
	case strings.HasPrefix(rest, "t"):
		st, err := m.lookupTorn(w, rest[1:])
		if err != nil {
			return bad(err.Error())
		}
		c.Kind, c.State = "torn", st
	default:
		return bad("kind: want s (subset), p (prefix) or t (torn)")
	}
	c.State.ID = id
	return c, nil
}

// lookupTorn parses "I.UNIT.MASK" of a torn state of window w.
func (m *LogModel) lookupTorn(w Window, s string) (blk.CrashState, error) {
	f := strings.Split(s, ".")
	if len(f) != 3 {
		return blk.CrashState{}, fmt.Errorf("torn: want tI.UNIT.MASK")
	}
	i, err := strconv.Atoi(f[0])
	if err != nil || i < 0 || i >= len(w.Writes) {
		return blk.CrashState{}, fmt.Errorf("torn: write %q: want 0..%d", f[0], len(w.Writes)-1)
	}
	e := w.Writes[i]
	unit, err := strconv.ParseInt(f[1], 10, 64)
	units := m.tornUnits(e, []int64{4096, 512})
	if err != nil || (len(units) == 0 || unit != units[0]) && (len(units) < 2 || unit != units[1]) {
		return blk.CrashState{}, fmt.Errorf("torn: unit %q: write %d tears at %v", f[1], i, units)
	}
	n := int(m.entry(e).Length / unit)
	mask, ok := new(big.Int).SetString(f[2], 16)
	if !ok || mask.Sign() <= 0 || mask.BitLen() > n || f[2] != mask.Text(16) || mask.Cmp(prefixMask(n)) == 0 {
		return blk.CrashState{}, fmt.Errorf("torn: mask %q: want a non-empty proper subset of %d units, in hex", f[2], n)
	}
	st := m.maskState(w, prefixMask(i))
	st.Pieces = tornPieces(e, unit, mask)
	return st, nil
}
