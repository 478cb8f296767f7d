package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/flushvm/flushvm/crashtest"
	"github.com/flushvm/flushvm/protocol"
)

func init() {
	registerCommand(command{
		name:    "crashtest",
		summary: "run a crash-test campaign: cut the power under a workload, check what it acknowledged survived",
		run:     crashtestCommand,
		usage:   func(w io.Writer) { crashtest.NewFlags().Usage(w) },
	})
}

// crashtestCommand wires `flushvm crashtest` to the crashtest library:
// flags, the campaign, progress on stderr, the summary on stdout.
func crashtestCommand(args []string, stdout, stderr io.Writer) int {
	f := crashtest.NewFlags()
	if status, ok := parseCommandFlags("crashtest", f.FS, f.Usage, args, stdout, stderr); !ok {
		return status
	}
	c, err := f.Campaign()
	if err != nil {
		return commandFailed("crashtest", err, stderr)
	}
	self, err := os.Executable()
	if err != nil {
		return commandFailed("crashtest", fmt.Errorf("find the flushvm binary: %w", err), stderr)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	booter := &crashtest.ExecBooter{Flushvm: self}
	if c.Reproducing() {
		r, err := c.Reproduce(ctx, booter, crashtest.NewProgress(stderr, nil), stderr)
		if err != nil {
			if status := commandFailed("crashtest", err, stderr); status == exitUsage {
				return status
			}
			return protocol.CrashtestFailed
		}
		crashtest.PrintReproduction(stdout, r)
		return r.ExitStatus()
	}
	rep, err := c.Run(ctx, booter, crashtest.NewProgress(stderr, c.ShardCuts()), stderr)
	if rep != nil {
		rep.PrintSummary(stdout)
		if f.Report != "" {
			if werr := rep.Write(f.Report); werr != nil {
				fmt.Fprintf(stderr, "flushvm crashtest: %v\n", werr)
				if err == nil {
					return exitFailure
				}
			}
		}
	}
	if err != nil {
		if status := commandFailed("crashtest", err, stderr); status == exitUsage {
			return status
		}
		return protocol.CrashtestFailed
	}
	return rep.ExitStatus()
}
