package blk

import (
	"fmt"
	"testing"
)

// TestTearBounds: random-sectors tears a write per atomic unit up to
// MaxTearPieces units and a discard up to MaxDiscardTearPieces, and longer
// ones in unit-aligned groups, so the draws and the kept extents of one
// write are bounded whatever length it claims.
func TestTearBounds(t *testing.T) {
	cases := []struct {
		name      string
		op        string
		unit      int64
		off, n    int64
		wantGrain int64 // inner piece boundaries are this far apart
	}{
		{"small write per sector", OpWrite, 512, 512, 64 << 10, 512},
		{"write at the bound", OpWrite, 512, 0, MaxTearPieces * 512, 512},
		{"long write, 512", OpWrite, 512, 0, 1 << 30, (1 << 30) / MaxTearPieces},
		{"long write-zeroes, 4k", OpWriteZeroes, 4096, 4096, 1 << 30, (1 << 30) / MaxTearPieces},
		{"small discard per sector", OpDiscard, 512, 1024, 8 * 512, 512},
		{"discard at the bound", OpDiscard, 4096, 0, MaxDiscardTearPieces * 4096, 4096},
		{"huge discard", OpDiscard, 512, 0, 1 << 40, (1 << 40) / MaxDiscardTearPieces},
		{"unaligned discard", OpDiscard, 4096, 512, 1<<20 - 1024, 65536},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			max := int64(maxTearPieces(tc.op))
			torn := 0
			for seed := range uint64(64) {
				ws := []PowerCutWrite{{Op: tc.op, Offset: tc.off, Length: tc.n}}
				rep, err := planPowerCut(PowerCutPolicy{Kind: PowerCutRandomSectors, AtomicUnit: tc.unit}, seed, ws)
				if err != nil {
					t.Fatal(err)
				}
				w := rep.Writes[0]
				if int64(len(w.Kept)) > max/2+1 {
					t.Fatalf("seed %d: %d kept extents, at most %d pieces", seed, len(w.Kept), max)
				}
				if err := checkGrain(w, tc.off/tc.unit*tc.unit, tc.wantGrain); err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
				if w.Fate == FateTorn {
					torn++
				}
			}
			if torn == 0 {
				t.Fatal("never torn in 64 seeds")
			}
		})
	}
}

// checkGrain checks that w's kept extents lie inside w and, except at w's
// own edges, start and end a multiple of grain bytes after base (the start
// of w's first atomic unit).
func checkGrain(w PowerCutWrite, base, grain int64) error {
	end := w.Offset + w.Length
	for _, x := range w.Kept {
		if x.Offset < w.Offset || x.End() > end || x.Length <= 0 {
			return fmt.Errorf("kept %+v outside [%d, +%d)", x, w.Offset, w.Length)
		}
		if x.Offset != w.Offset && (x.Offset-base)%grain != 0 || x.End() != end && (x.End()-base)%grain != 0 {
			return fmt.Errorf("kept %+v not on a %d-byte grain", x, grain)
		}
	}
	return nil
}
