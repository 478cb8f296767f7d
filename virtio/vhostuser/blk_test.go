package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/virtio"
)

// blkHeader is struct virtio_blk_outhdr.
func blkHeader(typ uint32, sector uint64) []byte {
	h := binary.LittleEndian.AppendUint32(nil, typ)
	h = binary.LittleEndian.AppendUint32(h, 0)
	return binary.LittleEndian.AppendUint64(h, sector)
}

// openBlk opens flushvm's virtio-blk device on a fresh 1 MiB image, closed
// when the test ends, and returns it with the image's path.
func openBlk(t *testing.T, queues int, queueSize uint16) (*blk.Device, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := blk.ParseSpec("path=" + path)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := blk.Open(spec, blk.Options{Queues: queues, MaxQueueSize: queueSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev, path
}

// submitWait submits one request on r and waits for its completion,
// returning its status byte.
func (f *testFrontend) submitWait(r *ring, req virtio.MockRequest) (virtio.MockSubmission, byte) {
	f.t.Helper()
	s, err := r.d.Submit(req)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := r.d.Kick(); err != nil {
		f.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		u, ok, err := r.d.PopUsed()
		if err != nil {
			f.t.Fatal(err)
		}
		if ok {
			if u.Head != s.Head {
				f.t.Fatalf("completion for head %d, want %d", u.Head, s.Head)
			}
			st, err := r.d.Read(s.Status)
			if err != nil {
				f.t.Fatal(err)
			}
			return s, st[0]
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("request not completed; log:\n%s", f.logs)
		}
		waitFD(r.call, 100*time.Millisecond)
	}
}

// TestBlkDevice serves flushvm's real virtio-blk device over vhost-user:
// writes land in the host file, reads return them, FLUSH syncs, the
// guest's writeback toggle arrives through SET_CONFIG, and a hostile
// message afterwards ends the session without losing any completed write.
func TestBlkDevice(t *testing.T) {
	dev, path := openBlk(t, 2, 64)

	f := startFrontend(t, dev)
	features := dev.Features() | FeatureProtocolFeatures
	f.negotiate(allProto, features)
	f.setMemTable()
	r0, r1 := f.newRing(0, 64), f.newRing(1, 64)
	f.setupRing(0, r0, 0)
	f.setupRing(1, r1, 0)
	f.mustAck(reqSetVringEnable, state(0, 1))
	f.mustAck(reqSetVringEnable, state(1, 1))

	data := bytes.Repeat([]byte("flushvm!"), 512) // 4 KiB
	if _, st := f.submitWait(r0, virtio.MockRequest{Header: blkHeader(blk.TypeOut, 16), Out: [][]byte{data}, Status: 1}); st != blk.StatusOK {
		t.Fatalf("write status %d", st)
	}
	s, st := f.submitWait(r1, virtio.MockRequest{Header: blkHeader(blk.TypeIn, 16), In: []uint32{4096}, Status: 1})
	if st != blk.StatusOK {
		t.Fatalf("read status %d", st)
	}
	if got, _ := r1.d.Read(s.In[0]); !bytes.Equal(got, data) {
		t.Errorf("read back differs from what was written")
	}
	if _, st := f.submitWait(r0, virtio.MockRequest{Header: blkHeader(blk.TypeFlush, 0), Status: 1}); st != blk.StatusOK {
		t.Fatalf("flush status %d", st)
	}
	// The guest turns the write cache off (Linux: echo "write through" >
	// /sys/block/vda/cache_type): QEMU forwards it as SET_CONFIG.
	cfg := binary.LittleEndian.AppendUint32(nil, 32)
	cfg = binary.LittleEndian.AppendUint32(cfg, 1)
	cfg = binary.LittleEndian.AppendUint32(cfg, 0)
	f.mustAck(reqSetConfig, append(cfg, 0))
	if _, st := f.submitWait(r0, virtio.MockRequest{Header: blkHeader(blk.TypeOut, 24), Out: [][]byte{data}, Status: 1}); st != blk.StatusOK {
		t.Fatalf("write status %d", st)
	}
	// A hostile message ends the session; the device is reset first.
	f.send(reqSetVringNum, 0, state(7, 64))
	if err := f.wait(); !errors.Is(err, ErrBadRing) {
		t.Fatalf("Serve = %v, want ErrBadRing", err)
	}
	st2 := dev.Stats()
	// Two host syncs: the FLUSH, and the write made while the guest had
	// the cache off (write-through: durable before completion).
	if st2.Writes != 2 || st2.Reads != 1 || st2.Flushes != 1 || st2.HostSyncs != 2 || st2.WCEChanges != 1 {
		t.Errorf("stats %+v", st2)
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(file[16*512:16*512+4096], data) || !bytes.Equal(file[24*512:24*512+4096], data) {
		t.Errorf("host file lacks the written data")
	}
}
