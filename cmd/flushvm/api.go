package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/disk"
)

// The --api control socket: HTTP/1.1 with JSON bodies on a unix socket.
//
//	GET  /stats             the --stats document as it is now
//	POST /disks/{n}/cache   body {"wce": false|true}: turn disk n's (0-based)
//	                        guest-visible write cache off or on
//	POST /power-cut         cut the power now (disks with powercut=)
//	GET  /disks/{n}/faults  disk n's fault rules, their counters, bad
//	                        sectors and losses (blk.FaultStats)
//	PUT  /disks/{n}/faults  body {"rules": ["write nth=3 eio", ...]}:
//	                        replace disk n's fault rules ([] clears them)
//	POST /resume            retry every request an error policy of stop
//	                        holds, and resume the VM
//	POST /disks/{n}/fail-held
//	                        fail disk n's held requests with IOERR
//
// Errors are {"error": "..."} with a 4xx status.

// errNoPowerCutDisk reports a power cut asked of a machine without a
// powercut= disk.
var errNoPowerCutDisk = errors.New("no disk has powercut=POLICY")

// errPowerAlreadyCut reports a second power cut.
var errPowerAlreadyCut = errors.New("the power is already cut")

// errNoSuchDisk reports a disk index out of range.
var errNoSuchDisk = errors.New("no such disk")

// errWCERefused reports a write-cache change the device ignored, as it
// must when the driver did not negotiate VIRTIO_BLK_F_CONFIG_WCE (or
// FLUSH, to turn the cache on).
var errWCERefused = errors.New("the device kept its write cache state (the driver did not negotiate CONFIG_WCE, or cannot FLUSH)")

// controller is what the API controls: the running machine in flushvm run,
// a fake in tests.
type controller interface {
	// Stats returns the stats document now.
	Stats() disk.Stats
	// SetWriteCache turns disk i's write cache on or off.
	SetWriteCache(i int, on bool) error
	// PowerCut cuts the power now.
	PowerCut() error
	// SetFaults replaces disk i's fault rules.
	SetFaults(i int, rules []blk.FaultRule) error
	// Faults returns disk i's fault layer's account.
	Faults(i int) (blk.FaultStats, error)
	// Resume retries every held request and resumes the VM; it returns
	// how many requests it retried.
	Resume() int
	// FailHeld fails disk i's held requests and returns how many.
	FailHeld(i int) (int, error)
}

// newAPIHandler returns the API's HTTP handler over c.
func newAPIHandler(c controller) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, c.Stats())
	})
	mux.HandleFunc("POST /disks/{n}/cache", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.PathValue("n"))
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("disk %q: want a disk index (0 for vda)", r.PathValue("n")))
			return
		}
		var body struct {
			WCE *bool `json:"wce"`
		}
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil || body.WCE == nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("want the body {\"wce\": true|false} (the cache mode itself cannot change at run time): %v", err))
			return
		}
		switch err := c.SetWriteCache(n, *body.WCE); {
		case errors.Is(err, errNoSuchDisk):
			writeError(w, http.StatusNotFound, err)
		case err != nil:
			writeError(w, http.StatusConflict, err)
		default:
			writeJSON(w, http.StatusOK, map[string]bool{"wce": *body.WCE})
		}
	})
	mux.HandleFunc("POST /power-cut", func(w http.ResponseWriter, r *http.Request) {
		if err := c.PowerCut(); err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]bool{"power_cut": true})
	})
	handleFaults(mux, c)
	return mux
}

// handleFaults adds the fault and error-policy routes.
func handleFaults(mux *http.ServeMux, c controller) {
	mux.HandleFunc("GET /disks/{n}/faults", func(w http.ResponseWriter, r *http.Request) {
		n, ok := diskIndex(w, r)
		if !ok {
			return
		}
		fs, err := c.Faults(n)
		if err != nil {
			writeDiskError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, fs)
	})
	mux.HandleFunc("PUT /disks/{n}/faults", func(w http.ResponseWriter, r *http.Request) {
		n, ok := diskIndex(w, r)
		if !ok {
			return
		}
		rules, err := decodeRules(w, r)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		if err := c.SetFaults(n, rules); err != nil {
			writeDiskError(w, err)
			return
		}
		fs, _ := c.Faults(n)
		writeJSON(w, http.StatusOK, fs)
	})
	mux.HandleFunc("POST /resume", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]int{"resumed": c.Resume()})
	})
	mux.HandleFunc("POST /disks/{n}/fail-held", func(w http.ResponseWriter, r *http.Request) {
		n, ok := diskIndex(w, r)
		if !ok {
			return
		}
		failed, err := c.FailHeld(n)
		if err != nil {
			writeDiskError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"failed": failed})
	})
}

// diskIndex reads {n}, answering 400 when it is not a disk index.
func diskIndex(w http.ResponseWriter, r *http.Request) (int, bool) {
	n, err := strconv.Atoi(r.PathValue("n"))
	if err != nil || n < 0 {
		writeError(w, http.StatusBadRequest, fmt.Errorf("disk %q: want a disk index (0 for vda)", r.PathValue("n")))
		return 0, false
	}
	return n, true
}

// writeDiskError answers 404 for a missing disk, else 409.
func writeDiskError(w http.ResponseWriter, err error) {
	if errors.Is(err, errNoSuchDisk) {
		writeError(w, http.StatusNotFound, err)
		return
	}
	writeError(w, http.StatusConflict, err)
}

// decodeRules reads a PUT /disks/{n}/faults body.
func decodeRules(w http.ResponseWriter, r *http.Request) ([]blk.FaultRule, error) {
	var body struct {
		Rules *[]string `json:"rules"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, blk.MaxFaultFile))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil || body.Rules == nil {
		return nil, fmt.Errorf("want the body {\"rules\": [\"write nth=3 eio\", ...]}: %v", err)
	}
	if len(*body.Rules) > blk.MaxFaultRules {
		return nil, fmt.Errorf("%d rules, at most %d", len(*body.Rules), blk.MaxFaultRules)
	}
	rules := make([]blk.FaultRule, 0, len(*body.Rules))
	for i, text := range *body.Rules {
		rule, err := blk.ParseFaultRule(text)
		if err != nil {
			return nil, fmt.Errorf("rule %d: %w", i, err)
		}
		rules = append(rules, rule)
	}
	return rules, nil
}

// diskControl is the part of a controller every command with disks
// shares: write cache, faults, held requests.
type diskControl struct {
	disks []*disk.Disk
}

// disk returns disk i or errNoSuchDisk.
func (c *diskControl) disk(i int) (*disk.Disk, error) {
	if i < 0 || i >= len(c.disks) {
		return nil, fmt.Errorf("%w: disk %d (there are %d)", errNoSuchDisk, i, len(c.disks))
	}
	return c.disks[i], nil
}

// Stats returns the stats document now.
func (c *diskControl) Stats() disk.Stats { return disk.Collect(c.disks) }

// SetWriteCache turns disk i's write cache on or off as the guest would
// (blk.Device.SetWriteCache). The guest is not notified.
func (c *diskControl) SetWriteCache(i int, on bool) error {
	d, err := c.disk(i)
	if err != nil {
		return err
	}
	if !d.Dev.SetWriteCache(on) {
		return errWCERefused
	}
	return nil
}

// SetFaults replaces disk i's fault rules.
func (c *diskControl) SetFaults(i int, rules []blk.FaultRule) error {
	d, err := c.disk(i)
	if err != nil {
		return err
	}
	return d.SetFaultRules(rules)
}

// Faults returns disk i's fault account.
func (c *diskControl) Faults(i int) (blk.FaultStats, error) {
	d, err := c.disk(i)
	if err != nil {
		return blk.FaultStats{}, err
	}
	return d.FaultStats()
}

// resumeDisks retries every disk's held requests.
func (c *diskControl) resumeDisks() int {
	n := 0
	for _, d := range c.disks {
		n += d.Dev.Resume()
	}
	return n
}

// FailHeld fails disk i's held requests.
func (c *diskControl) FailHeld(i int) (int, error) {
	d, err := c.disk(i)
	if err != nil {
		return 0, err
	}
	return d.Dev.FailHeld(), nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error": "encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

// apiServer serves the API on a unix socket.
type apiServer struct {
	path string
	srv  *http.Server
	done chan error
}

// startAPI listens on the unix socket path (replacing a stale socket
// there, never another kind of file nor a socket someone listens on) and
// serves h.
func startAPI(path string, h http.Handler) (*apiServer, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	// Listen on a neighbour name, then rename it into place: a client that
	// waits for path to appear must never find a socket that is bound but
	// not listening yet (connect would be refused).
	tmp := path + ".~"
	_ = os.Remove(tmp)
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	s := &apiServer{path: path, srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, done: make(chan error, 1)}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return s, nil
}

// Close stops serving (letting requests in progress finish), removes the
// socket and returns the server's error, if any.
func (s *apiServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if serr := <-s.done; err == nil {
		err = serr
	}
	if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}
