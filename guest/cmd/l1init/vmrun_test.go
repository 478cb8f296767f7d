package main

import (
	"strings"
	"testing"
)

func TestAfterVMRun(t *testing.T) {
	tests := []struct {
		name string
		code []byte
		want uint64
		err  bool
	}{
		// __svm_vcpu_run of Debian's 6.1.0-57 kvm-amd.ko around its VMRUN:
		// jmp; verw; vmrun; pop %rax.
		{"debian 6.1", []byte{0xeb, 0x07, 0x0f, 0x00, 0x2d, 0, 0, 0, 0, 0x0f, 0x01, 0xd8, 0x58}, 12, false},
		{"at the start", []byte{0x0f, 0x01, 0xd8}, 3, false},
		{"vmload and vmsave only", []byte{0x0f, 0x01, 0xda, 0x0f, 0x01, 0xdb}, 0, true},
		{"two", []byte{0x0f, 0x01, 0xd8, 0x90, 0x0f, 0x01, 0xd8}, 0, true},
		{"empty", nil, 0, true},
	}
	for _, tt := range tests {
		got, err := afterVMRun(tt.code)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("%s: afterVMRun = %d, %v; want %d, error %v", tt.name, got, err, tt.want, tt.err)
		}
	}
}

func TestModuleSymbol(t *testing.T) {
	const listing = "ffffffff81000000 T _stext\n" +
		"ffffffffc0510080 t __svm_vcpu_run\t[kvm_intel_fake]\n" +
		"ffffffffc0520080 t __svm_vcpu_run\t[kvm_amd]\n" +
		"ffffffffc0520300 t __svm_sev_es_vcpu_run\t[kvm_amd]\n"
	tests := []struct {
		name, listing string
		want          uint64
		err           bool
	}{
		{"found", listing, 0xffffffffc0520080, false},
		{"hidden addresses", "0000000000000000 t __svm_vcpu_run\t[kvm_amd]\n", 0, true},
		{"not loaded", "ffffffff81000000 T _stext\n", 0, true},
		{"built in", "ffffffff81100000 T __svm_vcpu_run\n", 0, true},
	}
	for _, tt := range tests {
		got, err := moduleSymbol(strings.NewReader(tt.listing), vmrunFunc, "kvm_amd")
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("%s: moduleSymbol = %#x, %v; want %#x, error %v", tt.name, got, err, tt.want, tt.err)
		}
	}
}
