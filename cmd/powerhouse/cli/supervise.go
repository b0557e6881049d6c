package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/supervisor"
	"github.com/powerhouse/powerhouse/units"
)

var superviseVerb = verb{
	name:    "supervise",
	signals: true,
	args:    "GROUP",
	short:   "run the supervisor of one group (what powerhouse@GROUP.service runs)",
	long: `Runs as powerhouse@GROUP.service: starts the group's instances through
systemd, keeps track of the ones that are up and, for a sticky group,
accepts on the sockets systemd passes (LISTEN_FDS) and hands each
connection to the instance chosen by the client's address; in kernel mode
(dispatch = "kernel") it gets a copy of every instance's own socket
instead, and keeps the eBPF program that steers each connection to its
instance attached and its table up to date (its fd store keeps the
program across restarts). It reports
READY=1 and a STATUS= line to systemd, and logs to standard error
(journald). On "systemctl stop" it stops the group's workers; when it is
restarted or killed the workers keep running.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		cfg := fs.String("config", config.DefaultPath, "configuration `FILE`")
		user := fs.Bool("user", false, "talk to the user's service manager instead of the system's")
		return func(e *env, args []string) error {
			if len(args) != 1 {
				return usagef("expected one GROUP")
			}
			// Run by hand, a supervisor would start the group's
			// instances from a shell, outside its unit, and a sticky
			// one would have no socket: systemd sets INVOCATION_ID
			// for every unit it runs.
			if os.Getenv("INVOCATION_ID") == "" {
				unit := units.Group{Name: args[0]}.SupervisorUnit()
				return usagef("runs as %s, started by systemd: use `systemctl %sstart %s` or `powerhouse %sstart`", unit, flagWord(*user), unit, flagWord(*user))
			}
			c, err := config.Load(*cfg)
			if err != nil {
				return err
			}
			if c.Worker(args[0]) == nil {
				return usagef("no group %q in %s", args[0], c.File)
			}
			// The connection must outlive SIGTERM (which cancels
			// e.ctx): stopping the workers is done over it.
			m, err := connect(context.WithoutCancel(e.ctx), *user)
			if err != nil {
				return err
			}
			defer m.Close()
			log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level(c.Verbose)}))
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			reload := make(chan struct{}, 1)
			go func() {
				for range hup {
					select {
					case reload <- struct{}{}:
					default:
					}
				}
			}()
			// WatchdogSec= of the unit; 0 without.
			wd, _ := daemon.SdWatchdogEnabled(false)
			s, err := supervisor.New(supervisor.Options{
				Watchdog: wd,
				Reload:   reload,
				Config:   c,
				Group:    args[0],
				Scope:    scopeOf(*user),
				Manager:  m,
				Files:    activation.Files(true),
				Notify: func(state string) error {
					_, err := daemon.SdNotify(false, state)
					return err
				},
				NotifyFiles: notifyFiles,
				Log:         log,
			})
			if err != nil {
				return err
			}
			if err := s.Run(e.ctx); err != nil {
				return fmt.Errorf("group %s: %w", args[0], err)
			}
			return nil
		}
	},
}

// notifyFiles sends state with files to systemd's notification socket
// (FDSTORE=1: kernel mode keeps its steering program in the supervisor's
// fd store). go-systemd's SdNotify sends no descriptors, and a net.UnixConn
// cannot send a datagram with ancillary data on a connected socket: this
// is sd_pid_notify_with_fds in raw system calls.
func notifyFiles(state string, files []*os.File) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return errors.New("no NOTIFY_SOCKET: not started by systemd")
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("notify socket: %w", err)
	}
	defer unix.Close(fd)
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	// An "@" path is in the abstract namespace, which SockaddrUnix
	// understands.
	if err := unix.Sendmsg(fd, []byte(state), unix.UnixRights(fds...), &unix.SockaddrUnix{Name: path}, 0); err != nil {
		return fmt.Errorf("notify socket %s: %w", path, err)
	}
	return nil
}

func level(verbose bool) slog.Level {
	if verbose {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}
