package harness

import (
	"strings"
	"testing"
)

func TestQEMUCommand(t *testing.T) {
	tests := []struct {
		name string
		q    QEMUCommand
		want string
	}{
		{"defaults", QEMUCommand{Kernel: "bz", Append: "console=ttyS0"},
			"qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 512 -smp 1 -nographic -no-reboot -nodefaults -serial stdio -kernel bz -append console=ttyS0"},
		{"everything", QEMUCommand{Exec: []string{"ld.so", "q"}, Accel: "kvm", CPU: "host", Mem: "1G", SMP: 2, BIOS: "qboot.rom",
			DebugExit: true, Kernel: "bz", Initrd: "i", Append: "a", Extra: []string{"-drive", "file=d"}},
			"ld.so q -accel kvm -cpu host -m 1G -smp 2 -nographic -no-reboot -nodefaults -serial stdio -bios qboot.rom " +
				"-device isa-debug-exit,iobase=0xf4,iosize=0x01 -kernel bz -initrd i -append a -drive file=d"},
	}
	for _, tc := range tests {
		if got := strings.Join(tc.q.Args(), " "); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}
