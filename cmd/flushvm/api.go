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

	"github.com/flushvm/flushvm/disk"
)

// The --api control socket: HTTP/1.1 with JSON bodies on a unix socket.
//
//	GET  /stats             the --stats document as it is now
//	POST /disks/{n}/cache   body {"wce": false|true}: turn disk n's (0-based)
//	                        guest-visible write cache off or on
//	POST /power-cut         cut the power now (disks with powercut=)
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
	return mux
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
