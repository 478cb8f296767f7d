package main

import (
	"slices"
	"testing"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/blk"
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

func TestDiskQueues(t *testing.T) {
	tests := []struct {
		spec       string
		cpus, want int
	}{
		{"path=d.img", 1, 1},
		{"path=d.img", 2, 2},
		{"path=d.img", 0, 1},
		{"path=d.img", 100, blk.MaxQueues},
		{"path=d.img,queues=1", 4, 1},
		{"path=d.img,queues=3", 1, 3},
	}
	for _, tc := range tests {
		sp, err := blk.ParseSpec(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		if got := diskQueues(sp, tc.cpus); got != tc.want {
			t.Errorf("diskQueues(%q, %d cpus) = %d, want %d", tc.spec, tc.cpus, got, tc.want)
		}
	}
}
