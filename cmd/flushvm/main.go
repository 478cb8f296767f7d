// Command flushvm is a minimal KVM virtual machine monitor for Linux test
// guests whose virtio-blk disks have exact data-integrity semantics.
//
//	flushvm run --kernel FILE [--initrd FILE] [--append CMDLINE] [--mem 512M]
//	            [--cpus 1] [--disk SPEC]... [--stats FILE] [--power-cut WHEN]
//	            [--seed N] [--write-log FILE] [--cache-bound SIZE] [--api SOCKET]
//	            [--watchdog DURATION]
//	flushvm vhost-user-blk --socket PATH --disk SPEC [--queues N] [--stats FILE]
//	flushvm replay --log FILE --base IMAGE --out IMAGE --flush N [--policy P]
//	flushvm crashtest --kernel K --initrd I --disk-size SIZE --workload NAME
//	                  --cuts N --policy POLICY --seed S [--cache MODE] [--shard i/n]
//	flushvm help [COMMAND]
//	flushvm version (or --version)
//
// Exit status (declared in package protocol): what the guest asked for (0
// after a guest reboot or ACPI power-off, v after a one-byte write of v to
// I/O port 0xf4), 1 when the machine failed, 2 for a usage or host-setup
// error, 100 after a power cut (--power-cut, or POST /power-cut on the
// --api socket), 101 when the guest crashed (a triple fault) and 102 when
// it hung (--watchdog); 101 and 102 come with a report line on stderr.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/crashtest"
	"github.com/flushvm/flushvm/protocol"
)

// Exit statuses of flushvm itself.
const (
	exitOK      = protocol.ExitOK
	exitFailure = protocol.ExitFailure
	exitUsage   = protocol.ExitUsage
	// exitPowerCut: flushvm run after a power cut (by --power-cut or the
	// API's POST /power-cut), and a vhost-user backend after its cut.
	exitPowerCut = protocol.ExitPowerCut
)

// command is a flushvm subcommand. Other files add theirs with
// registerCommand from an init function.
type command struct {
	name    string
	summary string
	// run executes the command with its arguments (after the name) and
	// returns the process exit status.
	run func(args []string, stdout, stderr io.Writer) int
	// usage writes the command's full help.
	usage func(w io.Writer)
}

var commands = map[string]command{}

// registerCommand makes c available as `flushvm NAME`.
func registerCommand(c command) {
	if _, dup := commands[c.name]; dup {
		panic("flushvm: command " + c.name + " registered twice")
	}
	commands[c.name] = c
}

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "version", "--version":
		fmt.Fprintln(stdout, "flushvm", protocol.Version())
		return exitOK
	case "help", "-h", "--help":
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				c.usage(stdout)
				return exitOK
			}
			fmt.Fprintf(stderr, "flushvm: unknown command %q (try flushvm help)\n", args[1])
			return exitUsage
		}
		usage(stdout)
		return exitOK
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "flushvm: unknown command %q (try flushvm help)\n", name)
		return exitUsage
	}
	return c.run(args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "flushvm: a minimal KVM VMM for Linux test guests with exact virtio-blk data-integrity semantics")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: flushvm COMMAND [FLAGS]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-16s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "  %-16s %s\n", "help [COMMAND]", "show this help, or a command's flags with examples")
	fmt.Fprintf(w, "  %-16s %s\n", "version", "print flushvm's version (module version and VCS revision)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run `flushvm COMMAND --help` for a command's flags.")
}

// oneLine flattens an error message to a single line for the user.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// parseCommandFlags parses subcommand name's flags. When the command must not
// run (--help was shown, or the flags are wrong: one line on stderr) it
// returns false and the exit status to end with.
func parseCommandFlags(name string, fs *pflag.FlagSet, usage func(io.Writer), args []string, stdout, stderr io.Writer) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			usage(stdout)
			return exitOK, false
		}
		fmt.Fprintf(stderr, "flushvm %s: %s (see flushvm %s --help)\n", name, oneLine(err), name)
		return exitUsage, false
	}
	// crashtest --reproduce LOG STATE takes STATE as its argument; the
	// crashtest library checks it.
	if fs.NArg() > 0 && !(name == "crashtest" && fs.Changed("reproduce")) {
		fmt.Fprintf(stderr, "flushvm %s: unexpected argument %q (see flushvm %s --help)\n", name, fs.Arg(0), name)
		return exitUsage, false
	}
	return 0, true
}

// commandFailed reports subcommand name's error in one line and returns the
// exit status: exitUsage for errors the user can fix, else exitFailure.
func commandFailed(name string, err error, stderr io.Writer) int {
	fmt.Fprintf(stderr, "flushvm %s: %s\n", name, oneLine(err))
	var ue userError
	var ce crashtest.UsageError
	if errors.As(err, &ue) || errors.As(err, &ce) {
		return exitUsage
	}
	return exitFailure
}
