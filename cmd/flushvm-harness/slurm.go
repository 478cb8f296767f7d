package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/flushvm/flushvm/host/harness"
	"github.com/flushvm/flushvm/host/slurm"
	"github.com/flushvm/flushvm/protocol"
)

// slurmCampaign is `flushvm-harness slurm-campaign`: one systematic
// crashtest split into --shards shards, each a Slurm task running
// `flushvm-harness crashtest` with the shared flags, the reports merged
// into one table.
func slurmCampaign(ctx context.Context, opts harness.Options, args []string) int {
	f, rest, err := parseSlurmFlags(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "flushvm-harness slurm-campaign: %v\n", err)
		return 2
	}
	camp, err := slurmShards(ctx, opts, f.shards, f.shared, f.sbatch, rest)
	if err != nil {
		return fail(err)
	}
	return runSlurmCampaign(ctx, camp, f.local)
}

// slurmFlags are slurm-campaign's own flags; the others are crashtest's.
type slurmFlags struct {
	shards int
	shared string
	local  bool
	sbatch []string
}

// parseSlurmFlags takes slurm-campaign's flags out of args (--shards N,
// --shared DIR, --local-cluster, --sbatch-arg ARG, repeatable) and checks
// that the rest leaves the per-shard flags to it.
func parseSlurmFlags(args []string) (slurmFlags, []string, error) {
	f := slurmFlags{shards: 2, shared: filepath.Join("build", "crashtest-slurm")}
	var rest []string
	for k := 0; k < len(args); k++ {
		name, val, hasVal := strings.Cut(strings.TrimPrefix(args[k], "--"), "=")
		own := strings.HasPrefix(args[k], "--") && slices.Contains([]string{"shards", "shared", "sbatch-arg"}, name)
		switch {
		case args[k] == "--local-cluster":
			f.local = true
			continue
		case !own:
			rest = append(rest, args[k])
			continue
		case !hasVal && k+1 >= len(args):
			return f, nil, fmt.Errorf("--%s needs a value", name)
		case !hasVal:
			k++
			val = args[k]
		}
		switch name {
		case "shards":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > 10000 {
				return f, nil, fmt.Errorf("--shards %q: want 1..10000", val)
			}
			f.shards = n
		case "shared":
			f.shared = val
		case "sbatch-arg":
			f.sbatch = append(f.sbatch, val)
		}
	}
	for _, fl := range []string{"shard", "dir", "report"} {
		if hasFlag(rest, fl) {
			return f, nil, fmt.Errorf("--%s is set per shard", fl)
		}
	}
	if hasFlag(rest, "mode") {
		return f, nil, errors.New("--mode: a Slurm campaign is systematic (its shards share one recording)")
	}
	return f, rest, nil
}

// slurmShards builds the campaign: the harness binary itself runs each
// shard, with the guest artifacts resolved once here.
func slurmShards(ctx context.Context, opts harness.Options, shards int, shared string, sbatchArgs, args []string) (slurm.Campaign, error) {
	args, err := withGuestDefaults(ctx, args)
	if err != nil {
		return slurm.Campaign{}, err
	}
	self, err := os.Executable()
	if err != nil {
		return slurm.Campaign{}, fmt.Errorf("slurm campaign: %w", err)
	}
	abs, err := filepath.Abs(shared)
	if err != nil {
		return slurm.Campaign{}, fmt.Errorf("slurm campaign: %w", err)
	}
	cmd := []string{self, "--mode", opts.Mode.String()}
	if opts.Flushvm != "" {
		cmd = append(cmd, "--flushvm", opts.Flushvm)
	}
	cmd = append(append(cmd, "crashtest"), args...)
	return slurm.Campaign{Shards: shards, Shared: abs, Command: cmd, SbatchArgs: sbatchArgs}, nil
}

// runSlurmCampaign submits the campaign (on a local cluster when asked),
// waits, and prints the merged table; its exit status is crashtest's for
// the whole campaign: 0 passed, 1 violations, 3 incomplete.
func runSlurmCampaign(ctx context.Context, camp slurm.Campaign, local bool) int {
	env := os.Environ()
	if local {
		c, err := slurm.StartLocal(ctx, filepath.Join(camp.Shared, "cluster"), 1)
		if err != nil {
			return fail(err)
		}
		defer func() {
			if err := c.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "flushvm-harness: %v\n", err)
			}
		}()
		fmt.Fprintf(os.Stderr, "flushvm-harness: local Slurm cluster up (%s)\n", c.Conf)
		env = c.Env(env)
	}
	reports, runErr := camp.Run(ctx, env, os.Stderr)
	rows, readErr := readReports(reports)
	var table strings.Builder
	printTable(&table, rows)
	fmt.Print(table.String())
	if err := os.WriteFile(filepath.Join(camp.Shared, "table.md"), []byte(table.String()), 0o644); err != nil {
		return fail(err)
	}
	if err := errors.Join(runErr, readErr); err != nil {
		fmt.Fprintf(os.Stderr, "flushvm-harness: %v\n", err)
		return protocol.CrashtestFailed
	}
	total := tableRow{}
	for _, r := range rows {
		total.add(r)
	}
	switch {
	case total.violations > 0:
		return protocol.CrashtestViolations
	case total.errors > 0:
		return protocol.CrashtestFailed
	}
	return protocol.ExitOK
}
