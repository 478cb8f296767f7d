package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/spf13/pflag"

	"github.com/flushvm/flushvm/internal/cli"
)

// parseSub parses the flags of subcommand name in the style of every
// flushvm command: --help prints the flag table on stdout (status 0), a
// bad flag is one line on stderr (status 2). ok is false when the command
// must not go on.
func parseSub(name string, fs *pflag.FlagSet, args []string) (status int, ok bool) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SortFlags = false
	err := fs.Parse(args)
	switch {
	case errors.Is(err, pflag.ErrHelp):
		fmt.Printf("Usage: flushvm-harness %s [FLAGS]\n\nFlags:\n", name)
		cli.FlagTable(os.Stdout, fs)
		return 0, false
	case err != nil:
		fmt.Fprintf(os.Stderr, "flushvm-harness %s: %v (see flushvm-harness %s --help)\n", name, err, name)
		return 2, false
	}
	return 0, true
}

// passThroughHelp answers --help for the commands whose arguments are
// flushvm's own (run, qemu, crashtest, campaign) without booting anything.
func passThroughHelp(name string, args []string) bool {
	sub, ok := map[string]string{"run": "run", "qemu": "run", "crashtest": "crashtest", "campaign": "crashtest"}[name]
	if !ok || !slices.Contains(args, "--help") && !slices.Contains(args, "-h") {
		return false
	}
	fmt.Printf("Usage: flushvm-harness %s ARGS...\n\n", name)
	fmt.Printf("ARGS are `flushvm %s`'s, with host paths; see `flushvm %s --help` for them.\n", sub, sub)
	if name == "campaign" {
		fmt.Println("campaign adds --modes MODE:N,... (default " + defaultModes + ")")
		fmt.Println("and --out DIR (default build/crashtest), and sets --cache, --report and N per mode:")
		fmt.Println("--max-states N (systematic; MODE:all checks every state) or --cuts N (--mode random).")
		fmt.Println("A systematic mode works in --dir DIR/MODE (default OUT/MODE.work, emptied first): when")
		fmt.Println("L1 dies under it, the next L1 session resumes it after the last state it judged.")
	}
	return true
}
