package main

import (
	"slices"
	"testing"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/crashtest"
	"github.com/flushvm/flushvm/protocol"
)

// TestValueFlagsContract checks that the value flags protocol lists (which
// the nested harness relies on to rewrite command lines) are exactly the
// non-boolean flags flushvm run and flushvm crashtest declare.
func TestValueFlagsContract(t *testing.T) {
	tests := []struct {
		name string
		fs   *pflag.FlagSet
		want []string
	}{
		{"run", newRunFlags().fs, protocol.RunValueFlags},
		{"crashtest", crashtest.NewFlags().FS, protocol.CrashtestValueFlags},
	}
	for _, tc := range tests {
		var got []string
		tc.fs.VisitAll(func(f *pflag.Flag) {
			if f.Value.Type() != "bool" && f.Name != "help" {
				got = append(got, f.Name)
			}
		})
		slices.Sort(got)
		want := slices.Sorted(slices.Values(tc.want))
		if !slices.Equal(got, want) {
			t.Errorf("flushvm %s value flags %v, protocol lists %v", tc.name, got, want)
		}
	}
}
