package protocol

import (
	"errors"
	"testing"
	"time"
)

func TestParseTrigger(t *testing.T) {
	tests := []struct {
		in   string
		want Trigger
		bad  bool
	}{
		{"after=1.5s", Trigger{Kind: TriggerAfter, After: 1500 * time.Millisecond}, false},
		{"after=200ms", Trigger{Kind: TriggerAfter, After: 200 * time.Millisecond}, false},
		{"flushes=1", Trigger{Kind: TriggerFlushes, N: 1}, false},
		{"writes=1000", Trigger{Kind: TriggerWrites, N: 1000}, false},
		{"after=0s", Trigger{}, true},
		{"after=-1s", Trigger{}, true},
		{"after=soon", Trigger{}, true},
		{"flushes=0", Trigger{}, true},
		{"writes=-3", Trigger{}, true},
		{"writes=", Trigger{}, true},
		{"writes", Trigger{}, true},
		{"reads=3", Trigger{}, true},
		{"", Trigger{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTrigger(tc.in)
			if tc.bad {
				if !errors.Is(err, ErrBadTrigger) {
					t.Fatalf("ParseTrigger(%q) = %v, %v; want ErrBadTrigger", tc.in, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseTrigger(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
			if again, err := ParseTrigger(got.String()); err != nil || again != got {
				t.Fatalf("String() %q does not parse back: %+v, %v", got.String(), again, err)
			}
		})
	}
}
