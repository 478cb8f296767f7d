// Package lines summarizes what a guest printed, for diagnostics.
package lines

import "strings"

// Last returns the last n non-empty lines of out, joined by " | ".
func Last(out []byte, n int) string {
	var ls []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) != "" {
			ls = append(ls, strings.TrimSpace(l))
		}
	}
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	if len(ls) == 0 {
		return "(no output)"
	}
	return strings.Join(ls, " | ")
}
