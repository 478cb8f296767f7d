package debpkg

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestLastLine(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"one", "one"},
		{"first\nE: Unable to locate package x\n\n  \n", "E: Unable to locate package x"},
		{"  padded  \n", "padded"},
	}
	for _, tc := range tests {
		if got := LastLine([]byte(tc.in)); got != tc.want {
			t.Errorf("LastLine(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestUnpackUnknownPackage checks that a failed download reports apt's
// reason and leaves nothing behind.
func TestUnpackUnknownPackage(t *testing.T) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("no apt-get on this host")
	}
	parent := t.TempDir()
	_, err := Unpack(context.Background(), parent, "flushvm-no-such-package=1.0")
	if err == nil || !strings.Contains(err.Error(), "flushvm-no-such-package") {
		t.Fatalf("got %v, want an error naming the package", err)
	}
	left, _ := os.ReadDir(parent)
	if len(left) != 0 {
		t.Errorf("left %d entries in %s", len(left), parent)
	}
}
