package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/flushvm/flushvm/host/harness"
)

// powerCutExitStatus is flushvm run's exit status after a power cut (see
// `flushvm run --help`).
const powerCutExitStatus = 100

// powerCutRecords is how many 4 KiB records the guest writes; each is
// written to the raw disk at record index * 4 KiB and made durable with
// fsync (a FLUSH) before the guest prints "ack N".
const powerCutRecords = 24

// powerCutScript writes the records and acknowledges each once dd's fsync
// has returned (busybox dd has conv=fsync, not fdatasync).
var powerCutScript = fmt.Sprintf(`echo "write cache: $(cat /sys/block/vda/queue/write_cache)"
i=1
while [ $i -le %d ]; do
	yes "rec-$i" | head -c 4096 > /tmp/r
	dd if=/tmp/r of=/dev/vda bs=4096 seek=$i count=1 conv=fsync,notrunc 2>/tmp/err || { cat /tmp/err; exit 9; }
	echo "ack $i"
	i=$((i+1))
done
echo "all records written: no power cut"
`, powerCutRecords)

// record is the 4 KiB the script writes for record i.
func record(i int) []byte {
	line := []byte(fmt.Sprintf("rec-%d\n", i))
	return bytes.Repeat(line, 4096/len(line)+1)[:4096]
}

var ackRE = regexp.MustCompile(`(?m)^ack (\d+)\r?$`)

// acked returns the records the guest acknowledged.
func acked(out []byte) []int {
	var r []int
	for _, m := range ackRE.FindAllSubmatch(out, -1) {
		n, _ := strconv.Atoi(string(m[1]))
		r = append(r, n)
	}
	return r
}

var summaryRE = regexp.MustCompile(`flushvm: disk 0 \([^)]*\): power cut [^\n]*: (\d+) unstable writes: (\d+) kept, (\d+) torn, (\d+) lost[^\n]*`)

// TestDebianLinuxPowerCutNested boots Debian's kernel under flushvm with a
// fresh raw disk on the power-cut model (powercut=lose-all) and a guest
// that writes records and acknowledges each after fdatasync, and cuts the
// power mid-run. With cache=writeback (cut at the 8th host flush) every
// acknowledged record must be in the host image; with cache=unsafe (whose
// flushes never reach the disk; cut at the 12th write) acknowledged
// records are lost — the oracle can fail. Both end with flushvm's
// power-cut exit status and its one-line summary.
// The writeback run's --stats must carry the cut's report under the disk.
func TestDebianLinuxPowerCutNested(t *testing.T) {
	a := prepare(t)
	dir := t.TempDir()
	img, err := harness.WithScript(a.Cache, a.Initramfs, powerCutScript)
	if err != nil {
		t.Fatal(err)
	}
	fresh := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 64<<20); err != nil {
			t.Fatal(err)
		}
		return p
	}
	safe, unsafe := fresh("writeback.img"), fresh("unsafe.img")
	stats := filepath.Join(dir, "stats.json")
	run := func(disk, cache, when string) []string {
		return []string{"--kernel", a.Vmlinux, "--initrd", img, "--append", cmdline("script"),
			"--disk", "path=" + disk + ",cache=" + cache + ",powercut=lose-all",
			"--power-cut", when, "--seed", "1"}
	}
	// check asserts the common outcome and returns the acknowledged
	// records and the lost count of the summary.
	check := func(t *testing.T, r harness.Result) []int {
		t.Helper()
		if r.Status != powerCutExitStatus {
			t.Fatalf("exit status %d, want %d (power cut); console:\n%s", r.Status, powerCutExitStatus, r.Output)
		}
		m := summaryRE.FindSubmatch(r.Output)
		if m == nil {
			t.Fatalf("no power-cut summary line; console:\n%s", r.Output)
		}
		t.Logf("summary: %s", m[0])
		if !bytes.Contains(m[0], []byte("no --write-log")) && !bytes.Contains(m[0], []byte("flushvm replay")) {
			t.Errorf("summary names no way to rebuild the image: %s", m[0])
		}
		if bytes.Contains(r.Output, []byte("no power cut")) {
			t.Fatalf("the guest wrote every record before the cut; console:\n%s", r.Output)
		}
		acks := acked(r.Output)
		t.Logf("%d records acknowledged before the cut", len(acks))
		return acks
	}
	session(t, []boot{
		{
			name: "writeback_lose-all_keeps_every_acknowledged_record",
			args: append(run(safe, "writeback", "flushes=8"), "--stats", stats),
			check: func(t *testing.T, r harness.Result) {
				acks := check(t, r)
				if len(acks) == 0 {
					t.Fatalf("no record acknowledged before the cut; console:\n%s", r.Output)
				}
				b, err := os.ReadFile(safe)
				if err != nil {
					t.Fatal(err)
				}
				for _, i := range acks {
					if !bytes.Equal(b[i*4096:(i+1)*4096], record(i)) {
						t.Errorf("acknowledged record %d is not in the host image", i)
					}
				}
				checkPowerCutStats(t, stats, "lose-all")
			},
		},
		{
			name: "unsafe_lose-all_loses_acknowledged_records",
			args: run(unsafe, "unsafe", "writes=12"),
			check: func(t *testing.T, r harness.Result) {
				acks := check(t, r)
				b, err := os.ReadFile(unsafe)
				if err != nil {
					t.Fatal(err)
				}
				var lost []string
				for _, i := range acks {
					if !bytes.Equal(b[i*4096:(i+1)*4096], record(i)) {
						lost = append(lost, strconv.Itoa(i))
					}
				}
				if len(lost) == 0 {
					t.Fatalf("cache=unsafe with lose-all kept all %d acknowledged records: the oracle cannot fail", len(acks))
				}
				t.Logf("cache=unsafe lost acknowledged records %s", strings.Join(lost, ", "))
			},
		},
	})
}

// checkPowerCutStats checks the "power_cut" object of disk 0 in --stats.
func checkPowerCutStats(t *testing.T, path, policy string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("--stats: %v", err)
	}
	var doc struct {
		Disks []struct {
			PowerCut *struct {
				Cause            string `json:"cause"`
				CompletedFlushes uint64 `json:"completed_flushes"`
				Report           *struct {
					Policy   string `json:"policy"`
					Unstable int    `json:"unstable_writes"`
					Lost     int    `json:"lost"`
				} `json:"report"`
			} `json:"power_cut"`
		} `json:"disks"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("--stats: %v", err)
	}
	if len(doc.Disks) != 1 || doc.Disks[0].PowerCut == nil || doc.Disks[0].PowerCut.Report == nil {
		t.Fatalf("--stats has no power_cut report: %s", b)
	}
	pc := doc.Disks[0].PowerCut
	if pc.Report.Policy != policy || pc.Report.Lost != pc.Report.Unstable || pc.Cause == "" {
		t.Errorf("--stats power_cut %+v (report %+v), want policy %s losing every unstable write", pc, pc.Report, policy)
	}
	t.Logf("--stats: power cut after %d completed flushes: %s", pc.CompletedFlushes, pc.Cause)
}
