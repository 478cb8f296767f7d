package blk

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"io"
	"os"
	"testing"
)

// kernelLogGz is a log written by Linux 6.1's dm-log-writes target (the
// first 740352 bytes of its log device, gzipped): a guest under QEMU built
// a log-writes device over a 16 MiB virtio disk and ran, with O_DIRECT,
// the workload kernelLogWorkload replays below (fdatasync = FLUSH), then
// removed the device, which logs the "dm-log-writes-end" mark.
const kernelLogGz = "" +
	"H4sIAAAAAAACA+3b6femcx3A8fs3pvplyYyiCdkKLaaQZInIliJLJFsLM2Yxi2aGUbaxZZcWbci+" +
	"JJSy7+2WUoS0qbTYFS2Wos5pxgPzJ8z79XlyPX6/rnNf9znf8/nOmDhz9l4zJw+GBnNnkXnPwYiB" +
	"Cc0cBMkZGl58qde+/s1rrrvRFu/fcbc9J398/0M+dcLnTznra9+88oYf/Pjnv/rDg3/913MjF1ni" +
	"NSus+pa3v3OT9273oY/sNXXWAYcdc9IXv3ruRd++5js3//Se3/7pkSefGbzsFUsu+7o3rbHOuzbf" +
	"eodd95i0z+yDjzz+c18584JvXHH992+785e/f+Dxf/5noYVHj1l+lbFrrf/uLbfd6cPjp8z85KFH" +
	"f/oLp53z9W9dfdOPbr/7N398+Imn//vSxV61zEpvXP0dG2621Qd2+djE6fsddMRxn/3yGedfcvl1" +
	"37v1jnt/95fH/vHvES8f9erlVl7tbett/J5tPrj7uL1nfGLOUSeefOrZF1561Y0//Mldv77/ob89" +
	"9fxLFn3l0iu+4a1rb7Dp+7bf+aMTpu174OHHfuZLp5938WXXfveWn/3ivj8/+vdn6/0g2/0g2/0g" +
	"2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g" +
	"2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g" +
	"2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g" +
	"2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g" +
	"2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g" +
	"2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g" +
	"2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/0g2/2D+WZoYFIz7MWXxxex3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y3Q+y" +
	"3Q+y3Q+y3Q+y3Q+y3b/RYO6MGpji+EW2+0G2+0G2+0G2+0G2+0G2+0G2+0G2+0G2+0G2+0G2+0G2" +
	"+0G2+0G2+0G2+0G2++ffBxiyEtGaFxZ/huc+RhJJzfCoF71+Exv/gPZ/QNr/AWn/B6T9H5D2f0Da" +
	"/wFp/wfkgt/v/Dc+YwYOfsPjS+r8B6TzH5DOf0A6/wHp/Aek8x+Q7n+BdP8LpPtfIN3/Aun+F0j3" +
	"v0C6/wVywekH2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H2e4H" +
	"2e4H2e4H2e4H2e4H2e4H2e4fGjP4/4wYmOL4Rbb7Qbb755/hec/R857jpo6dMn3C2NkzJs0aP3Ps" +
	"+GnjfDIXqPkfaFDMPwBMCwA="

func pcPattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7) + byte(i>>9)
	}
	return p
}

// kernelLogWorkload runs, on b, what the guest ran on the log-writes device.
func kernelLogWorkload(t *testing.T, b Backend) {
	t.Helper()
	v := NewVec(1)
	w := func(off int64, n int, seed byte) {
		v.Reset()
		v.Append(pcPattern(n, seed))
		if err := b.WriteAt(v, off); err != nil {
			t.Fatal(err)
		}
	}
	sync := func() {
		if err := b.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	w(0, 64<<10, 1)
	sync()
	w(1<<20, 128<<10, 2)
	w(32<<10, 8<<10, 3)
	sync()
	if err := b.Discard(2<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	w(2<<20+4096, 4096, 4)
	sync()
	w(3<<20, 512<<10, 5)
	w(3<<20+512, 1024, 6)
}

func kernelLog(t *testing.T) []byte {
	t.Helper()
	z, err := gzip.NewReader(base64.NewDecoder(base64.StdEncoding, bytes.NewReader([]byte(kernelLogGz))))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWriteLogMatchesLinux: the WriteLog writes, for the same workload,
// exactly the bytes Linux's dm-log-writes wrote, and a replay of Linux's
// log to its end gives exactly the disk the workload leaves.
func TestWriteLogMatchesLinux(t *testing.T) {
	kern := kernelLog(t)
	path := t.TempDir() + "/log"
	disk := newMemBackend(16 << 20)
	l, err := CreateWriteLog(disk, path)
	if err != nil {
		t.Fatal(err)
	}
	kernelLogWorkload(t, l)
	if err := l.Mark("dm-log-writes-end"); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	ours, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(ours) != len(kern) {
		t.Fatalf("our log is %d bytes, Linux's %d", len(ours), len(kern))
	}
	for i := 0; i < len(ours); i += WriteLogSectorSize {
		if !bytes.Equal(ours[i:i+WriteLogSectorSize], kern[i:i+WriteLogSectorSize]) {
			t.Fatalf("logs differ first in sector %d", i/WriteLogSectorSize)
		}
	}

	lr, err := NewWriteLogReader(bytes.NewReader(kern))
	if err != nil {
		t.Fatal(err)
	}
	img := newMemBackend(16 << 20)
	rep, err := ReplayWriteLog(lr, img, ReplayOptions{Policy: PowerCutPolicy{Kind: PowerCutKeepAll}, ToEnd: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Unstable != 7 || !bytes.Equal(img.data, disk.data) {
		t.Fatalf("replay of Linux's log: %s; image equal: %v", rep.Summary(), bytes.Equal(img.data, disk.data))
	}
}
