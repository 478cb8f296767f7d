package slurm

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestScripts(t *testing.T) {
	c := Campaign{Shards: 3, Shared: "/shared/it's", Command: []string{"flushvm-harness", "crashtest", "--workload", "a b"}}
	first, rest := c.Scripts()
	wantFirst := `exec 'flushvm-harness' 'crashtest' '--workload' 'a b' --shard 1/3 --dir '/shared/it'\''s'/shard-1 --report '/shared/it'\''s'/report-1.json`
	if !strings.Contains(first, wantFirst+"\n") {
		t.Errorf("first script:\n%s\nwant the line\n%s", first, wantFirst)
	}
	for _, want := range []string{
		"i=$SLURM_ARRAY_TASK_ID\n",
		`cp --sparse=always '/shared/it'\''s'/shard-1/record.wlog '/shared/it'\''s'/shard-$i/record.wlog`,
		`--shard $i/3 --dir '/shared/it'\''s'/shard-$i --report '/shared/it'\''s'/report-$i.json`,
	} {
		if !strings.Contains(rest, want) {
			t.Errorf("array script:\n%s\nlacks %q", rest, want)
		}
	}
}

func TestClusterFiles(t *testing.T) {
	dir := t.TempDir()
	c := &Cluster{Dir: dir, Conf: filepath.Join(dir, "slurm.conf"), CPUs: 2, sock: filepath.Join(dir, "munge.sock")}
	if err := c.writeFiles(); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(c.Conf)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"AuthInfo=socket=" + c.sock + "\n", "StateSaveLocation=" + dir + "/state\n", "CPUs=2 ", "SlurmctldHost=localhost(127.0.0.1)\n"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("slurm.conf lacks %q:\n%s", want, conf)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "munge.key")); err != nil || fi.Size() != 1024 || fi.Mode().Perm() != 0o400 {
		t.Errorf("munge key: %v %v", fi, err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("cluster directory mode %v, want 0700 (munged refuses others' write access)", fi.Mode().Perm())
	}
}

// fakeShard stands in for a crashtest shard: shard 1 writes a recording,
// every shard a report naming it and what its --dir held.
const fakeShard = `#!/bin/sh
while [ $# -gt 0 ]; do
	case $1 in --shard) shard=$2 ;; --dir) dir=$2 ;; --report) rep=$2 ;; esac
	shift
done
mkdir -p "$dir"
if [ "${shard%/*}" = 1 ]; then
	for f in template.img record.wlog record.json; do echo "rec $f" >"$dir/$f"; done
fi
echo "{\"shard\":\"$shard\",\"log\":\"$(cat "$dir/record.wlog")\"}" >"$rep"
exit 1
`

// TestLocalCluster brings a real single-node cluster up and runs a
// three-shard campaign of fake shards on it (each exits 1, as a campaign
// with violations does: the array still runs).
func TestLocalCluster(t *testing.T) {
	if err := Installed(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// A short path: munge's socket must fit sun_path.
	dir, err := os.MkdirTemp("", "flushvm-slurm-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	c, err := StartLocal(ctx, filepath.Join(dir, "cluster"), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	}()
	fake := filepath.Join(dir, "shard.sh")
	if err := os.WriteFile(fake, []byte(fakeShard), 0o755); err != nil {
		t.Fatal(err)
	}
	camp := Campaign{Shards: 3, Shared: filepath.Join(dir, "shared"), Command: []string{fake}}
	reports, err := camp.Run(ctx, c.Env(os.Environ()), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range reports {
		b, _ := os.ReadFile(p)
		want := `{"shard":"` + string(rune('1'+i)) + `/3","log":"rec record.wlog"}`
		if strings.TrimSpace(string(b)) != want {
			t.Errorf("report %d: %s, want %s", i+1, b, want)
		}
	}
	if len(reports) != 3 {
		t.Errorf("%d reports, want 3", len(reports))
	}
}
