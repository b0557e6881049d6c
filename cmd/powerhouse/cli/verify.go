package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/units"
)

var verifyVerb = verb{
	name:  "verify",
	args:  "[CONFIG]",
	short: "check a configuration and the units it generates",
	long: `Validates CONFIG (default ` + config.DefaultPath + `), generates its units into
a temporary directory and, when systemd-analyze is installed, runs
"systemd-analyze verify" on one instance of every unit. Whatever it reports
is printed; any finding makes the exit status non-zero. A [worker.service]
user or group that does not exist on this system is a warning: the
configuration may be meant for another machine, but install refuses it.

Exit status: 0 when everything is clean, 2 for a bad configuration, 1 when
systemd-analyze reports a finding or cannot run.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		po := pathFlags(fs)
		return func(e *env, args []string) error {
			c, o, us, err := po.generate(e, args)
			if err != nil {
				return err
			}
			// verify also checks configurations meant for other
			// machines: an account missing here is only a warning
			// (install refuses it on the system it installs to).
			if errs, err := checkAccounts(c, hostAccounts()); err != nil {
				fmt.Fprintf(e.stderr, "warning: %v\n", err)
			} else {
				for _, w := range errs {
					fmt.Fprintf(e.stderr, "warning: %s (install refuses this)\n", w)
				}
			}
			analyze, err := exec.LookPath("systemd-analyze")
			if err != nil {
				fmt.Fprintf(e.stdout, "%s: configuration OK, %d units; systemd-analyze not found, units not verified\n", c.File, len(us))
				return nil
			}
			out, err := verifyUnits(e.ctx, analyze, c, o, us)
			if len(out) > 0 {
				e.stdout.Write(out)
			}
			if err != nil {
				return &exitError{code: ExitFailure, err: fmt.Errorf("powerhouse verify: %w", err)}
			}
			fmt.Fprintf(e.stdout, "%s: OK, %d units verified\n", c.File, len(us))
			return nil
		}
	},
}

// verifyUnits writes us into a temporary directory and runs systemd-analyze
// verify on the concrete units they make: instance 1 of each template.
func verifyUnits(ctx context.Context, analyze string, c *config.Config, o generator.Options, us []generator.Unit) ([]byte, error) {
	dir, err := os.MkdirTemp("", "powerhouse-verify-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	for _, u := range us {
		if d := filepath.Dir(u.Name); d != "." { // a drop-in (kernel mode's supervisor)
			if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
				return nil, err
			}
		}
		if err := os.WriteFile(filepath.Join(dir, u.Name), u.Render(o), 0o644); err != nil {
			return nil, err
		}
	}
	names := []string{units.Target}
	if c.Prepare != nil {
		names = append(names, units.PrepareService)
	}
	for _, w := range c.Workers {
		names = append(names, units.Group{Name: w.Name}.SupervisorUnit(), units.Group{Name: w.Name}.Instance(1))
		names = append(names, generator.GroupSockets(&w)...)
		if w.Sticky {
			names = append(names, units.Group{Name: w.Name}.HandoffSocket(1))
		}
	}
	args := []string{"verify", "--man=no"}
	for _, n := range names {
		args = append(args, filepath.Join(dir, n))
	}
	cmd := exec.CommandContext(ctx, analyze, args...)
	// Templates are found next to their instances; the trailing ':' keeps
	// the default search path for units such as multi-user.target.
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	text := bytes.ReplaceAll(out.Bytes(), []byte(dir+"/"), nil)
	var ee *exec.ExitError
	switch {
	case runErr != nil && !errors.As(runErr, &ee):
		return text, fmt.Errorf("run systemd-analyze: %w", runErr)
	case runErr != nil:
		return text, fmt.Errorf("systemd-analyze verify found problems (exit status %d)", ee.ExitCode())
	case len(strings.TrimSpace(string(text))) > 0:
		return text, errors.New("systemd-analyze verify reported findings")
	}
	return nil, nil
}
