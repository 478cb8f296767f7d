package protocol

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrBadSize reports a size argument that cannot be read.
var ErrBadSize = errors.New("bad size")

// Units of a size without suffix: what a bare number means to a flag.
const (
	// BareBytes: a bare number is bytes (--disk-size, --cache-bound).
	BareBytes uint64 = 1
	// BareMiB: a bare number is MiB, as in QEMU's -m (--mem).
	BareMiB uint64 = 1 << 20
)

// ParseSize reads a size: a positive number with an optional K, M, G or T
// suffix (powers of 1024, case-insensitive, an optional trailing B or iB
// allowed). bare is the unit of a number without suffix (BareBytes or
// BareMiB). Errors wrap ErrBadSize.
func ParseSize(s string, bare uint64) (uint64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(t, "IB")
	t = strings.TrimSuffix(t, "B")
	mult := bare
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGT", t[n-1]); i >= 0 {
			mult, t = 1<<(10*(i+1)), t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("%w %q (want a positive number with K, M, G or T, e.g. 512M)", ErrBadSize, s)
	}
	if v > (1<<62)/mult {
		return 0, fmt.Errorf("%w %q: too large", ErrBadSize, s)
	}
	return v * mult, nil
}
