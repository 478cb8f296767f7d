// Command apiresume is a test helper for an error-policy stop under flushvm
// run (integration/faults_nested_test.go): it waits until flushvm's stderr
// (a file) says a disk's error policy stopped the VM, checks that GET
// /stats counts the held request and that it stays held while the VM is
// paused, then POSTs /resume on the --api socket and prints one line:
//
//	APIRESUME held=N still=N resumed=N
//
// Usage: apiresume SOCKET STDERR-FILE
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/flushvm/flushvm/protocol"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: apiresume SOCKET STDERR-FILE")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Printf("APIRESUME failed: %v\n", err)
		os.Exit(1)
	}
}

func run(sock, errFile string) error {
	deadline := time.Now().Add(4 * time.Minute)
	for {
		b, _ := os.ReadFile(errFile)
		if bytes.Contains(b, []byte(protocol.ErrorStopPrefix)) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no error-policy stop in %s after 4 min", errFile)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	held, err := heldNow(c)
	if err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	still, err := heldNow(c)
	if err != nil {
		return err
	}
	var r struct {
		Resumed int `json:"resumed"`
	}
	if err := call(c, "POST", "/resume", &r); err != nil {
		return err
	}
	fmt.Printf("APIRESUME held=%d still=%d resumed=%d\n", held, still, r.Resumed)
	return nil
}

// heldNow is disk 0's held count.
func heldNow(c *http.Client) (uint64, error) {
	var st struct {
		Disks []struct {
			Held uint64 `json:"held"`
		} `json:"disks"`
	}
	if err := call(c, "GET", "/stats", &st); err != nil {
		return 0, err
	}
	if len(st.Disks) == 0 {
		return 0, fmt.Errorf("GET /stats: no disks")
	}
	return st.Disks[0].Held, nil
}

func call(c *http.Client, method, path string, out any) error {
	req, err := http.NewRequest(method, "http://flushvm"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: status %d", method, path, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
