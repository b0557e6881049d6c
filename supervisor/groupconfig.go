package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

// DefaultWorkerGroup is the group workers run as when their
// [worker.service] names neither a user nor a group.
const DefaultWorkerGroup = "powerhouse"

// WriteGroupConfig writes the group's configuration for its workers to
// g.ConfigPath(). The file may hold secrets: it is mode
// 0640 and belongs to the group the workers run as (see WorkerGroup), so
// that they read it and no other user does. When that group cannot be
// given (EPERM: the writer has neither CAP_CHOWN nor membership), it
// fails, naming the file: workers that cannot read their configuration
// must not start as if all were well. A writer that is not root (the
// supervisor of a user's own house) with no user or group asked for
// keeps the file its own, 0600: its workers run as the same user. readers
// says who can read it, for the log.
func WriteGroupConfig(g units.Group, w *config.Worker) (readers string, err error) {
	b, err := w.ConfigJSON()
	if err != nil {
		return "", err
	}
	dir := filepath.Dir(g.ConfigPath())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("group config: %w", err)
	}
	perm := units.Secret
	gid, name, err := WorkerGroup(w.Service)
	switch {
	case os.Geteuid() != 0 && w.Service.User == "" && w.Service.Group == "":
		// A user's own house (systemd --user): its workers run as this
		// user, who owns the file.
		readers = "this user only (workers of a user's house run as the user)"
	case errors.Is(err, errNoDefaultGroup):
		// No such group on this system, so no worker runs as it
		// (systemd would refuse to start one): root's alone.
		readers = "root only (no group " + DefaultWorkerGroup + " on this system)"
	case err != nil:
		return "", fmt.Errorf("group config %s: %w", g.ConfigPath(), err)
	default:
		perm = units.Perm{Mode: 0o640, SetGroup: true, GID: gid}
		readers = fmt.Sprintf("group %s (gid %d)", name, gid)
	}
	if _, err := units.WriteFile(g.ConfigPath(), b, perm); err != nil {
		return "", fmt.Errorf("group config: %w", err)
	}
	return readers, nil
}

var errNoDefaultGroup = errors.New("no group " + DefaultWorkerGroup)

// WorkerGroup returns the group id and name a group's workers run as:
// [worker.service] group, else the primary group of its user, else
// DefaultWorkerGroup. Names are looked up in the system's user database.
func WorkerGroup(s config.Service) (gid int, name string, err error) {
	switch {
	case s.Group != "":
		if n, err := strconv.Atoi(s.Group); err == nil {
			return n, s.Group, nil
		}
		g, err := user.LookupGroup(s.Group)
		if err != nil {
			return 0, "", fmt.Errorf("[worker.service] group %q: %w", s.Group, err)
		}
		n, err := strconv.Atoi(g.Gid)
		if err != nil {
			return 0, "", fmt.Errorf("[worker.service] group %q: gid %q: %w", s.Group, g.Gid, err)
		}
		return n, g.Name, nil
	case s.User != "":
		var u *user.User
		var err error
		if _, nerr := strconv.Atoi(s.User); nerr == nil {
			u, err = user.LookupId(s.User)
		} else {
			u, err = user.Lookup(s.User)
		}
		if err != nil {
			return 0, "", fmt.Errorf("[worker.service] user %q (its primary group reads the configuration): %w", s.User, err)
		}
		n, err := strconv.Atoi(u.Gid)
		if err != nil {
			return 0, "", fmt.Errorf("[worker.service] user %q: gid %q: %w", s.User, u.Gid, err)
		}
		name := u.Gid
		if g, err := user.LookupGroupId(u.Gid); err == nil {
			name = g.Name
		}
		return n, name, nil
	}
	g, err := user.LookupGroup(DefaultWorkerGroup)
	if err != nil {
		var unknown user.UnknownGroupError
		if errors.As(err, &unknown) {
			return 0, "", errNoDefaultGroup
		}
		return 0, "", fmt.Errorf("group %s: %w", DefaultWorkerGroup, err)
	}
	n, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, "", fmt.Errorf("group %s: gid %q: %w", DefaultWorkerGroup, g.Gid, err)
	}
	return n, g.Name, nil
}
