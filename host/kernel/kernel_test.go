package kernel

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flushvm/flushvm/host"
)

// fetch unpacks (or reuses) the Debian kernel in the artifact cache.
func fetch(t *testing.T) *Kernel {
	t.Helper()
	fetchOnce.Do(func() { fetched, fetchErr = fetchNow(t) })
	if fetchErr != nil {
		t.Fatal(fetchErr)
	}
	return fetched
}

var (
	fetchOnce sync.Once
	fetched   *Kernel
	fetchErr  error
)

func fetchNow(t *testing.T) (*Kernel, error) {
	t.Helper()
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("needs Debian's apt to fetch the kernel package")
	}
	cache, err := host.CacheDir()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return Fetch(ctx, cache)
}

func TestModulesLoadOrder(t *testing.T) {
	k := fetch(t)
	tests := []struct {
		name  string
		ask   []string
		want  []string // exact order, when non-nil
		after [][2]string
	}{
		{name: "test guest: virtio-blk and pvpanic", ask: GuestModules, want: GuestModules},
		{name: "9p pulls its deps first", ask: []string{"9p"}, want: []string{"9pnet", "netfs", "fscache", "9p"}},
		{name: "L1", ask: L1Modules, after: [][2]string{{"irqbypass", "kvm"}, {"kvm", "kvm_amd"}, {"ccp", "kvm_amd"}, {"virtio_ring", "9pnet_virtio"}, {"9pnet", "9p"}}},
		{name: "dash names fold", ask: []string{"kvm-amd"}, after: [][2]string{{"kvm", "kvm_amd"}}},
		{name: "ext4", ask: Ext4Modules, after: [][2]string{{"jbd2", "ext4"}, {"mbcache", "ext4"}, {"crc16", "ext4"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mods, err := k.Modules(tt.ask...)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, m := range mods {
				names = append(names, m.Name)
			}
			if tt.want != nil && !slices.Equal(names, tt.want) {
				t.Errorf("order %v, want %v", names, tt.want)
			}
			for _, p := range tt.after {
				i, j := slices.Index(names, p[0]), slices.Index(names, p[1])
				if i < 0 || j < 0 || i > j {
					t.Errorf("%s must load before %s: %v", p[0], p[1], names)
				}
			}
			seen := map[string]bool{}
			for _, m := range mods {
				for _, d := range m.Depends {
					if !seen[d] {
						t.Errorf("%s loads before its dependency %s", m.Name, d)
					}
				}
				seen[m.Name] = true
			}
		})
	}
}

func TestModulesMissing(t *testing.T) {
	k := fetch(t)
	if _, err := k.Modules("virtio_blk", "no_such_module"); !errors.Is(err, ErrNoModule) {
		t.Errorf("err = %v, want ErrNoModule", err)
	}
}

func TestFetchIsCached(t *testing.T) {
	k := fetch(t)
	again, err := fetchNow(t)
	if err != nil {
		t.Fatal(err)
	}
	if k.Dir != again.Dir || k.BzImage != again.BzImage {
		t.Errorf("second fetch gave %s, first %s", again.Dir, k.Dir)
	}
	if k.Release == "" || k.Version == "" {
		t.Errorf("incomplete kernel description %+v", k)
	}
}

func TestDependsRE(t *testing.T) {
	tests := []struct{ out, want string }{
		{"linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n", "linux-image-6.1.0-56-amd64"},
		{"linux-image-amd64\n  Depends: initramfs-tools\n  Depends: linux-image-6.12.9+bpo-amd64\n", "linux-image-6.12.9+bpo-amd64"},
		{"linux-image-amd64\n  Depends: initramfs-tools\n", ""},
	}
	for _, tt := range tests {
		got := ""
		if m := dependsRE.FindStringSubmatch(tt.out); m != nil {
			got = m[1]
		}
		if got != tt.want {
			t.Errorf("depends in %q = %q, want %q", tt.out, got, tt.want)
		}
	}
}
