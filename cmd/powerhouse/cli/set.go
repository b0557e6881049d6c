package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

var setVerb = verb{
	name:  "set",
	args:  "GROUP KEY=VALUE...",
	short: "change a group's config live: saved in the configuration, delivered to the running workers",
	long: `Sets keys of the group's [worker.config] table. VALUE is a JSON literal
(42, true, "text", [1,2], {"a":1}); a bare word is a string. The
configuration file is edited in place (only the lines concerned; comments
stay), validated, and written atomically; then the group's supervisor is
asked to apply it: it rewrites the group's JSON config (mode 0640, group
of the workers) and delivers it to the running workers. Instances whose
worker handles SIGHUP (reload_signal = "SIGHUP", or a worker that told its
supervisor so, as the activation library does) get SIGHUP and re-read it
without a restart; the others are handed over to new processes one at a
time, each new one ready before the old one drains (as powerhouse reload),
since SIGHUP ends a worker that
does not handle it. A group with reloadable = false is not restarted: its
workers read the new configuration when they next start. The command
prints what the supervisor did. The supervisor logs the change as
master.reconfigure with the keys changed; values only for keys listed in
the group's public_config. A bad key or value changes nothing. A group
whose supervisor does not run only has the file changed: its supervisor
writes the JSON config when it starts.

A command line is visible to every local user (ps) and is recorded with
each journal entry the command writes (_CMDLINE): give a secret as KEY=-
and its VALUE on standard input (at most 64 KiB; one final newline is
dropped), e.g.  powerhouse set web password=- < secret.json`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		mf := addManagerFlags(fs)
		return func(e *env, args []string) error {
			if len(args) < 2 {
				return usagef("expected GROUP and at least one KEY=VALUE")
			}
			if err := requireRoot("set", *mf.user); err != nil {
				return err
			}
			group := args[0]
			// Everything that can be checked is, before standard input
			// is read (a value given as KEY=- waits for it) and before
			// anything is written: a typo in the group or a key given
			// twice changes nothing.
			raw := map[string]string{}
			var keys []string
			for _, a := range args[1:] {
				k, v, ok := strings.Cut(a, "=")
				if !ok {
					return usagef("%q is not KEY=VALUE", a)
				}
				if err := config.ValidKey(k); err != nil {
					return usagef("%v", err)
				}
				if _, dup := raw[k]; dup {
					return usagef("key %s given twice", k)
				}
				if v == "-" && slices.ContainsFunc(keys, func(k string) bool { return raw[k] == "-" }) {
					return usagef("only one KEY=- can read its value from standard input")
				}
				raw[k] = v
				keys = append(keys, k)
			}
			cfg := mf.path()
			src, err := readInstalled(*mf.config, *mf.user)
			if err != nil {
				return err
			}
			c, err := config.Parse(cfg, src)
			if err != nil {
				return err
			}
			if c.Worker(group) == nil {
				return usagef("no group %q in %s", group, cfg)
			}
			values := map[string]any{}
			for _, k := range keys {
				v := raw[k]
				if v == "-" {
					if v, err = readValue(os.Stdin); err != nil {
						return usagef("%s: %v", k, err)
					}
				}
				val, err := config.ParseValue(v)
				if err != nil {
					return usagef("%s: %v", k, err)
				}
				values[k] = val
			}
			// A bad value is refused before anything is written.
			if _, err := config.SetGroupConfig(cfg, src, group, values); err != nil {
				return &exitError{code: ExitUsage, err: fmt.Errorf("powerhouse set: %w", err)}
			}
			if err := editLocked(cfg, group, func(src []byte) ([]byte, error) {
				out, err := config.SetGroupConfig(cfg, src, group, values)
				if err != nil {
					return nil, &exitError{code: ExitUsage, err: fmt.Errorf("powerhouse set: %w", err)}
				}
				return out, nil
			}); err != nil {
				return err
			}
			sort.Strings(keys)
			saved := fmt.Sprintf("set %s: %s saved in %s", group, strings.Join(keys, ", "), cfg)
			g := e.group(group, *mf.user)
			res, err := client(g).Reconfigure(e.ctx, e.progress("set", group))
			switch {
			case notRunning(err):
				state, stopped := e.supervisorState(g)
				if !stopped {
					return noAnswer("set", g, state, fmt.Sprintf("%s saved in %s; ", strings.Join(keys, ", "), cfg))
				}
				fmt.Fprintf(e.stderr, "%s; the group is not running (%s): its supervisor writes %s when it starts\n", saved, state, g.ConfigPath())
				return nil
			case err != nil:
				return callFailed("set", err)
			}
			fmt.Fprintf(e.stderr, "%s; %s\n", saved, res.Message)
			return nil
		}
	},
}

// editLocked applies edit to the configuration file cfg and writes the
// result, under an exclusive lock on its directory taken before the file
// is read: two set or scale commands at once each see the other's
// change (without it, ten parallel sets kept one key of ten, each
// saying it had saved its own). The edited file must still hold group.
func editLocked(cfg, group string, edit func([]byte) ([]byte, error)) error {
	unlock, err := lockDir(filepath.Dir(cfg))
	if err != nil {
		return err
	}
	defer unlock()
	src, err := config.ReadFile(cfg)
	if err != nil {
		return err
	}
	out, err := edit(src)
	if err != nil {
		return err
	}
	nc, err := config.Parse(cfg, out)
	if err != nil {
		return err
	}
	if nc.Worker(group) == nil { // the group went away meanwhile: the edit would have failed
		return usagef("no group %q in %s", group, cfg)
	}
	_, err = units.WriteFile(cfg, out, configPerm)
	return err
}

// lockDir takes an exclusive flock(2) on the directory dir (the file in
// it is replaced by rename, so the file itself cannot carry the lock)
// and returns its release. It waits for the holder; Ctrl-C ends the wait.
func lockDir(dir string) (func(), error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := syscall.Flock(int(d.Fd()), syscall.LOCK_EX); err != nil {
		d.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { d.Close() }, nil
}

// lockExisting is lockDir on dir if it exists; a directory not made yet
// needs no lock (nothing in it to edit), and its release does nothing.
func lockExisting(dir string) (func(), error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return func() {}, nil
	}
	return lockDir(dir)
}

// configPerm is how set and scale rewrite the configuration file: root's
// alone when new, and an existing file keeps the mode and group the
// operator gave it (but never stays readable by others).
var configPerm = units.Perm{Mode: 0o600, Keep: true}

// setDelivery says how set delivers a new configuration to w's workers,
// for generate's output.
func setDelivery(w *config.Worker) string {
	switch {
	case w.ReloadSignal == config.ReloadSIGHUP:
		return "powerhouse set sends SIGHUP (reload_signal = \"SIGHUP\"): the workers re-read their configuration without a restart"
	case !w.Reloadable:
		return "powerhouse set changes the configuration for the next start only (no reload_signal, reloadable = false)"
	}
	return "powerhouse set restarts the instances one at a time but those whose worker tells its supervisor that it re-reads its configuration on SIGHUP, as Go workers using the activation library do (no reload_signal; set reload_signal = \"SIGHUP\" for other workers that do)"
}

// maxStdinValue bounds a value read from standard input.
const maxStdinValue = 64 << 10

// readValue reads a value given as KEY=- from r: bounded, one final
// newline dropped.
func readValue(r io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxStdinValue+1))
	if err != nil {
		return "", fmt.Errorf("read the value from standard input: %w", err)
	}
	if len(b) > maxStdinValue {
		return "", fmt.Errorf("the value on standard input is longer than %d bytes", maxStdinValue)
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if s == "" {
		return "", errors.New("no value on standard input")
	}
	return s, nil
}
