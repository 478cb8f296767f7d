// Package ackfile reads the file of acknowledged keys a crash-test checker
// gets ($FLUSHVM_ACKED, protocol/workload.go): one key per line, in the
// order the workload acknowledged them.
package ackfile

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// MaxSize bounds a keys file: a key per acknowledgement, each at most
// protocol.MaxAckKey bytes.
const MaxSize = 64 << 20

// Read returns the keys of the file at path, blank lines skipped and
// white space around each key trimmed. A file larger than MaxSize is
// refused, not read whole.
func Read(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("acknowledged keys: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("acknowledged keys %s: %w", path, err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("acknowledged keys %s: larger than %d bytes", path, MaxSize)
	}
	var keys []string
	for _, line := range strings.Split(string(data), "\n") {
		if k := strings.TrimSpace(line); k != "" {
			keys = append(keys, k)
		}
	}
	return keys, nil
}
