package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strings"

	"github.com/powerhouse/powerhouse/config"
)

// accounts answers whether user and group names exist on the system a
// house is installed on: the running one, or an image under --root.
type accounts struct {
	where      string // "on this system", "in the image DIR"
	root       string // the image, "" for the running system (in the hints)
	user       func(name string) (bool, error)
	group      func(name string) (bool, error)
	incomplete bool // the image's files defer to NIS ("+" lines): not checked
}

// hostAccounts looks names up on the running system (os/user: without
// cgo, /etc/passwd and /etc/group).
func hostAccounts() *accounts {
	return &accounts{
		where: "on this system",
		user: func(name string) (bool, error) {
			_, err := user.Lookup(name)
			var unknown user.UnknownUserError
			if errors.As(err, &unknown) {
				return false, nil
			}
			return err == nil, err
		},
		group: func(name string) (bool, error) {
			_, err := user.LookupGroup(name)
			var unknown user.UnknownGroupError
			if errors.As(err, &unknown) {
				return false, nil
			}
			return err == nil, err
		},
	}
}

// imageAccounts reads the names in root/etc/passwd and root/etc/group; nil
// when root has not both (a package tree, not an image: its accounts are
// made at first boot, by then nobody can tell).
func imageAccounts(root string) (*accounts, error) {
	a := &accounts{where: "in the image " + root, root: root}
	var sets [2]map[string]bool
	for i, f := range []string{"passwd", "group"} {
		names, incomplete, err := readAccountNames(filepath.Join(root, "etc", f))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		sets[i] = names
		a.incomplete = a.incomplete || incomplete
	}
	a.user = func(name string) (bool, error) { return sets[0][name], nil }
	a.group = func(name string) (bool, error) { return sets[1][name], nil }
	return a, nil
}

// maxAccountFile bounds what readAccountNames reads: an image's
// /etc/passwd of a million accounts is under 100 MiB; this is a sanity
// bound against a device or an endless file put there, not a quota.
const maxAccountFile = 64 << 20

// readAccountNames returns the names (the first field) of an /etc/passwd
// or /etc/group file. incomplete says it has NIS compat lines ("+", "-"),
// which stand for names it does not hold.
func readAccountNames(path string) (names map[string]bool, incomplete bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, false, err
	} else if !fi.Mode().IsRegular() {
		return nil, false, fmt.Errorf("%s: not a regular file", path)
	}
	names = map[string]bool{}
	sc := bufio.NewScanner(io.LimitReader(f, maxAccountFile+1))
	sc.Buffer(make([]byte, 0, 4096), 64<<10) // no passwd line is longer
	read := 0
	for sc.Scan() {
		line := sc.Text()
		if read += len(line) + 1; read > maxAccountFile {
			return nil, false, fmt.Errorf("%s: larger than %d MiB", path, maxAccountFile>>20)
		}
		if line == "" || line[0] == '#' {
			continue
		}
		if line[0] == '+' || line[0] == '-' {
			incomplete = true
			continue
		}
		if name, _, ok := strings.Cut(line, ":"); ok && name != "" {
			names[name] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, false, fmt.Errorf("read %s: %w", path, err)
	}
	return names, incomplete, nil
}

// checkAccounts lists, as configuration errors at their keys, the
// [worker.service] user and group names of c that do not exist in a. The
// default user and group are exempt (install creates them with
// systemd-sysusers), and so are numeric ids, which need no entry.
func checkAccounts(c *config.Config, a *accounts) (config.ErrorList, error) {
	if a.incomplete {
		return nil, nil
	}
	var errs config.ErrorList
	for i, w := range c.Workers {
		for _, k := range []struct {
			key, name, kind, add, why string
			exists                    func(string) (bool, error)
		}{
			{"service.user", w.Service.User, "user", "useradd", "the group's workers could not start", a.user},
			{"service.group", w.Service.Group, "group", "groupadd", "every group's supervisor joins the workers' groups, so none could start", a.group},
		} {
			if k.name == "" || k.name == config.DefaultUser || numeric(k.name) {
				continue
			}
			ok, err := k.exists(k.name)
			if err != nil {
				return nil, fmt.Errorf("look up %s %q: %w", k.kind, k.name, err)
			}
			if ok {
				continue
			}
			add := k.add + " --system " + k.name
			if a.root != "" {
				add = k.add + " --root " + a.root + " --system " + k.name
			}
			errs = append(errs, c.WorkerError(i, k.key, "%s %q does not exist %s: create it (%s) or remove the key; %s",
				k.kind, k.name, a.where, add, k.why))
		}
	}
	return errs, nil
}

func numeric(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}
