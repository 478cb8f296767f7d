package protocol

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrBadSpec reports a --disk SPEC that cannot be parsed.
var ErrBadSpec = errors.New("bad disk spec")

// DiskSpecSyntax is the form of a --disk SPEC, for messages.
const DiskSpecSyntax = "path=FILE[,cache=MODE][,readonly=on|off][,serial=STRING][,powercut=POLICY][,locking=on|off][,discard=unmap|ignore][,crashstates=FILE][,faults=FILE][,werror=POLICY][,rerror=POLICY][,queues=N][,aio=threads|io_uring]"

// DiskSpecKeys are the keys a --disk SPEC may have. Unknown keys are
// errors, never ignored, so a typo cannot silently change a disk's
// semantics.
var DiskSpecKeys = []string{"path", "cache", "readonly", "serial", "powercut", "locking", "discard", "crashstates", "faults", "werror", "rerror", "queues", "aio"}

// diskSpecAliases are QEMU's names for SPEC keys.
var diskSpecAliases = map[string]string{"file": "path"}

// CacheModes are the names of the cache modes (QEMU's), default first.
var CacheModes = []string{"writeback", "writethrough", "none", "directsync", "unsafe"}

// DiskSpecKey is one key=value of a --disk SPEC.
type DiskSpecKey struct {
	Key, Value string
}

// SplitDiskSpec splits a --disk SPEC into its key=value pairs, in order,
// checking its syntax: every part is key=value with a known key (QEMU's
// file= is path=), no key twice, a non-empty path=. As in QEMU, ",," is a
// comma inside a value. The values are the caller's to check.
func SplitDiskSpec(s string) ([]DiskSpecKey, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("%w: empty (want %s)", ErrBadSpec, DiskSpecSyntax)
	}
	var kvs []DiskSpecKey
	for _, part := range splitEscaped(s) {
		k, v, ok := strings.Cut(part, "=")
		if alias, isAlias := diskSpecAliases[k]; isAlias {
			k = alias
		}
		switch {
		case !ok:
			return nil, fmt.Errorf("%w %q: %q is not key=value", ErrBadSpec, s, part)
		case !slices.Contains(DiskSpecKeys, k):
			return nil, fmt.Errorf("%w %q: unknown key %q (known: %s)", ErrBadSpec, s, k, strings.Join(DiskSpecKeys, ", "))
		case slices.ContainsFunc(kvs, func(e DiskSpecKey) bool { return e.Key == k }):
			return nil, fmt.Errorf("%w %q: %s given twice", ErrBadSpec, s, k)
		case k == "path" && v == "":
			return nil, fmt.Errorf("%w %q: empty path", ErrBadSpec, s)
		}
		kvs = append(kvs, DiskSpecKey{k, v})
	}
	if _, ok := DiskSpecValue(kvs, "path"); !ok {
		return nil, fmt.Errorf("%w %q: path= is required", ErrBadSpec, s)
	}
	return kvs, nil
}

// splitEscaped splits s at single commas; ",," stands for a comma.
func splitEscaped(s string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == ',' && i+1 < len(s) && s[i+1] == ',':
			cur.WriteByte(',')
			i++
		case s[i] == ',':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(s[i])
		}
	}
	return append(parts, cur.String())
}

// ParseOnOff reads a SPEC boolean, in QEMU's words: on/off, true/false,
// yes/no.
func ParseOnOff(v string) (on, ok bool) {
	switch v {
	case "on", "true", "yes":
		return true, true
	case "off", "false", "no":
		return false, true
	}
	return false, false
}

// DiskSpecValue returns the value of key in kvs.
func DiskSpecValue(kvs []DiskSpecKey, key string) (string, bool) {
	for _, e := range kvs {
		if e.Key == key {
			return e.Value, true
		}
	}
	return "", false
}

// JoinDiskSpec is the SPEC of kvs.
func JoinDiskSpec(kvs []DiskSpecKey) string {
	parts := make([]string, len(kvs))
	for i, e := range kvs {
		parts[i] = e.Key + "=" + strings.ReplaceAll(e.Value, ",", ",,")
	}
	return strings.Join(parts, ",")
}
