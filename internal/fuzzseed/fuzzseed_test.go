package fuzzseed

import (
	"os"
	"path/filepath"
	"testing"
)

func TestEncode(t *testing.T) {
	tests := []struct {
		name   string
		values []any
		want   string
	}{
		{"bytes", []any{[]byte("a\x00")}, "go test fuzz v1\n[]byte(\"a\\x00\")\n"},
		{"integers", []any{uint16(7), uint64(1 << 40), uint8(255)}, "go test fuzz v1\nuint16(7)\nuint64(1099511627776)\nuint8(255)\n"},
		{"mixed", []any{[]byte{}, true, "s"}, "go test fuzz v1\n[]byte(\"\")\nbool(true)\nstring(\"s\")\n"},
	}
	for _, tc := range tests {
		if got := string(Encode(tc.values...)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestCheckWritesThenMatches(t *testing.T) {
	dir := t.TempDir()
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	seed := Encode([]byte("x"))
	t.Setenv(UpdateEnv, "1")
	Check(t, "FuzzX", "one", seed)
	if b, err := os.ReadFile(filepath.Join(dir, "testdata", "fuzz", "FuzzX", "one")); err != nil || string(b) != string(seed) {
		t.Fatalf("written seed %q, %v", b, err)
	}
	t.Setenv(UpdateEnv, "")
	Check(t, "FuzzX", "one", seed)
}
