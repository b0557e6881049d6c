// Package cli implements the powerhouse command line: one file per verb,
// each with its usage text, dispatched by Run.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
)

// Exit statuses of every verb.
const (
	ExitOK      = 0
	ExitFailure = 1 // anything that is not the user's input
	ExitUsage   = 2 // bad arguments or a bad configuration
)

// version is set at build time with -ldflags "-X .../cli.version=v1.2.3".
var version = "dev"

// Version returns the version the binary was built with.
func Version() string { return version }

// env is what a verb may touch: its output streams and context.
type env struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
	argv0  string
}

// command is one verb.
type command struct {
	name  string
	args  string // synopsis after the verb and its flags
	short string // one line for `powerhouse help`
	long  string // paragraphs after the synopsis
	// flags declares the verb's flags on fs; it returns the function that
	// runs the verb with the remaining arguments.
	flags func(fs *flag.FlagSet) func(e *env, args []string) error
}

// commands is the verb registry, filled by each verb's file.
var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

// usageError is an error in the arguments: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// exitError carries an explicit exit status with an optional message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// Run runs the powerhouse command line args (args[0] is the program name)
// and returns the process exit status.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{ctx: ctx, stdout: stdout, stderr: stderr, argv0: "powerhouse"}
	if len(args) > 0 && filepath.Base(args[0]) == "powerhouse-generator" {
		return runCommand(e, commands["systemd-generator"], args[1:])
	}
	if len(args) < 2 {
		printHelp(stderr)
		return ExitUsage
	}
	verb := args[1]
	switch verb {
	case "-h", "--help", "help":
		if len(args) > 2 {
			if c, ok := commands[args[2]]; ok {
				printUsage(stdout, c)
				return ExitOK
			}
			fmt.Fprintf(stderr, "powerhouse: unknown verb %q\n", args[2])
			return ExitUsage
		}
		printHelp(stdout)
		return ExitOK
	case "--version", "-v":
		verb = "version"
	}
	c, ok := commands[verb]
	if !ok {
		fmt.Fprintf(stderr, "powerhouse: unknown verb %q (see `powerhouse help`)\n", verb)
		return ExitUsage
	}
	return runCommand(e, c, args[2:])
}

func runCommand(e *env, c *command, args []string) int {
	fs := flag.NewFlagSet("powerhouse "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	run := c.flags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(e.stdout, c)
			return ExitOK
		}
		fmt.Fprintf(e.stderr, "powerhouse %s: %v\n", c.name, err)
		fmt.Fprintf(e.stderr, "usage: %s\n", synopsis(c, fs))
		return ExitUsage
	}
	err := run(e, fs.Args())
	if err == nil {
		return ExitOK
	}
	var ue *usageError
	var xe *exitError
	switch {
	case errors.As(err, &xe):
		if xe.err != nil {
			fmt.Fprintln(e.stderr, xe.err)
		}
		return xe.code
	case errors.As(err, &ue):
		fmt.Fprintf(e.stderr, "powerhouse %s: %v\n", c.name, ue)
		fmt.Fprintf(e.stderr, "usage: %s\n", synopsis(c, fs))
		return ExitUsage
	case isConfigError(err):
		// One problem per line: file:line: key: what is wrong.
		fmt.Fprintln(e.stderr, err)
		return ExitUsage
	default:
		fmt.Fprintf(e.stderr, "powerhouse %s: %v\n", c.name, err)
		return ExitFailure
	}
}

func synopsis(c *command, fs *flag.FlagSet) string {
	s := "powerhouse " + c.name
	if hasFlags(fs) {
		s += " [flags]"
	}
	if c.args != "" {
		s += " " + c.args
	}
	return s
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

func printUsage(w io.Writer, c *command) {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	c.flags(fs)
	fmt.Fprintf(w, "usage: %s\n\n%s\n", synopsis(c, fs), c.short)
	if c.long != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.long))
	}
	if hasFlags(fs) {
		fmt.Fprintln(w, "\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

func printHelp(w io.Writer) {
	fmt.Fprint(w, `powerhouse runs a program as a house of worker processes, with systemd as
the master: it turns one TOML file into systemd units and supervises each
worker group (sticky dispatch, rolling reloads, events in journald).

usage: powerhouse VERB [flags] [args]

verbs:
`)
	names := make([]string, 0, len(commands))
	for n, c := range commands {
		if c.short != "" && !strings.HasPrefix(c.short, "(internal)") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, commands[n].short)
	}
	fmt.Fprint(w, "\nRun `powerhouse VERB --help` for a verb's flags and arguments.\n")
}
