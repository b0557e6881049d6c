package cli

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os/exec"
	"regexp"
	"strings"

	"github.com/powerhouse/powerhouse/units"
)

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func init() {
	register(&command{
		name:  "prepare",
		args:  "--output FILE -- COMMAND [ARG...]",
		short: "run the [prepare] hook and keep its KEY=VALUE output (what powerhouse-prepare.service runs)",
		long: `Runs COMMAND; every line it prints to standard output of the form
KEY=VALUE (blank lines and lines starting with # are ignored) becomes an
environment variable of every worker, through the file FILE that the worker
units read (EnvironmentFile=). A command that fails, or prints any other
line, fails the hook and writes nothing, and the workers do not start.`,
		flags: func(fs *flag.FlagSet) func(*env, []string) error {
			out := fs.String("output", "", "environment `FILE` to write")
			return func(e *env, args []string) error {
				if *out == "" || len(args) == 0 {
					return usagef("expected --output FILE and a COMMAND")
				}
				cmd := exec.CommandContext(e.ctx, args[0], args[1:]...)
				var stdout bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, e.stderr
				if err := cmd.Run(); err != nil {
					return fmt.Errorf("prepare command %s: %w", args[0], err)
				}
				env, err := parseEnvLines(stdout.Bytes())
				if err != nil {
					return fmt.Errorf("prepare command %s: %w", args[0], err)
				}
				if _, err := units.WriteFile(*out, env, units.Secret); err != nil {
					return err
				}
				return nil
			}
		},
	})
}

// parseEnvLines checks KEY=VALUE lines and renders them for EnvironmentFile=,
// each value double-quoted so that spaces and quotes survive.
func parseEnvLines(b []byte) ([]byte, error) {
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !envKeyRE.MatchString(k) {
			// Not quoted: the hook's output is the workers' environment,
			// secrets included, and this message goes to the journal.
			return nil, fmt.Errorf("output line %d is not KEY=VALUE (KEY: letters, digits and _, not starting with a digit)", n)
		}
		v = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "$", `\$`, "`", "\\`").Replace(v)
		fmt.Fprintf(&out, "%s=\"%s\"\n", k, v)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
