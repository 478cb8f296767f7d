// Package cli prints the flag tables of flushvm's commands in one style:
// each flag with its value type and its default on the first line, then
// its help lines (the last of which is an example that runs).
package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
)

// FlagTable writes fs's flags, in declaration order (set fs.SortFlags =
// false), as
//
//	--name TYPE (default: VALUE)
//	    help line
//	    e.g. --name example
func FlagTable(w io.Writer, fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		head := "  --" + f.Name
		if t := f.Value.Type(); t != "bool" {
			head += " " + valueName(t)
		}
		if d := f.DefValue; d != "" && d != "0" && d != "false" && d != "[]" {
			head += " (default: " + d + ")"
		}
		fmt.Fprintln(w, head)
		for _, l := range strings.Split(f.Usage, "\n") {
			fmt.Fprintln(w, "      "+strings.TrimLeft(l, " "))
		}
	})
}

// valueName names a flag's value for the table.
func valueName(t string) string {
	switch t {
	case "stringArray", "string":
		return "VALUE"
	case "int", "uint16", "uint64":
		return "N"
	case "duration":
		return "DURATION"
	case "intSlice":
		return "N[,N...]"
	}
	return strings.ToUpper(t)
}

// OutputDir checks, before a command does anything, that the directory an
// output flag's file goes to exists ("" is no output). The error names the
// flag; the caller marks it a usage error.
func OutputDir(flag, path string) error {
	if path == "" {
		return nil
	}
	d := filepath.Dir(path)
	if st, err := os.Stat(d); err != nil || !st.IsDir() {
		return fmt.Errorf("--%s %s: directory %s does not exist", flag, path, d)
	}
	return nil
}
