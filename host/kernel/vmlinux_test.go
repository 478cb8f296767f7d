package kernel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os/exec"
	"testing"
)

// fakeBzImage builds a minimal bzImage around payload: a setup area of
// one sector plus the boot sector, the HdrS header, and the payload
// fields pointing at payload (which carries its size word already).
func fakeBzImage(payload []byte) []byte {
	b := make([]byte, 2*512)
	b[0x1f1] = 1
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint32(b[0x248:], 16)
	binary.LittleEndian.PutUint32(b[0x24c:], uint32(len(payload)))
	b = append(b, make([]byte, 16)...)
	return append(b, payload...)
}

func compress(t *testing.T, tool string, data []byte) []byte {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s not installed", tool)
	}
	cmd := exec.Command(tool, "-c")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	return binary.LittleEndian.AppendUint32(out, uint32(len(data)))
}

func TestUnpackBzImage(t *testing.T) {
	elf := append([]byte("\x7fELF"), bytes.Repeat([]byte("kernel text "), 1000)...)
	sized := func(p []byte, n int) []byte { return binary.LittleEndian.AppendUint32(p[:len(p)-4], uint32(n)) }
	tests := []struct {
		name    string
		image   func(t *testing.T) []byte
		wantErr bool
	}{
		{"xz", func(t *testing.T) []byte { return fakeBzImage(compress(t, "xz", elf)) }, false},
		{"zstd", func(t *testing.T) []byte { return fakeBzImage(compress(t, "zstd", elf)) }, false},
		{"gzip", func(t *testing.T) []byte { return fakeBzImage(compress(t, "gzip", elf)) }, false},
		{"not a bzImage", func(t *testing.T) []byte { return make([]byte, 4096) }, true},
		{"payload beyond the file", func(t *testing.T) []byte {
			b := fakeBzImage(compress(t, "xz", elf))
			binary.LittleEndian.PutUint32(b[0x24c:], 1<<30)
			return b
		}, true},
		{"unknown compression", func(t *testing.T) []byte { return fakeBzImage([]byte("LZ4?data and size")) }, true},
		{"size word disagrees", func(t *testing.T) []byte { return fakeBzImage(sized(compress(t, "xz", elf), 7)) }, true},
		{"not an ELF inside", func(t *testing.T) []byte { return fakeBzImage(compress(t, "xz", []byte("MZ not elf"))) }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := unpackBzImage(context.Background(), tc.image(t))
			if tc.wantErr {
				if !errors.Is(err, ErrNoPayload) {
					t.Fatalf("err %v, want ErrNoPayload", err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, elf) {
				t.Fatalf("got %d bytes, err %v; want the %d-byte ELF", len(got), err, len(elf))
			}
		})
	}
}
