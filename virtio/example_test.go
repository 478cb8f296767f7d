package virtio_test

import (
	"encoding/binary"
	"fmt"

	"github.com/flushvm/flushvm/virtio"
)

// A virtio_blk-style read request travels from the mock driver through the
// device side of the queue and back.
func ExampleMockDriver() {
	d, err := virtio.NewMockDriver(virtio.MockConfig{Size: 128, EventIdx: true, IndirectDesc: true})
	if err != nil {
		panic(err)
	}
	defer d.Close()
	q, err := d.NewQueue() // a transport would build it from d.QueueConfig()
	if err != nil {
		panic(err)
	}

	// struct virtio_blk_outhdr: type 0 (IN), sector 8; two data segments.
	hdr := make([]byte, 16)
	binary.LittleEndian.PutUint64(hdr[8:], 8)
	sub, err := d.Submit(virtio.MockRequest{Header: hdr, In: []uint32{512, 3584}, Status: 1, Indirect: true})
	if err != nil {
		panic(err)
	}
	kicked, _ := d.Kick() // writes d.KickFD() unless the device suppressed it
	fmt.Println("kicked:", kicked)

	// The device side.
	c := &virtio.Chain{Descriptors: make([]virtio.Descriptor, 0, 16)}
	if ok, err := q.Pop(c); !ok || err != nil {
		panic(err)
	}
	for _, b := range c.Descriptors {
		fmt.Printf("buffer of %d bytes, writable %v\n", b.Len, b.Writable)
	}
	last := c.Descriptors[len(c.Descriptors)-1]
	d.Mem.WriteAt([]byte{0}, last.Addr) // VIRTIO_BLK_S_OK
	q.AddUsed(c.Head, 4096+1)
	notify, _ := q.PublishUsed()
	fmt.Println("interrupt:", notify)

	u, _, _ := d.PopUsed()
	status, _ := d.Read(sub.Status)
	fmt.Println("used head matches:", u.Head == sub.Head, "len:", u.Len, "status:", status[0])
	// Output:
	// kicked: true
	// buffer of 16 bytes, writable false
	// buffer of 512 bytes, writable true
	// buffer of 3584 bytes, writable true
	// buffer of 1 bytes, writable true
	// interrupt: true
	// used head matches: true len: 4097 status: 0
}
