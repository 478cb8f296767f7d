package vmm

import (
	"os"
	"testing"
	"time"
)

func TestConsoleEscape(t *testing.T) {
	tests := []struct {
		name     string
		tty      bool
		chunks   []string
		want     string
		wantQuit bool
	}{
		{"plain input passes", true, []string{"ls\r"}, "ls\r", false},
		{"Ctrl-A x quits", true, []string{"a\x01xb"}, "a", true},
		{"Ctrl-A X quits", true, []string{"\x01X"}, "", true},
		{"Ctrl-A Ctrl-A sends one Ctrl-A", true, []string{"\x01\x01z"}, "\x01z", false},
		{"escape split across reads", true, []string{"q\x01", "x"}, "q", true},
		{"Ctrl-A then other key drops both", true, []string{"\x01c", "d"}, "d", false},
		{"not a terminal: no escape", false, []string{"\x01x"}, "\x01x", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &console{tty: tc.tty}
			quit := false
			var got []byte
			for _, ch := range tc.chunks {
				if quit {
					break
				}
				got = append(got, c.filter([]byte(ch), func() { quit = true })...)
			}
			if string(got) != tc.want || quit != tc.wantQuit {
				t.Errorf("delivered %q quit %v, want %q %v", got, quit, tc.want, tc.wantQuit)
			}
		})
	}
}

// TestConsoleReaderStops checks that stop joins the reader even while its
// input stays open and silent, and that input before that is delivered.
func TestConsoleReaderStops(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	c, err := newConsole(r)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 10)
	c.start(func(p []byte) { got <- string(p) }, func() {})
	w.Write([]byte("hello"))
	select {
	case s := <-got:
		if s != "hello" {
			t.Errorf("delivered %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("input not delivered")
	}
	done := make(chan struct{})
	go func() { c.stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("stop did not return while the input was open")
	}
}
