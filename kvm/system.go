package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// DevicePath is where the KVM device lives.
const DevicePath = "/dev/kvm"

// ErrNoKVM reports that /dev/kvm does not exist: no KVM on this host.
var ErrNoKVM = errors.New("no KVM: " + DevicePath + " does not exist")

// ErrPermission reports that /dev/kvm exists but cannot be opened.
var ErrPermission = errors.New("no permission to open " + DevicePath)

// System is an open /dev/kvm.
type System struct {
	fd int
}

// Open opens /dev/kvm and checks the API version. It returns an error
// wrapping ErrNoKVM or ErrPermission for the two common host problems.
func Open() (*System, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		return nil, ErrNoKVM
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return nil, fmt.Errorf("%w (add yourself to the kvm group or run as root)", ErrPermission)
	case err != nil:
		return nil, fmt.Errorf("open %s: %w", DevicePath, err)
	}
	s := &System{fd: fd}
	v, err := ioctl(fd, kvmGetAPIVersion, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != APIVersion {
		s.Close()
		return nil, fmt.Errorf("KVM API version %d, want %d", v, APIVersion)
	}
	return s, nil
}

// Close closes /dev/kvm. VMs created from it stay usable.
func (s *System) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

// CheckExtension returns KVM_CHECK_EXTENSION's answer for c: 0 when
// unsupported, otherwise a capability-specific positive value.
func (s *System) CheckExtension(c Cap) int {
	r, err := ioctl(s.fd, kvmCheckExtension, uintptr(c))
	if err != nil {
		return 0
	}
	return int(r)
}

// VCPUMmapSize is the size of the kvm_run area of each vCPU.
func (s *System) VCPUMmapSize() (int, error) {
	r, err := ioctl(s.fd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	return int(r), nil
}

// SupportedCPUID returns the CPUID leaves KVM can expose on this host,
// KVM's paravirtual leaves (0x40000000...) included.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := 128; n <= 4096; n *= 2 {
		buf := makeVarStruct(n, 40)
		binary.LittleEndian.PutUint32(buf[0:], uint32(n))
		err := ioctlBuf(s.fd, kvmGetSupportedCPUID, buf)
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		got := int(binary.LittleEndian.Uint32(buf[0:]))
		return append([]CPUIDEntry(nil), entriesOf[CPUIDEntry](buf[8:], got)...), nil
	}
	return nil, errors.New("KVM_GET_SUPPORTED_CPUID: more than 4096 entries")
}

// CreateVM creates a virtual machine.
func (s *System) CreateVM() (*VM, error) {
	size, err := s.VCPUMmapSize()
	if err != nil {
		return nil, err
	}
	r, err := ioctl(s.fd, kvmCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return &VM{fd: int(r), runSize: size}, nil
}

// Available reports whether /dev/kvm can be opened (for tests that need it).
func Available() error {
	if _, err := os.Stat(DevicePath); err != nil {
		return ErrNoKVM
	}
	s, err := Open()
	if err != nil {
		return err
	}
	return s.Close()
}
