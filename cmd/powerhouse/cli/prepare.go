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

var prepareVerb = verb{
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
			stdout := &boundedBuffer{max: maxPrepareOutput}
			cmd.Stdout, cmd.Stderr = stdout, e.stderr
			if err := cmd.Run(); err != nil {
				if stdout.over {
					return fmt.Errorf("prepare command %s: printed more than %d bytes: that is no environment", args[0], maxPrepareOutput)
				}
				return fmt.Errorf("prepare command %s: %w", args[0], err)
			}
			env, err := parseEnvLines(stdout.buf.Bytes())
			if err != nil {
				return fmt.Errorf("prepare command %s: %w", args[0], err)
			}
			if _, err := units.WriteFile(*out, env, units.Secret); err != nil {
				return err
			}
			return nil
		}
	},
}

// maxPrepareOutput bounds what the hook may print: it becomes every
// worker's environment, and a runaway hook must not fill the memory.
const maxPrepareOutput = 1 << 20

// boundedBuffer keeps at most max bytes; a write beyond fails, which
// ends the command with a broken pipe (or it exits on its own). The
// buffer is a field, not embedded: bytes.Buffer's ReadFrom would be
// promoted, and io.Copy would use it and never call Write.
type boundedBuffer struct {
	buf  bytes.Buffer
	max  int
	over bool
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if b.buf.Len()+len(p) > b.max {
		b.over = true
		return 0, fmt.Errorf("more than %d bytes", b.max)
	}
	return b.buf.Write(p)
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
