// Package cli implements the powerhouse command line: one file per verb,
// each with its usage text, dispatched by Run.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
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
	// runtimeRoot, when set, replaces the scope's runtime directory in
	// the paths of the groups' supervisors (units.Group.Root): tests
	// point it at a stand-in supervisor's socket.
	runtimeRoot string
}

// verb is one verb of the command line: a value in the verbs table, each
// declared in its own file with its usage text.
type verb struct {
	name  string
	args  string // synopsis after the verb and its flags
	short string // one line for `powerhouse help`
	long  string // paragraphs after the synopsis
	// flags declares the verb's flags on fs; it returns the function that
	// runs the verb with the remaining arguments, bound to those flags.
	flags func(fs *flag.FlagSet) func(e *env, args []string) error
	// signals says that the verb stops cleanly when its context ends, and
	// wants SIGINT and SIGTERM to end it (a supervisor stops its workers,
	// run stops its instances). Other verbs keep the default: a signal
	// ends them at once, wherever they wait (standard input, a FIFO, a
	// D-Bus call, a supervisor's answer), as it ends any command;
	// catching it for them left Ctrl-C and systemctl stop with no effect.
	// An operation a supervisor carries out goes on without its caller.
	signals bool
}

// verbs is the command line: every verb, declared once, here.
var verbs = []*verb{
	&generateVerb,
	&verifyVerb,
	&installVerb,
	&uninstallVerb,
	&startVerb,
	&stopVerb,
	&reloadVerb,
	&setVerb,
	&scaleVerb,
	&statusVerb,
	&topVerb,
	&metricsVerb,
	&drainVerb,
	&eventsVerb,
	&runVerb,
	&superviseVerb,
	&prepareVerb,
	&healthVerb,
	&metricsEndpointVerb,
	&systemdGeneratorVerb,
	&versionVerb,
}

// lookup returns the verb called name, or nil.
func lookup(name string) *verb {
	for _, v := range verbs {
		if v.name == name {
			return v
		}
	}
	return nil
}

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

// Main runs the command line of this process (os.Args) and returns its
// exit status: all that cmd/powerhouse's main does.
func Main() int {
	return Run(context.Background(), os.Args, os.Stdout, os.Stderr)
}

// Run runs the powerhouse command line args (args[0] is the program name)
// and returns the process exit status.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return (&env{ctx: ctx, stdout: stdout, stderr: stderr, argv0: "powerhouse"}).run(args)
}

// run runs the command line args in e.
func (e *env) run(args []string) int {
	stdout, stderr := e.stdout, e.stderr
	if len(args) > 0 && filepath.Base(args[0]) == "powerhouse-generator" {
		return runCommand(e, &systemdGeneratorVerb, args[1:])
	}
	if len(args) < 2 {
		printHelp(stderr)
		return ExitUsage
	}
	switch args[1] {
	case "-h", "--help", "help":
		if len(args) > 2 {
			if c := lookup(args[2]); c != nil {
				printUsage(stdout, c)
				return ExitOK
			}
			fmt.Fprintf(stderr, "powerhouse: unknown verb %q\n", args[2])
			return ExitUsage
		}
		printHelp(stdout)
		return ExitOK
	case "--version", "-v":
		return runCommand(e, &versionVerb, args[2:])
	}
	name, rest, err := splitVerb(args[1:])
	if err != nil {
		fmt.Fprintf(stderr, "powerhouse: %v (see `powerhouse help`)\n", err)
		return ExitUsage
	}
	c := lookup(name)
	if c == nil {
		fmt.Fprintf(stderr, "powerhouse: unknown verb %q (see `powerhouse help`)\n", name)
		return ExitUsage
	}
	return runCommand(e, c, rest)
}

// splitVerb finds the verb in args (the command line after the program
// name) and returns it with the rest of the words, the flags given before
// it first: `powerhouse --user status web` is `powerhouse status --user
// web`, as `systemctl --user status` is written. A flag before the verb
// takes the next word as its value when every verb that has the flag
// gives it a value (--config FILE); the verb's own parser then takes or
// refuses each flag as if it had come after it.
func splitVerb(args []string) (string, []string, error) {
	values := valueFlags()
	var lead []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !isFlag(a) || a == "--" {
			return a, append(lead, args[i+1:]...), nil
		}
		lead = append(lead, a)
		name, _, hasValue := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
		if !hasValue && values[name] && i+1 < len(args) {
			i++
			lead = append(lead, args[i])
		}
	}
	return "", nil, fmt.Errorf("%s: no VERB after the flags", strings.Join(args, " "))
}

// valueFlags lists the flags that take a value in every verb that has
// them.
func valueFlags() map[string]bool {
	values := map[string]bool{}
	boolean := map[string]bool{}
	for _, c := range verbs {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		c.flags(fs)
		fs.VisitAll(func(f *flag.Flag) {
			if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
				boolean[f.Name] = true
			} else {
				values[f.Name] = true
			}
		})
	}
	for n := range boolean {
		delete(values, n)
	}
	return values
}

func runCommand(e *env, c *verb, args []string) int {
	if c.signals {
		ctx, stop := signal.NotifyContext(e.ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		ec := *e
		ec.ctx = ctx
		e = &ec
	}
	fs := flag.NewFlagSet("powerhouse "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	run := c.flags(fs)
	pos, err := parseArgs(fs, args, strings.Contains(c.args, "-- COMMAND"))
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(e.stdout, c)
			return ExitOK
		}
		fmt.Fprintf(e.stderr, "powerhouse %s: %v\n", c.name, err)
		fmt.Fprintf(e.stderr, "usage: %s\n", synopsis(c, fs))
		return ExitUsage
	}
	err = run(e, pos)
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
	case os.Geteuid() != 0 && errors.Is(err, os.ErrPermission):
		// The installed configuration is root's alone (it may hold
		// secrets): say so rather than leave a bare "permission denied".
		fmt.Fprintf(e.stderr, "powerhouse %s: %v (run it as root, with sudo)\n", c.name, err)
		return ExitFailure
	default:
		fmt.Fprintf(e.stderr, "powerhouse %s: %v\n", c.name, err)
		return ExitFailure
	}
}

// parseArgs sets fs's flags from args and returns the positional
// arguments. Unlike flag.FlagSet.Parse, which stops at the first
// positional argument, flags may come anywhere: `status web --json` and
// `status --json web` are the same. "--" ends the flags: every argument
// after it is positional, which is how a COMMAND and its own flags are
// given (`prepare --output F -- cmd -x`). A flag is -name or --name, its
// value in the same word (--name=VALUE) or, but for bool flags, in the
// next one; a bool flag never takes the next word. A word that starts
// with "-" is a flag, except "-" alone and a negative number ("-1"), which
// are positional (no verb has a flag named by a digit, and `scale web -1`
// deserves its own message). A word that does not start with "-" is
// positional, even if it holds one later (`set web key=--x`).
//
// -h and --help, unless the verb defines them, return flag.ErrHelp.
// commandArg is set for verbs that run a COMMAND given after "--" (run,
// prepare): there an unknown flag after the first positional argument is
// most likely the command's own, and the error says where it goes.
func parseArgs(fs *flag.FlagSet, args []string, commandArg bool) ([]string, error) {
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(pos, args[i+1:]...), nil
		}
		if !isFlag(a) {
			pos = append(pos, a)
			continue
		}
		name := strings.TrimPrefix(a[1:], "-")
		name, value, hasValue := strings.Cut(name, "=")
		f := fs.Lookup(name)
		switch {
		case f == nil && (name == "h" || name == "help"):
			return nil, flag.ErrHelp
		case f == nil && len(pos) > 0 && commandArg:
			return nil, fmt.Errorf("flag provided but not defined: %s (a COMMAND's own flags go after \"--\")", a)
		case f == nil:
			return nil, fmt.Errorf("flag provided but not defined: %s", a)
		}
		if !hasValue {
			if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
				value, hasValue = "true", true
			} else if i+1 < len(args) && !isFlag(args[i+1]) {
				i++
				value, hasValue = args[i], true
			} else if i+1 < len(args) {
				// Most likely a forgotten value (`install --root --now`):
				// taking the next flag as the value would write under a
				// directory named "--now".
				return nil, fmt.Errorf("flag %s needs a value, not the flag %s (write %s=%s if that is the value)", a, args[i+1], a, args[i+1])
			} else {
				return nil, fmt.Errorf("flag needs an argument: %s", a)
			}
		}
		if err := fs.Set(name, value); err != nil {
			flagName, _, _ := strings.Cut(a, "=")
			return nil, fmt.Errorf("invalid value %q for flag %s: %v", value, flagName, valueHint(f, err))
		}
	}
	return pos, nil
}

// valueHint turns the flag package's "parse error" into what the flag
// takes, found from its default value's form.
func valueHint(f *flag.Flag, err error) string {
	if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
		return "want true or false"
	}
	if _, nerr := strconv.Atoi(f.DefValue); nerr == nil { // before: "0" is a duration too
		return "want a whole number"
	}
	if _, derr := time.ParseDuration(f.DefValue); derr == nil {
		return "want a duration such as 30s or 2m"
	}
	return err.Error()
}

// isFlag says whether the word a is a flag: it starts with "-" and is
// not "-" alone or a negative number.
func isFlag(a string) bool {
	return len(a) >= 2 && a[0] == '-' && (a[1] < '0' || a[1] > '9')
}

func synopsis(c *verb, fs *flag.FlagSet) string {
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

func printUsage(w io.Writer, c *verb) {
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

Flags may come before or after the verb and its arguments (status web
--json, --user status); "--" ends them, so that a COMMAND keeps its own
(run ... -- COMMAND -x).

verbs:
`)
	var listed []*verb
	for _, c := range verbs {
		if c.short != "" && !strings.HasPrefix(c.short, "(internal)") {
			listed = append(listed, c)
		}
	}
	sort.Slice(listed, func(i, j int) bool { return listed[i].name < listed[j].name })
	for _, c := range listed {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.short)
	}
	fmt.Fprint(w, "\nRun `powerhouse VERB --help` for a verb's flags and arguments.\n")
}
