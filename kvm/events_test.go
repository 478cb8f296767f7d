package kvm

import (
	"encoding/binary"
	"testing"
)

func TestParseEvents(t *testing.T) {
	tests := []struct {
		name string
		set  map[int]byte
		want Events
		str  string
	}{
		{"quiet", nil, Events{}, "shadow 0"},
		{"sti shadow, injecting the timer", map[int]byte{8: 1, 9: 236, 11: 2}, Events{InterruptInjected: true, InterruptNr: 236, Shadow: 2},
			"shadow 2, injecting vector 236"},
		{"page fault pending, NMI masked", map[int]byte{1: 14, 3: 1, 14: 1}, Events{ExceptionNr: 14, ExceptionPending: true, NMIMasked: true},
			"shadow 0, exception 14 (injected false, pending true), NMI injected false pending false masked true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b [64]byte
			for i, v := range tt.set {
				b[i] = v
			}
			got := parseEvents(&b)
			if got != tt.want || got.String() != tt.str {
				t.Errorf("parseEvents = %+v %q, want %+v %q", got, got.String(), tt.want, tt.str)
			}
		})
	}
}

func TestParseGIF(t *testing.T) {
	tests := []struct {
		name          string
		flags, format uint16
		set, ok       bool
	}{
		{"svm, GIF set", nestedGIFSet, nestedFormatSVM, true, true},
		{"svm, guest mode, GIF clear", 1, nestedFormatSVM, false, true},
		{"vmx has no GIF", nestedGIFSet, 0, false, false},
	}
	for _, tt := range tests {
		b := make([]byte, 128)
		binary.LittleEndian.PutUint16(b[0:], tt.flags)
		binary.LittleEndian.PutUint16(b[2:], tt.format)
		if set, ok := parseGIF(b); set != tt.set || ok != tt.ok {
			t.Errorf("%s: parseGIF = %v %v, want %v %v", tt.name, set, ok, tt.set, tt.ok)
		}
	}
}

// TestEventsOfNewVCPU reads the event state of a vCPU that never ran: no
// shadow, nothing injected.
func TestEventsOfNewVCPU(t *testing.T) {
	tv := newTestVM(t, []byte{0xf4}, true)
	e, err := tv.cpu.Events()
	if err != nil {
		t.Fatal(err)
	}
	if e != (Events{}) {
		t.Errorf("a new vCPU's events: %+v", e)
	}
	if set, ok := tv.cpu.GIF(); ok {
		t.Logf("GIF %v (KVM on AMD with nested state)", set)
	} else {
		t.Logf("no GIF state on this KVM")
	}
}
