// Package slurm runs crash-test campaigns on Slurm: one array task per
// shard of a systematic campaign, each writing its report to a shared
// directory, merged afterwards into one table. It also brings up a
// single-node Slurm cluster on loopback (munge, slurmctld, slurmd, all
// configured in one directory), which is how flushvm tests the path for
// real without touching the host's own Slurm.
package slurm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"
)

// ErrNoSlurm reports a host without Slurm's or munge's daemons.
var ErrNoSlurm = errors.New("slurm: slurmctld, slurmd, sbatch or munged not installed (Debian: slurmctld slurmd slurm-client munge)")

// Programs are the Slurm and munge programs a local cluster runs.
var Programs = []string{"munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo"}

// Installed reports whether every program of Programs is on PATH or in
// /usr/sbin.
func Installed() error {
	for _, p := range Programs {
		if _, err := lookPath(p); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrNoSlurm, p, err)
		}
	}
	return nil
}

// lookPath finds a program on PATH or in /usr/sbin (daemons live there,
// which a user's PATH may lack).
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return exec.LookPath(filepath.Join("/usr/sbin", name))
}

// Cluster is a single-node Slurm cluster whose configuration, state,
// logs and munge key all live in Dir; its daemons listen on loopback
// only.
type Cluster struct {
	// Dir holds everything the cluster writes.
	Dir string
	// Conf is its slurm.conf (SLURM_CONF for the client commands).
	Conf string
	// CPUs is how many CPUs its node offers: that many one-CPU tasks run
	// at a time.
	CPUs int
	sock string
}

// Env returns env with SLURM_CONF pointing at the cluster's
// configuration, for sbatch, squeue, scontrol.
func (c *Cluster) Env(env []string) []string { return append(env, "SLURM_CONF="+c.Conf) }

// confTemplate is the cluster's slurm.conf: munge authentication through
// the cluster's own socket, no cgroups (proctrack/linuxproc, task/none),
// no accounting, one node and one partition.
var confTemplate = template.Must(template.New("slurm.conf").Parse(`# flushvm's single-node test cluster (host/slurm), generated.
ClusterName=flushvm
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={{.CtldPort}}
SlurmdPort={{.DPort}}
SlurmUser={{.User}}
SlurmdUser={{.User}}
AuthType=auth/munge
AuthInfo=socket={{.Sock}}
CredType=cred/munge
StateSaveLocation={{.Dir}}/state
SlurmdSpoolDir={{.Dir}}/spool
SlurmctldPidFile={{.Dir}}/slurmctld.pid
SlurmdPidFile={{.Dir}}/slurmd.pid
SlurmctldLogFile={{.Dir}}/log/slurmctld.log
SlurmdLogFile={{.Dir}}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs={{.CPUs}} State=UNKNOWN
PartitionName=flushvm Nodes=localhost Default=YES MaxTime=INFINITE State=UP
`))

// confParams are the values confTemplate fills in.
type confParams struct {
	Dir, Sock, User string
	CtldPort, DPort int
	CPUs            int
}

// StartLocal brings up a single-node cluster in dir (created if needed)
// offering cpus CPUs: a munge key and munged on a socket in dir, a
// slurm.conf on two free loopback ports, slurmctld and slurmd. It waits
// until the node takes jobs. Stop tears it down.
func StartLocal(ctx context.Context, dir string, cpus int) (*Cluster, error) {
	if err := Installed(); err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, Conf: filepath.Join(dir, "slurm.conf"), CPUs: cpus, sock: filepath.Join(dir, "munge.sock")}
	if err := c.writeFiles(); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"munged", "--force", "--socket=" + c.sock, "--key-file=" + filepath.Join(dir, "munge.key"),
			"--log-file=" + filepath.Join(dir, "log", "munged.log"), "--pid-file=" + filepath.Join(dir, "munged.pid"),
			"--seed-file=" + filepath.Join(dir, "munged.seed")},
		{"slurmctld", "-c"},
		{"slurmd", "-N", "localhost"},
	}
	for _, s := range steps {
		if err := c.daemon(ctx, s); err != nil {
			c.Stop()
			return nil, err
		}
	}
	if err := c.waitIdle(ctx, time.Minute); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// writeFiles lays out the cluster's directory: key, configuration, state.
func (c *Cluster) writeFiles() error {
	for _, d := range []string{"state", "spool", "log"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o700); err != nil {
			return fmt.Errorf("slurm cluster: %w", err)
		}
	}
	// munged refuses a key or socket directory others can write.
	if err := os.Chmod(c.Dir, 0o700); err != nil {
		return fmt.Errorf("slurm cluster: %w", err)
	}
	key := make([]byte, 1024)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("slurm cluster: munge key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "munge.key"), key, 0o400); err != nil {
		return fmt.Errorf("slurm cluster: munge key: %w", err)
	}
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	user := os.Getenv("USER")
	if os.Geteuid() == 0 || user == "" {
		user = "root"
	}
	var b strings.Builder
	p := confParams{Dir: c.Dir, Sock: c.sock, User: user, CtldPort: ports[0], DPort: ports[1], CPUs: c.CPUs}
	if err := confTemplate.Execute(&b, p); err != nil {
		return fmt.Errorf("slurm.conf: %w", err)
	}
	if err := os.WriteFile(c.Conf, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("slurm.conf: %w", err)
	}
	return nil
}

// freePorts returns n loopback TCP ports nothing listens on now.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("slurm cluster: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// daemon runs a daemon that forks into the background, with the
// cluster's configuration.
func (c *Cluster) daemon(ctx context.Context, argv []string) error {
	p, err := lookPath(argv[0])
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoSlurm, err)
	}
	cmd := exec.CommandContext(ctx, p, argv[1:]...)
	cmd.Env = c.Env(os.Environ())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("slurm cluster: %s: %w: %s", argv[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// waitIdle waits until sinfo shows the node idle.
func (c *Cluster) waitIdle(ctx context.Context, bound time.Duration) error {
	deadline := time.Now().Add(bound)
	var last string
	for time.Now().Before(deadline) {
		out, _ := c.command(ctx, "sinfo", "-h", "-o", "%T").CombinedOutput()
		last = strings.TrimSpace(string(out))
		if last == "idle" {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("slurm cluster: the node is %q, not idle, after %v (logs in %s)", last, bound, filepath.Join(c.Dir, "log"))
}

// command returns a Slurm client command run against the cluster.
func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	p, err := lookPath(name)
	if err != nil {
		p = name
	}
	cmd := exec.CommandContext(ctx, p, args...)
	cmd.Env = c.Env(os.Environ())
	return cmd
}

// Stop shuts the cluster's daemons down (slurmctld and slurmd through
// scontrol, munged through its pid file) and waits for them to go.
func (c *Cluster) Stop() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := c.command(ctx, "scontrol", "shutdown").CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("scontrol shutdown: %w: %s", err, strings.TrimSpace(string(out))))
	}
	for _, pid := range []string{"slurmd.pid", "slurmctld.pid", "munged.pid"} {
		if err := stopPid(filepath.Join(c.Dir, pid)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
