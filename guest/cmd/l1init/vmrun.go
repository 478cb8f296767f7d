package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/flushvm/flushvm/guest/internal/pid1"
	"github.com/flushvm/flushvm/protocol"
)

// Where L1's KVM resumes after VMRUN, and why the host wants to know.
//
// kvm_amd enters its guest in __svm_vcpu_run, with one VMRUN instruction;
// at the guest's #VMEXIT the CPU restores L1's state as it was at VMRUN
// and L1 resumes at the next instruction. An L2 vCPU that reports that
// very address as its own RIP (in a hang or crash report) holds L1's
// registers, not its own: the CPU under L1, QEMU TCG (L0), wrote L1's
// state into the L2 guest's VMCB. Every checker hang of the long
// campaigns of issue 8 (and the hang that turned a fresh-clone CI run
// red) had its RIP at that address, with L1's CR3 (outside the L2
// guest's memory) beside it. flushvm cannot cause that through /dev/kvm,
// so the harness retries such a session, logging this as its cause.

const vmrunFunc = "__svm_vcpu_run"

// vmrunInsn is the encoding of VMRUN (with its rAX operand).
var vmrunInsn = []byte{0x0f, 0x01, 0xd8}

// recordVMRunReturn finds where kvm_amd resumes after VMRUN, logs it,
// writes it into the job directory (protocol.L1VMRunReturnFile) and puts
// it in the environment of every run (protocol.L1VMRunReturnEnv).
func recordVMRunReturn(jobDir string) error {
	list, err := os.ReadFile(pid1.ModuleList)
	if err != nil {
		return fmt.Errorf("vmrun return: %w", err)
	}
	ko := ""
	for _, p := range strings.Fields(string(list)) {
		if base := p[strings.LastIndexByte(p, '/')+1:]; strings.ReplaceAll(base, "-", "_") == "kvm_amd.ko" {
			ko = p
		}
	}
	if ko == "" {
		return errors.New("vmrun return: no kvm-amd.ko in the module list")
	}
	off, err := vmrunOffset(ko)
	if err != nil {
		return err
	}
	ks, err := os.Open("/proc/kallsyms")
	if err != nil {
		return fmt.Errorf("vmrun return: %w", err)
	}
	defer ks.Close()
	base, err := moduleSymbol(ks, vmrunFunc, "kvm_amd")
	if err != nil {
		return err
	}
	r := protocol.L1VMRunReturn{Addr: base + off, Symbol: fmt.Sprintf("%s+%#x", vmrunFunc, off)}
	pid1.Logf(prefix, "kvm_amd resumes after VMRUN at %s", r)
	if err := os.Setenv(protocol.L1VMRunReturnEnv, r.String()); err != nil {
		return fmt.Errorf("vmrun return: %w", err)
	}
	if err := os.WriteFile(protocol.L1VMRunReturnFile(jobDir), []byte(r.String()+"\n"), 0o644); err != nil {
		return fmt.Errorf("vmrun return: %w", err)
	}
	return nil
}

// vmrunOffset reads the module file ko and returns the offset, from the
// start of __svm_vcpu_run, of the instruction after its VMRUN.
func vmrunOffset(ko string) (uint64, error) {
	f, err := elf.Open(ko)
	if err != nil {
		return 0, fmt.Errorf("vmrun return: %w", err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return 0, fmt.Errorf("vmrun return: %s: %w", ko, err)
	}
	for _, s := range syms {
		if s.Name != vmrunFunc || elf.ST_TYPE(s.Info) != elf.STT_FUNC || int(s.Section) >= len(f.Sections) {
			continue
		}
		data, err := f.Sections[s.Section].Data()
		if err != nil {
			return 0, fmt.Errorf("vmrun return: %s: %w", ko, err)
		}
		if s.Value > uint64(len(data)) || s.Size > uint64(len(data))-s.Value {
			return 0, fmt.Errorf("vmrun return: %s: %s lies outside its section", ko, vmrunFunc)
		}
		return afterVMRun(data[s.Value : s.Value+s.Size])
	}
	return 0, fmt.Errorf("vmrun return: %s: no function %s", ko, vmrunFunc)
}

// afterVMRun returns the offset in code of the instruction after its one
// VMRUN. Several would leave the resume point ambiguous.
func afterVMRun(code []byte) (uint64, error) {
	i := bytes.Index(code, vmrunInsn)
	if i < 0 {
		return 0, fmt.Errorf("vmrun return: no VMRUN in %s", vmrunFunc)
	}
	if bytes.Contains(code[i+1:], vmrunInsn) {
		return 0, fmt.Errorf("vmrun return: more than one VMRUN in %s", vmrunFunc)
	}
	return uint64(i + len(vmrunInsn)), nil
}

// moduleSymbol returns the address of the symbol name of module mod in a
// /proc/kallsyms listing ("ffffffffc0520080 t __svm_vcpu_run\t[kvm_amd]").
// A zero address means kallsyms hides addresses from this process.
func moduleSymbol(kallsyms io.Reader, name, mod string) (uint64, error) {
	sc := bufio.NewScanner(kallsyms)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[2] != name || f[3] != "["+mod+"]" {
			continue
		}
		a, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil || a == 0 {
			return 0, fmt.Errorf("vmrun return: kallsyms gives %s the address %q", name, f[0])
		}
		return a, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("vmrun return: kallsyms: %w", err)
	}
	return 0, fmt.Errorf("vmrun return: kallsyms has no %s [%s]", name, mod)
}
