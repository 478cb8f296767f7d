package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestSplitDiskSpec(t *testing.T) {
	tests := []struct {
		in, want, bad string
	}{
		{in: "path=d.img", want: "path=d.img"},
		{in: "cache=none,path=/x,serial=a=b", want: "cache=none,path=/x,serial=a=b"},
		{in: "path=d.img,readonly=on,powercut=lose-all", want: "path=d.img,readonly=on,powercut=lose-all"},
		{in: "path=d.img,crashstates=s.json", want: "path=d.img,crashstates=s.json"},
		{in: "", bad: "empty"},
		{in: "d.img", bad: "is not key=value"},
		{in: "file=d.img", want: "path=d.img"},
		{in: "path=a,,b.img,cache=none", want: "path=a,,b.img,cache=none"},
		{in: "file=x,path=y", bad: "given twice"},
		{in: "pathh=d.img", bad: "unknown key"},
		{in: "path=a,path=b", bad: "given twice"},
		{in: "path=", bad: "empty path"},
		{in: "cache=none", bad: "path= is required"},
	}
	for _, tc := range tests {
		kvs, err := SplitDiskSpec(tc.in)
		if tc.bad != "" {
			if !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("SplitDiskSpec(%q) = %v, %v; want an error saying %q", tc.in, kvs, err, tc.bad)
			}
			continue
		}
		if err != nil || JoinDiskSpec(kvs) != tc.want {
			t.Errorf("SplitDiskSpec(%q) = %v, %v; want %s", tc.in, kvs, err, tc.want)
		}
	}
	kvs, err := SplitDiskSpec("path=a,,b.img,serial=x")
	if p, _ := DiskSpecValue(kvs, "path"); err != nil || p != "a,b.img" {
		t.Errorf("escaped comma: path %q, %v", p, err)
	}
}
