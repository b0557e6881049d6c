package cli

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/units"
)

var generateVerb = verb{
	name:  "generate",
	args:  "[CONFIG]",
	short: "print or write the systemd units for a configuration",
	long: `Reads CONFIG (default ` + config.DefaultPath + `), validates it and
generates the house's units. Without -o, every unit is printed to standard
output, each preceded by a line "### <unit file name>". With -o DIR, the
units are written into DIR (created if missing); files that already hold
the same content are left untouched.

The supervisor units run the powerhouse binary at --binary (default: this
executable) with the configuration at --config-path (default: CONFIG's
absolute path). Set both when generating for another machine or a package.
Workers run as the system user "powerhouse" unless [worker.service] names
another; a group that runs as root because it asks for it is said so on
standard error.

Settings the configuration asks for that the units had to work around (a
worker under /tmp runs without PrivateTmp=, say) are printed on standard
error, each as "warning: file:line: key: what and why".

A group with dispatch = "kernel" on a kernel that cannot steer (no bpf(2),
or older than Linux 5.14) is warned about in one line on standard error.

On standard error, one line per group says how ` + "`powerhouse set`" + ` will deliver a
changed [worker.config] to its running workers (see reload_signal).

Exit status: 0 on success, 2 for bad arguments or configuration (one
problem per line, as file:line: key: what is wrong), 1 otherwise.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		out := fs.String("o", "", "write the unit files into `DIR` instead of printing them")
		po := pathFlags(fs)
		return func(e *env, args []string) error {
			c, o, us, err := po.generate(e, args)
			if err != nil {
				return err
			}
			for i := range c.Workers {
				fmt.Fprintf(e.stderr, "generate: group %s: %s\n", c.Workers[i].Name, setDelivery(&c.Workers[i]))
			}
			for _, n := range generator.Notes(c, o) {
				fmt.Fprintf(e.stderr, "generate: %s\n", n)
			}
			if *out == "" {
				for _, u := range us {
					fmt.Fprintf(e.stdout, "### %s\n", u.Name)
					e.stdout.Write(u.Render(o))
				}
				return nil
			}
			if err := os.MkdirAll(*out, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", *out, err)
			}
			for _, u := range us {
				if d := filepath.Dir(u.Name); d != "." { // a drop-in
					if err := os.MkdirAll(filepath.Join(*out, d), 0o755); err != nil {
						return fmt.Errorf("create %s: %w", filepath.Join(*out, d), err)
					}
				}
				if _, err := units.WriteFile(filepath.Join(*out, u.Name), u.Render(o), units.Public); err != nil {
					return err
				}
			}
			return nil
		}
	},
}

// pathOptions are the flags of every verb that reads a configuration and
// generates units from it.
type pathOptions struct {
	binary, configPath *string
}

func pathFlags(fs *flag.FlagSet) *pathOptions {
	return &pathOptions{
		binary:     fs.String("binary", "", "absolute `PATH` of powerhouse written into the units (default: this executable)"),
		configPath: fs.String("config-path", "", "absolute `PATH` of the configuration written into the units (default: CONFIG's absolute path)"),
	}
}

// load reads the configuration named by args (at most one) and works out
// the paths to write into units.
func (p *pathOptions) load(args []string) (*config.Config, generator.Options, error) {
	var o generator.Options
	path, err := configArg(args)
	if err != nil {
		return nil, o, err
	}
	c, err := config.Load(path)
	if err != nil {
		return nil, o, noConfigGiven(err, args)
	}
	o.ConfigPath = c.File
	if *p.configPath != "" {
		o.ConfigPath = *p.configPath
	}
	o.Binary = *p.binary
	if o.Binary == "" {
		if o.Binary, err = selfPath(); err != nil {
			return nil, o, err
		}
	}
	for _, v := range []string{o.Binary, o.ConfigPath} {
		if !filepath.IsAbs(v) {
			return nil, o, usagef("%q is not an absolute path", v)
		}
	}
	return c, o, nil
}

// noConfigGiven explains a missing default CONFIG: a new user's first
// `powerhouse generate` got only "no such file or directory".
// generate loads the configuration args name, generates its units and
// prints its warnings: the first steps of generate and verify.
func (p *pathOptions) generate(e *env, args []string) (*config.Config, generator.Options, []generator.Unit, error) {
	c, o, err := p.load(args)
	if err != nil {
		return nil, o, nil, err
	}
	us, err := generator.Generate(c, o)
	if err != nil {
		return nil, o, nil, err
	}
	printWarnings(e, c)
	warnKernelMode(e, "generate", c, "")
	return c, o, us, nil
}

func noConfigGiven(err error, args []string) error {
	if len(args) == 0 && errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: no CONFIG given, and no house is installed there (name the configuration file as CONFIG)", err)
	}
	return err
}

func configArg(args []string) (string, error) {
	switch len(args) {
	case 0:
		return config.DefaultPath, nil
	case 1:
		return args[0], nil
	default:
		return "", usagef("expected at most one CONFIG, got %d arguments", len(args))
	}
}

// selfPath is the absolute, symlink-free path of the running executable.
func selfPath() (string, error) {
	p, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable: %w", err)
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	return p, nil
}

// printWarnings prints what generation had to work around in c, one line
// each, on standard error (standard output may be the units).
func printWarnings(e *env, c *config.Config) {
	for _, w := range c.Warnings {
		fmt.Fprintf(e.stderr, "warning: %s\n", w)
	}
}

func isConfigError(err error) bool {
	var l config.ErrorList
	return errors.As(err, &l)
}
