package harness

import (
	"os"
	"strings"
	"testing"
)

func TestHostTool(t *testing.T) {
	tests := []struct {
		name    string
		wantErr string
	}{
		{"mke2fs", ""},
		{"e2fsck", ""},
		{"flushvm-no-such-tool", "flushvm-no-such-tool not found in /sbin, /usr/sbin, /bin, /usr/bin or $PATH"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := hostTool(tt.name)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("hostTool = %q, %v; want error %q", p, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Skipf("%v", err)
			}
			if st, err := os.Stat(p); err != nil || !strings.HasSuffix(p, "/"+tt.name) || st.Mode().Perm()&0o111 == 0 {
				t.Errorf("hostTool = %q (%v), want an executable %s", p, err, tt.name)
			}
		})
	}
}
