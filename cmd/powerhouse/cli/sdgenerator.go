package cli

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/units"
)

var systemdGeneratorVerb = verb{
	name:  "systemd-generator",
	args:  "NORMAL_DIR [EARLY_DIR LATE_DIR]",
	short: "(internal) run as a systemd generator: write the house's units at boot and daemon-reload",
	long: `Installed as /usr/lib/systemd/system-generators/powerhouse-generator (a
link to powerhouse), systemd runs it at boot and at every daemon-reload. It
reads ` + config.DefaultPath + ` (or $POWERHOUSE_GENERATOR_CONFIG) and writes
the units, and the link that makes multi-user.target want powerhouse.target,
into NORMAL_DIR. Without a configuration it writes nothing. A configuration
with problems is reported to the kernel log and nothing is written: boot
goes on without the house. It never talks to D-Bus.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		return func(e *env, args []string) error {
			if len(args) != 1 && len(args) != 3 {
				return usagef("expected NORMAL_DIR [EARLY_DIR LATE_DIR]")
			}
			if err := runGenerator(args[0]); err != nil {
				logGenerator(e.stderr, err)
				return &exitError{code: ExitFailure}
			}
			return nil
		}
	},
}

func runGenerator(dir string) error {
	path := os.Getenv("POWERHOUSE_GENERATOR_CONFIG")
	if path == "" {
		path = config.DefaultPath
	}
	if _, err := os.Stat(path); os.IsNotExist(err) {
		return nil // not installed: nothing to do
	}
	c, err := config.Load(path)
	if err != nil {
		return err
	}
	bin, err := selfPath()
	if err != nil {
		return err
	}
	o := generator.Options{Binary: bin, ConfigPath: c.File}
	us, err := generator.Generate(c, o)
	if err != nil {
		return err
	}
	// Everything is rendered before anything is written: a failure leaves
	// the output directory as systemd gave it, empty.
	for _, u := range us {
		if d := filepath.Dir(u.Name); d != "." { // a drop-in (kernel mode's supervisor)
			if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(dir, u.Name), u.Render(o), 0o644); err != nil {
			return err
		}
	}
	wants := filepath.Join(dir, o.WantedBy()+".wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	return os.Symlink(filepath.Join(dir, units.Target), filepath.Join(wants, units.Target))
}

// logGenerator reports a generator's problems where a generator can: the
// kernel log (generators run before journald), else journald itself (a
// container without /dev/kmsg, after boot), else standard error.
func logGenerator(stderr io.Writer, err error) {
	lines := strings.Split(err.Error(), "\n")
	if f, kerr := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); kerr == nil {
		defer f.Close()
		for _, l := range lines {
			fmt.Fprintf(f, "<3>powerhouse-generator: %s\n", l)
		}
		return
	}
	if journal.Enabled() {
		for _, l := range lines {
			journal.Send("powerhouse-generator: "+l, journal.PriErr, map[string]string{"SYSLOG_IDENTIFIER": "powerhouse-generator"})
		}
		return
	}
	for _, l := range lines {
		fmt.Fprintf(stderr, "powerhouse-generator: %s\n", l)
	}
}
