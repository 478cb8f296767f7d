package protocol

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrBadSize reports a size argument that cannot be read.
var ErrBadSize = errors.New("bad size")

// ParseSize reads a size, the one grammar of every size flag (--mem,
// --disk-size, --cache-bound, --scratch-size): a positive number with an
// optional K, M, G or T suffix (powers of 1024, case-insensitive, an
// optional trailing B or iB allowed); a bare number is bytes. Errors wrap
// ErrBadSize.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(t, "IB")
	t = strings.TrimSuffix(t, "B")
	mult := uint64(1)
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
