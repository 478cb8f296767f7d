package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/disk"
	"github.com/flushvm/flushvm/kvm"
)

// fakeController is a machine-less controller with two disks.
type fakeController struct {
	mu   sync.Mutex
	wce  []bool
	cuts int
	// refuse makes SetWriteCache fail as a device without CONFIG_WCE does.
	refuse bool
	// rules are the fault rules set last; resumed counts Resume calls.
	rules   []string
	resumed int
}

func (f *fakeController) Stats() disk.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	var doc disk.Stats
	for i, w := range f.wce {
		doc.Disks = append(doc.Disks, disk.DiskStats{Stats: blk.Stats{Path: fmt.Sprintf("d%d.img", i), Cache: blk.CacheWriteback, WCE: w}})
	}
	return doc
}

func (f *fakeController) SetWriteCache(i int, on bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i >= len(f.wce) {
		return fmt.Errorf("%w: disk %d", errNoSuchDisk, i)
	}
	if f.refuse {
		return errWCERefused
	}
	f.wce[i] = on
	return nil
}

func (f *fakeController) PowerCut() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cuts++
	if f.cuts > 1 {
		return errPowerAlreadyCut
	}
	return nil
}

// SetFaults keeps the rules' texts.
func (f *fakeController) SetFaults(i int, rules []blk.FaultRule) error {
	if i >= len(f.wce) {
		return fmt.Errorf("%w: disk %d", errNoSuchDisk, i)
	}
	f.rules = nil
	for _, r := range rules {
		f.rules = append(f.rules, r.String())
	}
	return nil
}

func (f *fakeController) Faults(i int) (blk.FaultStats, error) {
	if i >= len(f.wce) {
		return blk.FaultStats{}, fmt.Errorf("%w: disk %d", errNoSuchDisk, i)
	}
	var fs blk.FaultStats
	for _, r := range f.rules {
		fs.Rules = append(fs.Rules, blk.FaultRuleStats{Rule: r})
	}
	return fs, nil
}

func (f *fakeController) Resume() int { f.resumed++; return 2 }

func (f *fakeController) FailHeld(i int) (int, error) {
	if i >= len(f.wce) {
		return 0, fmt.Errorf("%w: disk %d", errNoSuchDisk, i)
	}
	return 1, nil
}

func TestAPIHandler(t *testing.T) {
	type req struct {
		method, path, body string
		status             int
		want               string // substring of the answer
	}
	tests := []struct {
		name   string
		refuse bool
		reqs   []req
		wce    []bool // after the requests
		cuts   int
	}{
		{"stats", false, []req{{"GET", "/stats", "", 200, `"path": "d1.img"`}}, []bool{true, true}, 0},
		{"wce off then stats", false, []req{
			{"POST", "/disks/1/cache", `{"wce": false}`, 200, `"wce": false`},
			{"GET", "/stats", "", 200, `"wce": false`},
		}, []bool{true, false}, 0},
		{"wce refused", true, []req{{"POST", "/disks/0/cache", `{"wce": false}`, 409, "CONFIG_WCE"}}, []bool{true, true}, 0},
		{"no such disk", false, []req{{"POST", "/disks/2/cache", `{"wce": false}`, 404, "no such disk"}}, []bool{true, true}, 0},
		{"bad disk index", false, []req{{"POST", "/disks/vda/cache", `{"wce": false}`, 400, "disk index"}}, []bool{true, true}, 0},
		{"cache mode is not settable", false, []req{{"POST", "/disks/0/cache", `{"mode": "unsafe"}`, 400, "cannot change"}}, []bool{true, true}, 0},
		{"empty body", false, []req{{"POST", "/disks/0/cache", ``, 400, "wce"}}, []bool{true, true}, 0},
		{"wrong method", false, []req{{"GET", "/power-cut", "", 405, ""}}, []bool{true, true}, 0},
		{"set and read fault rules", false, []req{
			{"PUT", "/disks/1/faults", `{"rules": ["write sectors=8 eio once", "flush nth=2 eio"]}`, 200, `"rule": "flush nth=2 eio"`},
			{"GET", "/disks/1/faults", "", 200, `"rule": "write sectors=8-8 eio once"`},
			{"PUT", "/disks/1/faults", `{"rules": []}`, 200, `"rules": null`},
		}, []bool{true, true}, 0},
		{"bad fault rule", false, []req{{"PUT", "/disks/0/faults", `{"rules": ["write eio", "write sideways"]}`, 400, "rule 1"}}, []bool{true, true}, 0},
		{"fault body without rules", false, []req{{"PUT", "/disks/0/faults", `{}`, 400, "rules"}}, []bool{true, true}, 0},
		{"faults of no such disk", false, []req{{"GET", "/disks/3/faults", "", 404, "no such disk"}}, []bool{true, true}, 0},
		{"resume and fail held", false, []req{
			{"POST", "/resume", "", 200, `"resumed": 2`},
			{"POST", "/disks/0/fail-held", "", 200, `"failed": 1`},
			{"POST", "/disks/9/fail-held", "", 404, "no such disk"},
		}, []bool{true, true}, 0},
		{"power cut twice", false, []req{
			{"POST", "/power-cut", "", 202, `"power_cut": true`},
			{"POST", "/power-cut", "", 409, "already cut"},
		}, []bool{true, true}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fc := &fakeController{wce: []bool{true, true}, refuse: tc.refuse}
			h := newAPIHandler(fc)
			for _, r := range tc.reqs {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(r.method, r.path, strings.NewReader(r.body)))
				if rec.Code != r.status || !strings.Contains(rec.Body.String(), r.want) {
					t.Fatalf("%s %s %s: %d %q, want %d with %q", r.method, r.path, r.body, rec.Code, rec.Body.String(), r.status, r.want)
				}
				if r.status < 300 && !json.Valid(rec.Body.Bytes()) {
					t.Fatalf("%s %s: answer is not JSON: %q", r.method, r.path, rec.Body.String())
				}
			}
			if fmt.Sprint(fc.wce) != fmt.Sprint(tc.wce) || fc.cuts != tc.cuts {
				t.Fatalf("wce %v cuts %d, want %v %d", fc.wce, fc.cuts, tc.wce, tc.cuts)
			}
		})
	}
}

// unixClient is an HTTP client that talks to the unix socket path.
func unixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// TestAPISocket serves the API on a real unix socket and checks it
// replaces a stale socket, refuses to replace another file, and removes
// its socket on Close.
func TestAPISocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	fc := &fakeController{wce: []bool{true}}
	s, err := startAPI(sock, newAPIHandler(fc))
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	c := unixClient(sock)
	resp, err := c.Post("http://flushvm/power-cut", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || fc.cuts != 1 {
		t.Fatalf("POST /power-cut: %d, cuts %d", resp.StatusCode, fc.cuts)
	}
	if _, err := startAPI(sock, newAPIHandler(fc)); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("startAPI over a live socket: %v", err)
	}
	c.CloseIdleConnections()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}

	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, []byte("keep me"), 0o644)
	if _, err := startAPI(regular, newAPIHandler(fc)); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("startAPI over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(regular); string(b) != "keep me" {
		t.Fatal("startAPI touched a regular file")
	}
}

// tinyLoopKernel is tinyKernel without the debug exit: it prints "ok" and
// spins, so only a power cut (or a signal) ends it.
func tinyLoopKernel() []byte {
	img := tinyKernel()
	code := img[2*512+0x200:]
	i := bytes.Index(code, []byte{0xb0, 0x03, 0xe6, 0xf4})
	copy(code[i:], []byte{0x90, 0x90, 0x90, 0x90})
	return img
}

// TestRunPowerCutTinyGuest runs flushvm run end to end on the host's KVM
// with a guest that never ends by itself: the after= trigger and the
// API's POST /power-cut each end it with exitPowerCut, one summary line,
// the cut in --stats and a write log with the power-cut mark.
func TestRunPowerCutTinyGuest(t *testing.T) {
	if kvm.Available() != nil {
		t.Skip("no usable KVM")
	}
	for _, how := range []string{"after", "api"} {
		t.Run(how, func(t *testing.T) {
			dir := t.TempDir()
			kernel := filepath.Join(dir, "bzImage")
			if err := os.WriteFile(kernel, tinyLoopKernel(), 0o644); err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(dir, "disk.img")
			if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			stats, wlog, sock := filepath.Join(dir, "stats.json"), filepath.Join(dir, "run.wlog"), filepath.Join(dir, "api.sock")
			args := []string{"run", "--kernel", kernel, "--mem", "64M",
				"--disk", "path=" + img + ",cache=writeback,powercut=random-subset",
				"--seed", "9", "--write-log", wlog, "--stats", stats}
			statsSeen := make(chan string, 1)
			if how == "after" {
				statsSeen <- `"volatile_cache"` // no API to ask
				args = append(args, "--power-cut", "after=300ms")
			} else {
				args = append(args, "--api", sock)
				go func() {
					waitFor(t, func() bool { _, err := os.Stat(sock); return err == nil })
					c := unixClient(sock)
					var got []byte
					if resp, err := c.Get("http://flushvm/stats"); err == nil {
						got, _ = io.ReadAll(resp.Body)
						resp.Body.Close()
					}
					statsSeen <- string(got)
					if resp, err := c.Post("http://flushvm/power-cut", "", nil); err == nil {
						resp.Body.Close()
					}
				}()
			}
			var stdout, stderr bytes.Buffer
			if st := dispatch(args, &stdout, &stderr); st != exitPowerCut {
				t.Fatalf("status %d, want %d; stderr: %s", st, exitPowerCut, stderr.String())
			}
			// The cut came after the answer to GET /stats.
			if got := <-statsSeen; !strings.Contains(got, `"volatile_cache"`) {
				t.Errorf("GET /stats while running: %q", got)
			}
			line := strings.TrimSpace(stderr.String())
			if strings.Count(line, "\n") != 0 || !strings.Contains(line, "0 unstable writes") ||
				!strings.Contains(line, "flushvm replay --log "+wlog) || !strings.Contains(line, "--seed 9") {
				t.Errorf("summary %q", line)
			}
			b, err := os.ReadFile(stats)
			if err != nil {
				t.Fatal(err)
			}
			var doc disk.Stats
			if err := json.Unmarshal(b, &doc); err != nil {
				t.Fatal(err)
			}
			pc := doc.Disks[0].PowerCut
			if pc == nil || pc.Report == nil || pc.Report.Policy != "random-subset" || pc.Report.Seed != 9 || doc.Disks[0].VolatileCache == nil {
				t.Fatalf("stats %s: no power_cut report", b)
			}
			f, err := os.Open(wlog)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			lr, err := blk.NewWriteLogReader(f)
			if err != nil {
				t.Fatal(err)
			}
			e, err := lr.Next()
			if err != nil || !e.IsMark() {
				t.Fatalf("write log entry %+v, %v; want the power-cut mark", e, err)
			}
		})
	}
}

// TestRunController checks the API's view of real devices (no machine):
// the write cache follows POST /disks/N/cache, and a power cut needs a
// powercut= disk and happens once.
func TestRunController(t *testing.T) {
	dir := t.TempDir()
	open := func(spec string, ps *disk.PowerSupply) *disk.Disk {
		p := filepath.Join(dir, fmt.Sprintf("d%d.img", len(spec)))
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		sp, err := blk.ParseSpec("path=" + p + spec)
		if err != nil {
			t.Fatal(err)
		}
		d, err := disk.Open(sp, disk.Options{Supply: ps})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Dev.Close() })
		return d
	}
	plain := &runController{diskControl: diskControl{disks: []*disk.Disk{open(",cache=writeback", nil)}}}
	h := newAPIHandler(plain)
	for _, tc := range []struct {
		body string
		want bool
	}{{`{"wce": false}`, false}, {`{"wce": true}`, true}} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/disks/0/cache", strings.NewReader(tc.body)))
		if rec.Code != 200 || plain.disks[0].Dev.WriteCache() != tc.want {
			t.Fatalf("%s: %d %s, write cache %v", tc.body, rec.Code, rec.Body, plain.disks[0].Dev.WriteCache())
		}
	}
	if err := plain.SetWriteCache(1, true); !errors.Is(err, errNoSuchDisk) {
		t.Fatalf("disk 1 of 1: %v", err)
	}
	if err := plain.PowerCut(); !errors.Is(err, errNoPowerCutDisk) {
		t.Fatalf("power cut without a powercut= disk: %v", err)
	}

	ps := disk.NewPowerSupply()
	stops := 0
	ps.Stop = func() { stops++ }
	pc := &runController{diskControl: diskControl{disks: []*disk.Disk{open(",powercut=lose-all", ps)}}, ps: ps}
	if err := pc.PowerCut(); err != nil || !ps.IsCut() || stops != 1 {
		t.Fatalf("power cut: %v (cut %v, stops %d)", err, ps.IsCut(), stops)
	}
	if err := pc.PowerCut(); !errors.Is(err, errPowerAlreadyCut) || stops != 1 {
		t.Fatalf("second power cut: %v (stops %d)", err, stops)
	}
	if st := pc.Stats(); st.Disks[0].VolatileCache == nil || !st.Disks[0].VolatileCache.PowerCut {
		t.Fatalf("stats after the cut: %+v", st.Disks[0])
	}
}

// TestAPIFaultsOnARealDisk sets fault rules on an open disk through the
// API (a vhost-user backend's controller) and sees them fire on the
// disk's backend, counted in GET /disks/0/faults and in /stats.
func TestAPIFaultsOnARealDisk(t *testing.T) {
	img := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	sp, err := blk.ParseSpec("path=" + img)
	if err != nil {
		t.Fatal(err)
	}
	d, err := disk.Open(sp, disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Dev.Close()
	h := newAPIHandler(&vhostController{diskControl: diskControl{disks: []*disk.Disk{d}}})
	do := func(method, path, body string) string {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
		if rec.Code != 200 {
			t.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body)
		}
		return rec.Body.String()
	}
	do("PUT", "/disks/0/faults", `{"rules": ["write sectors=0-7 drop"]}`)
	v := blk.NewVec(1)
	v.Append(bytes.Repeat([]byte{1}, 4096))
	if err := d.Dev.Backend().WriteAt(v, 0); err != nil {
		t.Fatal(err)
	}
	if got := do("GET", "/disks/0/faults", ""); !strings.Contains(got, `"fired": 1`) || !strings.Contains(got, `"how": "dropped"`) {
		t.Errorf("faults after a dropped write:\n%s", got)
	}
	if got := do("GET", "/stats", ""); !strings.Contains(got, `"faults"`) {
		t.Errorf("/stats has no faults:\n%s", got)
	}
	if b, _ := os.ReadFile(img); b[0] != 0 {
		t.Error("the dropped write reached the image")
	}
	if got := do("POST", "/resume", ""); !strings.Contains(got, `"resumed": 0`) {
		t.Errorf("resume with nothing held: %s", got)
	}
}
