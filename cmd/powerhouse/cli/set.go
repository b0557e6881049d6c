package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/events"
	"github.com/powerhouse/powerhouse/supervisor"
	"github.com/powerhouse/powerhouse/units"
)

var setVerb = verb{
	name:  "set",
	args:  "GROUP KEY=VALUE...",
	short: "change a group's config live: saved in the configuration, delivered to the running workers",
	long: `Sets keys of the group's [worker.config] table. VALUE is a JSON literal
(42, true, "text", [1,2], {"a":1}); a bare word is a string. The
configuration file is edited in place (only the lines concerned; comments
stay), validated, and written atomically; then the group's JSON config is
rewritten (mode 0640, group of the workers) and delivered to the running
workers: a group with reload_signal = "SIGHUP" gets SIGHUP (the activation
library re-reads it and runs OnReconfigure), without a restart; any other
group is restarted one instance at a time, each once the previous is ready
(as powerhouse reload), since SIGHUP ends a worker that does not handle it.
A group with reloadable = false and no reload_signal is not restarted: its
workers read the new configuration when they next start. The command says
which happened. The change is logged as master.reconfigure with the keys
changed; values only for keys listed in the group's public_config. A bad
key or value changes nothing.

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
			// anything is written: a typo in the group, a key given
			// twice or a service manager out of reach changes nothing.
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
			// A bad value is refused before systemd is asked anything.
			if _, err := config.SetGroupConfig(cfg, src, group, values); err != nil {
				return &exitError{code: ExitUsage, err: fmt.Errorf("powerhouse set: %w", err)}
			}
			m, err := mf.connect(e)
			if err != nil {
				return err
			}
			defer m.Close()
			w, readers, err := editLocked(cfg, func(src []byte) ([]byte, error) {
				out, err := config.SetGroupConfig(cfg, src, group, values)
				if err != nil {
					return nil, &exitError{code: ExitUsage, err: fmt.Errorf("powerhouse set: %w", err)}
				}
				return out, nil
			}, group, true)
			if err != nil {
				return err
			}
			how, err := deliver(e, m, w)
			if err != nil {
				return err
			}
			ev := reconfigureEvent(w, values, how)
			_ = events.Write(ev)
			fmt.Fprintf(e.stderr, "set %s: %s saved in %s; %s readable by %s; %s\n",
				group, strings.ReplaceAll(ev.Fields["keys"], ",", ", "), cfg, units.Group{Name: group}.ConfigPath(), readers, how)
			return nil
		}
	},
}

// editLocked applies edit to the configuration file cfg and writes the
// result, under an exclusive lock on its directory taken before the file
// is read: two set or scale commands at once each see the other's
// change (without it, ten parallel sets kept one key of ten, each
// saying it had saved its own). With groupConfig, the group's
// config.json is written under the lock too, so that it ends as the
// file does. It returns the group as edited and who may read its
// config.json.
func editLocked(cfg string, edit func([]byte) ([]byte, error), group string, groupConfig bool) (*config.Worker, string, error) {
	unlock, err := lockDir(filepath.Dir(cfg))
	if err != nil {
		return nil, "", err
	}
	defer unlock()
	src, err := config.ReadFile(cfg)
	if err != nil {
		return nil, "", err
	}
	out, err := edit(src)
	if err != nil {
		return nil, "", err
	}
	nc, err := config.Parse(cfg, out)
	if err != nil {
		return nil, "", err
	}
	w := nc.Worker(group)
	if w == nil { // the group went away meanwhile: the edit would have failed
		return nil, "", usagef("no group %q in %s", group, cfg)
	}
	if _, err := units.WriteFile(cfg, out, configPerm); err != nil {
		return nil, "", err
	}
	if !groupConfig {
		return w, "", nil
	}
	readers, err := supervisor.WriteGroupConfig(units.Group{Name: w.Name}, w)
	return w, readers, err
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

// configPerm is how set and scale rewrite the configuration file: root's
// alone when new, and an existing file keeps the mode and group the
// operator gave it (but never stays readable by others).
var configPerm = units.Perm{Mode: 0o600, Keep: true}

// deliver brings the group's running workers to their new configuration,
// the way its reload_signal says, and says what it did: SIGHUP to every
// running instance for workers that handle it; otherwise a rolling
// restart, because SIGHUP ends a process that does not handle it.
func deliver(e *env, m units.Manager, w *config.Worker) (string, error) {
	sts, err := m.States(e.ctx, "powerhouse-"+w.Name+"@*.service")
	if err != nil {
		return "", err
	}
	running := 0
	for _, st := range sts {
		if st.ActiveState == "active" || st.ActiveState == "reloading" {
			running++
		}
	}
	switch {
	case running == 0:
		return "no worker running: they read it when they start", nil
	case w.ReloadSignal == config.ReloadSIGHUP:
		n := 0
		for _, st := range sts {
			if st.ActiveState == "active" || st.ActiveState == "reloading" {
				if err := m.Signal(e.ctx, st.Name, syscall.SIGHUP); err != nil {
					return "", fmt.Errorf("deliver to %s: %w", st.Name, err)
				}
				n++
			}
		}
		return fmt.Sprintf("sent SIGHUP to %d running workers (reload_signal = \"SIGHUP\"), which re-read it without a restart", n), nil
	case !w.Reloadable:
		return fmt.Sprintf("%d running workers keep the old configuration until they restart (no reload_signal, and reloadable = false forbids a rolling restart)", running), nil
	}
	if err := rollingRestart(e, m, "set", w); err != nil {
		return "", err
	}
	return fmt.Sprintf("restarted the %d instances one at a time (no reload_signal: the workers may not handle SIGHUP)", w.Amount), nil
}

// reconfigureEvent is the master.reconfigure event for values set in w:
// the keys changed and how they were delivered; the values stay out of
// the journal (they may be secrets) but for the keys w's public_config
// names, given as a JSON object in the "values" field.
func reconfigureEvent(w *config.Worker, values map[string]any, how string) events.Event {
	keys := make([]string, 0, len(values))
	public := map[string]any{}
	for k := range values {
		keys = append(keys, k)
		if w.Public(k) {
			public[k] = values[k]
		}
	}
	sort.Strings(keys)
	fields := map[string]string{"keys": strings.Join(keys, ","), "delivery": how}
	if len(public) > 0 {
		b, _ := json.Marshal(public)
		fields["values"] = string(b)
	}
	return events.Event{Type: events.MasterReconfigure, Group: w.Name,
		Message: fmt.Sprintf("group %s reconfigured: %s (%s)", w.Name, strings.Join(keys, ", "), how),
		Fields:  fields}
}

// setDelivery says how set delivers a new configuration to w's workers,
// for generate's output.
func setDelivery(w *config.Worker) string {
	switch {
	case w.ReloadSignal == config.ReloadSIGHUP:
		return "powerhouse set sends SIGHUP (reload_signal = \"SIGHUP\"): the workers re-read their configuration without a restart"
	case !w.Reloadable:
		return "powerhouse set changes the configuration for the next start only (no reload_signal, reloadable = false)"
	}
	return "powerhouse set restarts the instances one at a time (no reload_signal; set reload_signal = \"SIGHUP\" if the workers re-read their configuration on SIGHUP, as Go workers using the activation library do)"
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
