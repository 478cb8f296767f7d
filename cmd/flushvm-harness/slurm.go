package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/host/harness"
	"github.com/flushvm/flushvm/host/slurm"
	"github.com/flushvm/flushvm/protocol"
)

// slurmCampaign is `flushvm-harness slurm-campaign`: one systematic
// crashtest split into --shards shards, each a Slurm task running
// `flushvm-harness crashtest` with the shared flags, the reports merged
// into one table.
func slurmCampaign(ctx context.Context, opts harness.Options, args []string) int {
	fs := pflag.NewFlagSet("slurm-campaign", pflag.ContinueOnError)
	fs.SetInterspersed(false)
	shards := fs.Int("shards", 2, "shards, one Slurm task each")
	shared := fs.String("shared", "build/crashtest-slurm", "directory every task reads and writes (a shared file system on a real cluster)")
	local := fs.Bool("local-cluster", false, "bring up a single-node Slurm cluster on loopback in SHARED/cluster for this campaign, and tear it down after")
	var sbatchArgs []string
	fs.StringArrayVar(&sbatchArgs, "sbatch-arg", nil, "an extra sbatch option for every job (repeatable), e.g. --sbatch-arg=--partition=fast")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(os.Stderr, "flushvm-harness slurm-campaign: %v\n", err)
		return 2
	}
	rest := fs.Args()
	for _, f := range []string{"shard", "dir", "report", "mode"} {
		if hasFlag(rest, f) {
			fmt.Fprintf(os.Stderr, "flushvm-harness slurm-campaign: --%s is set per shard (systematic mode only)\n", f)
			return 2
		}
	}
	if *shards < 1 || *shards > 10000 {
		fmt.Fprintf(os.Stderr, "flushvm-harness slurm-campaign: --shards %d: want 1..10000\n", *shards)
		return 2
	}
	camp, err := slurmShards(ctx, opts, *shards, *shared, sbatchArgs, rest)
	if err != nil {
		return fail(err)
	}
	return runSlurmCampaign(ctx, camp, *local)
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
