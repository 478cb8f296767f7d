package pid1

import (
	"reflect"
	"testing"
)

func TestModuleParams(t *testing.T) {
	tests := []struct {
		name    string
		cmdline string
		want    map[string]string
	}{
		{"none", "console=ttyS0 quiet", map[string]string{}},
		{"one", "quiet kvm_amd.npt=0", map[string]string{"kvm_amd": "npt=0"}},
		{"dash is underscore", "kvm-amd.vgif=0", map[string]string{"kvm_amd": "vgif=0"}},
		{"flag without value", "virtio_blk.foo", map[string]string{"virtio_blk": "foo"}},
		{"not a module word", "flushvm.run=exit:3 .x=1 y.=2", map[string]string{"flushvm": "run=exit:3"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := moduleParams(ParseCmdline(tc.cmdline)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("moduleParams(%q) = %v, want %v", tc.cmdline, got, tc.want)
			}
		})
	}
	// Two words for one module, in either order.
	got := moduleParams(ParseCmdline("kvm_amd.npt=0 kvm_amd.vgif=0"))["kvm_amd"]
	if got != "npt=0 vgif=0" && got != "vgif=0 npt=0" {
		t.Errorf("two parameters: %q", got)
	}
}
