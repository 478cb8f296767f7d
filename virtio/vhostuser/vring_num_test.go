package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/flushvm/flushvm/blk"
	"github.com/flushvm/flushvm/virtio"
)

// TestRingSizes: a frontend may give a ring any size a split ring can have
// (a power of two, virtio 1.2 2.7) up to the device's maximum, as QEMU's
// queue-size property and Linux's shrunk rings do, and requests of seg_max
// segments are served on it through an indirect table, even on rings
// shorter than the request. Other sizes end the session with ErrBadRing.
func TestRingSizes(t *testing.T) {
	const maxSize = 64
	cases := []struct {
		size uint32
		ok   bool
	}{
		{1, true},
		{4, true},
		{32, true},
		{maxSize, true},
		{0, false},
		{48, false},
		{2 * maxSize, false},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%d entries", tc.size), func(t *testing.T) {
			dev, _ := openBlk(t, 1, maxSize)
			f := startFrontend(t, dev)
			f.negotiate(allProto, dev.Features()|FeatureProtocolFeatures)
			f.setMemTable()
			if !tc.ok {
				f.send(reqSetVringNum, 0, state(0, tc.size))
				if err := f.wait(); !errors.Is(err, ErrBadRing) {
					t.Fatalf("Serve = %v, want ErrBadRing", err)
				}
				return
			}
			r := f.newRing(0, uint16(tc.size))
			f.setupRing(0, r, 0)
			f.mustAck(reqSetVringEnable, state(0, 1))
			segMax := blkSegMax(dev)
			data := make([][]byte, segMax)
			sizes := make([]uint32, segMax)
			for i := range data {
				data[i] = bytes.Repeat([]byte{byte(i + 1)}, 512)
				sizes[i] = 512
			}
			w := virtio.MockRequest{Header: blkHeader(blk.TypeOut, 0), Out: data, Status: 1, Indirect: true}
			if _, st := f.submitWait(r, w); st != blk.StatusOK {
				t.Fatalf("write of %d segments: status %d", segMax, st)
			}
			rd := virtio.MockRequest{Header: blkHeader(blk.TypeIn, 0), In: sizes, Status: 1, Indirect: true}
			s, st := f.submitWait(r, rd)
			if st != blk.StatusOK {
				t.Fatalf("read of %d segments: status %d", segMax, st)
			}
			for i, b := range s.In {
				if got, _ := r.d.Read(b); !bytes.Equal(got, data[i]) {
					t.Fatalf("segment %d read back differs", i)
				}
			}
			if err := f.end(); err != nil {
				t.Fatalf("Serve = %v", err)
			}
		})
	}
}

// blkSegMax is the seg_max dev advertises (struct virtio_blk_config).
func blkSegMax(dev *blk.Device) int {
	var b [4]byte
	dev.ReadConfig(12, b[:])
	return int(binary.LittleEndian.Uint32(b[:]))
}
