package protocol

import (
	"runtime/debug"
	"strings"
)

// Version is the running binary's version: its module version (a tagged
// release, or "(devel)" for a build from a checkout) and, when the build
// recorded them, the VCS revision (12 hex digits) and "+dirty" for a build
// from modified sources. Reports and --stats carry it so documents from
// different builds are not added up unknowingly.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if short := rev[:min(12, len(rev))]; short != "" && !strings.Contains(v, short) {
		v += " " + short + dirty
	}
	return v
}
