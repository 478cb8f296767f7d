// Package fuzzseed keeps the committed seed corpora of Go fuzz targets
// (testdata/fuzz/TARGET/NAME, in go test's "go test fuzz v1" format) in
// step with the code that builds them: a test builds each seed from the
// real thing (a mock driver's rings, a real write log, a recorded access
// sequence), encodes it with Encode and calls Check, which fails when the
// committed file is missing or stale and, with FLUSHVM_UPDATE_FUZZ_SEEDS=1
// in the environment, writes it instead.
//
// It is for tests only; it imports nothing of flushvm.
package fuzzseed

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// UpdateEnv is the environment variable that makes Check write seeds.
const UpdateEnv = "FLUSHVM_UPDATE_FUZZ_SEEDS"

// Encode returns the corpus file of one fuzz input whose arguments are
// values, in the order the fuzz function takes them. It supports the
// argument types our targets use: []byte, string, bool and the sized
// integers.
func Encode(values ...any) []byte {
	b := []byte("go test fuzz v1\n")
	for _, v := range values {
		switch v := v.(type) {
		case []byte:
			b = fmt.Appendf(b, "[]byte(%q)\n", v)
		case string:
			b = fmt.Appendf(b, "string(%q)\n", v)
		case bool, int8, int16, int32, int64, uint8, uint16, uint32, uint64:
			b = fmt.Appendf(b, "%T(%v)\n", v, v)
		default:
			panic(fmt.Sprintf("fuzzseed: unsupported fuzz argument type %T", v))
		}
	}
	return b
}

// Check compares want with the committed seed testdata/fuzz/target/name
// of the calling package, or writes it when UpdateEnv is 1.
func Check(t testing.TB, target, name string, want []byte) {
	t.Helper()
	path := filepath.Join("testdata", "fuzz", target, name)
	if os.Getenv(UpdateEnv) == "1" {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("fuzz seed %s is missing or stale (%v): regenerate with %s=1 go test -run %s .", path, err, UpdateEnv, t.Name())
	}
}
