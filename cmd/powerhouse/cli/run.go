package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/powerhouse/powerhouse/sticky"
)

// listFlag collects a repeated string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

var runVerb = verb{
	name:    "run",
	signals: true,
	args:    "[--listen ADDR]... [--instances N] -- COMMAND [ARG...]",
	short:   "run a sticky house without systemd, in the foreground (development, benchmarks)",
	long: `Starts N instances of COMMAND, each with its own hand-off socket passed as
systemd would (LISTEN_FDS=1, LISTEN_FDNAMES=handoff), listens on every
--listen address and dispatches each connection to the instance chosen by
the client's address, exactly as a sticky group's supervisor does. It is
the same dispatcher, without units, D-Bus or journald: for a laptop, a
demo or a benchmark. --proxy ADDR listens for clients that send a PROXY
protocol header; only peers in --proxy-from (default: loopback,
127.0.0.0/8 and ::1) may connect there, any other is closed before a byte
is read. Instances are not restarted; when one exits, run stops
them all and exits. SIGINT or SIGTERM stops them too.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		var listen, proxy listFlag
		fs.Var(&listen, "listen", "accept on `ADDR` (host:port or :port); repeatable")
		fs.Var(&proxy, "proxy", "accept PROXY protocol clients on `ADDR`; repeatable")
		var from listFlag
		fs.Var(&from, "proxy-from", "trust PROXY headers from `PREFIX` (a CIDR or one address) only; repeatable (default 127.0.0.0/8 and ::1)")
		n := fs.Int("instances", 2, "number of instances")
		return func(e *env, args []string) error {
			if len(args) == 0 {
				return usagef("expected -- COMMAND")
			}
			if len(listen)+len(proxy) == 0 {
				return usagef("expected at least one --listen or --proxy address")
			}
			if *n < 1 || *n > 1024 {
				return usagef("--instances must be from 1 to 1024")
			}
			trust, err := parseProxyFrom(from)
			if err != nil {
				return usagef("%v", err)
			}
			return runHouse(e, listen, proxy, trust, *n, args)
		}
	},
}

// parseProxyFrom turns --proxy-from values into prefixes: a CIDR, or one
// address (a /32 or /128). None means loopback.
func parseProxyFrom(vs []string) ([]netip.Prefix, error) {
	if len(vs) == 0 {
		vs = []string{"127.0.0.0/8", "::1"}
	}
	var out []netip.Prefix
	for _, v := range vs {
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			if p, err := netip.ParsePrefix(f); err == nil {
				out = append(out, p.Masked())
				continue
			}
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("--proxy-from %q: not a CIDR prefix or an IP address", f)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out, nil
}

func runHouse(e *env, listen, proxy []string, trust []netip.Prefix, n int, argv []string) error {
	dir, err := os.MkdirTemp("", "powerhouse-run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var ls []sticky.Listener
	for i, addrs := range [][]string{listen, proxy} {
		for _, a := range addrs {
			l, err := net.Listen("tcp", a)
			if err != nil {
				return err
			}
			f, err := l.(*net.TCPListener).File()
			l.Close()
			if err != nil {
				return err
			}
			sl := sticky.Listener{Name: a, Proxy: i == 1, File: f}
			if sl.Proxy {
				sl.ProxyFrom = trust
			}
			ls = append(ls, sl)
		}
	}
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	exited := make(chan error, n)
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			p.Process.Signal(syscall.SIGTERM)
		}
		for range procs {
			<-exited
		}
	}()
	ids := make([]int, n)
	for i := 1; i <= n; i++ {
		path := filepath.Join(dir, strconv.Itoa(i)+".sock")
		sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
		if err != nil {
			return err
		}
		f, err := sock.File()
		sock.Close()
		if err != nil {
			return err
		}
		// LISTEN_PID must be the worker's own PID, known only after fork:
		// a shell sets it and execs the command, keeping its PID.
		cmd := exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`}, argv...)...)
		cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES=handoff",
			"POWERHOUSE_GROUP=run", "POWERHOUSE_INSTANCE="+strconv.Itoa(i))
		cmd.ExtraFiles = []*os.File{f}
		cmd.Stdout, cmd.Stderr = e.stdout, e.stderr
		if err := cmd.Start(); err != nil {
			f.Close()
			return err
		}
		f.Close()
		procs = append(procs, cmd)
		go func(i int, c *exec.Cmd) {
			err := c.Wait()
			exited <- err
			cancel()
		}(i, cmd)
		ids[i-1] = i
	}
	d := sticky.NewDispatcher(sticky.DispatcherOptions{
		Path: func(id int) string { return filepath.Join(dir, strconv.Itoa(id)+".sock") },
		Log:  slog.New(slog.NewTextHandler(e.stderr, nil)),
	})
	d.Up.Replace(ids...)
	fmt.Fprintf(e.stderr, "powerhouse run: %d instances of %s, listening on %s\n", n, argv[0], strings.Join(append(listen, proxy...), " "))
	err = d.Serve(ctx, ls)
	s := d.Stats()
	fmt.Fprintf(e.stderr, "powerhouse run: %d connections handed off, %d sticky misses, %d dropped, %d PROXY errors, %d untrusted PROXY peers\n",
		s.HandedOff, s.StickyMiss, s.Dropped, s.ProxyErrors, s.ProxyUntrusted)
	if err == nil && e.ctx.Err() == nil {
		err = errors.New("an instance exited")
	}
	return err
}
