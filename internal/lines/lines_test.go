package lines

import "testing"

func TestLast(t *testing.T) {
	tests := []struct {
		out  string
		n    int
		want string
	}{
		{"", 3, "(no output)"},
		{"\n  \n", 3, "(no output)"},
		{"a\nb\n", 3, "a | b"},
		{"a\n\nb\n c \nd", 2, "c | d"},
	}
	for _, tc := range tests {
		if got := Last([]byte(tc.out), tc.n); got != tc.want {
			t.Errorf("Last(%q, %d) = %q, want %q", tc.out, tc.n, got, tc.want)
		}
	}
}
