// Command sdrow runs one of the benchmark's systemd rows (bench/rows/
// systemd-*.sh): a private systemd (internal/sdbox) booted for the row,
// in which either the house is installed from a configuration or the
// reference is started as a transient service. The box shares the host's
// network namespace, so the load generator on the host reaches the row's
// loopback port.
//
//	sdrow -port 18110 -config bench/rows/systemd-house.toml house
//	sdrow -port 18120 -config bench/rows/systemd-house.toml reference
//
// house: `powerhouse install --now` of the configuration inside the box,
// as a user would run it: the generated units, powerhouse.target, the
// supervisor of every group and its instances, running as the user
// "powerhouse" (created in the box's private /etc from units.Sysusers).
//
// reference: `bench/reuseport -n N -- hello` (N copies of examples/hello,
// or of the -worker command, each with its own SO_REUSEPORT socket on the
// port, passed as systemd would: LISTEN_FDS=1) started with
// systemd-run as a transient service, with the [Service] sandboxing and
// user of the worker unit the same configuration generates (its first
// group), so that the reference pays the same cgroup, namespace and
// seccomp costs as the house's workers.
//
// The configuration is a TOML file in which @PORT@ and @BIN@ are replaced
// by -port and the box-side directory of the binaries; -worker-extra adds
// lines at its end (its last table should be the [[worker]] to change),
// so that a row variant is one line: e.g. 'dispatch = "kernel"'.
// -socket-extra writes [Socket] lines as a drop-in of the group's public
// socket unit before the install (e.g. 'DeferAcceptSec=0'), for a variant
// that changes what the generator makes of the socket.
//
// Once the row answers HTTP, sdrow writes -pids: "front=PID" (the sticky
// group's supervisor; the reference's launcher) and "workers=PID,PID"
// (the instances; the reference's copies), as host PIDs: a unit's MainPID
// is a PID of the box's namespace, mapped to the host's through the NSpid
// line of /proc/PID/status of the processes whose PID namespace is the
// box's. Then it waits for SIGTERM or SIGINT (or for its parent, the
// harness, to die), prints the supervisors'
// dispatch counters (house) and powers the box off. If sdrow is killed,
// the box dies with it (sdbox's PR_SET_PDEATHSIG).
//
// reload: the house, as in house mode, then `systemctl reload` of its
// first sticky group under load, measured (bench/sdrow/reload.go): a
// stream of new connections from -sources addresses and -long long-lived
// connections (examples/hello's line-echo, hijacked as a WebSocket is),
// a request or a line every -period each; the steady state for -steady
// before the reload; the long-lived connections close -hold after it
// returned. It prints one line, "reload dispatch=... cut=... failed=...
// p99_steady_ms=... p99_reload_ms=... ready_ms=...", and powers off:
//
//	sdrow -port 18190 -config bench/rows/systemd-reload.toml reload
//
// Needs root, like every sdbox box.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/units"
)

// boxBin is where the host's binary directory appears inside the box:
// under the box's own /run (0755), so the workers' user reaches it
// wherever the host directory lives.
const boxBin = "/run/powerhouse-bench-bin"

// boxConfig is where the rendered configuration is written in the box
// before `powerhouse install` copies it to /etc/powerhouse.
const boxConfig = "/run/powerhouse-bench/house.toml"

// refUnit is the reference's transient service.
const refUnit = "bench-reference.service"

type options struct {
	mode        string
	port        int
	bin         string
	config      string
	workerExtra string
	socketExtra string
	copies      int
	worker      []string // the reference's copies: the command's words
	pids        string
	name        string
	ready       time.Duration
	reload      reloadOptions
}

func main() {
	var o options
	flag.IntVar(&o.port, "port", 0, "loopback `port` the row listens on (replaces @PORT@)")
	flag.StringVar(&o.bin, "bin", os.Getenv("BENCH_BIN"), "host `dir` with powerhouse, hello and reuseport (default $BENCH_BIN)")
	flag.StringVar(&o.config, "config", "", "the house's configuration `file` (TOML; @PORT@ and @BIN@ are replaced)")
	flag.StringVar(&o.workerExtra, "worker-extra", "", "TOML `lines` appended to the configuration (its last [[worker]] table)")
	flag.StringVar(&o.socketExtra, "socket-extra", "", "house: [Socket] `lines` of a drop-in for the sticky group's public socket unit, written before the install (e.g. 'DeferAcceptSec=0': measure the house without a setting the generator makes)")
	flag.IntVar(&o.copies, "n", 2, "reference: copies of hello")
	worker := flag.String("worker", "@BIN@/hello", "reference: the `command` of the copies, words separated by spaces (@BIN@ is replaced), e.g. '/usr/bin/node @BIN@/nodeworker.js'")
	flag.StringVar(&o.pids, "pids", os.Getenv("BENCH_PIDS"), "write front=PID and workers=PID,... (host PIDs) to this `file` once ready (default $BENCH_PIDS)")
	flag.StringVar(&o.name, "name", "", "box name (default bench-MODE)")
	flag.DurationVar(&o.ready, "ready-timeout", 90*time.Second, "how long the row may take to boot and answer")
	flag.IntVar(&o.reload.long, "long", 200, "reload: long-lived connections held across the reload")
	flag.IntVar(&o.reload.sources, "sources", 64, "reload: source addresses of the stream of new connections")
	flag.DurationVar(&o.reload.period, "period", 100*time.Millisecond, "reload: a request per source, a line per long-lived connection, every `period`")
	flag.DurationVar(&o.reload.steady, "steady", 3*time.Second, "reload: the steady-state window before the reload")
	flag.DurationVar(&o.reload.hold, "hold", time.Second, "reload: how long the long-lived connections stay open after the reload returned")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: sdrow -port N -config FILE [-worker-extra LINES] [-socket-extra LINES] [-pids FILE] house|reference|reload")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	o.mode = flag.Arg(0)
	for _, w := range strings.Fields(*worker) {
		o.worker = append(o.worker, strings.ReplaceAll(w, "@BIN@", boxBin))
	}
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "sdrow:", err)
		os.Exit(2)
	}
	if err := run(&o); err != nil {
		fmt.Fprintln(os.Stderr, "sdrow:", err)
		os.Exit(1)
	}
}

func (o *options) check() error {
	switch {
	case o.mode != "house" && o.mode != "reference" && o.mode != "reload":
		return fmt.Errorf("mode %q: want house, reference or reload", o.mode)
	case o.port < 1 || o.port > 65535:
		return fmt.Errorf("-port %d: want 1..65535", o.port)
	case o.bin == "" || !filepath.IsAbs(o.bin):
		return fmt.Errorf("-bin %q: want an absolute directory (or set BENCH_BIN)", o.bin)
	case o.config == "":
		return errors.New("-config is required")
	case o.copies < 1 || o.copies > 64:
		return fmt.Errorf("-n %d: want 1..64", o.copies)
	case len(o.worker) == 0 || !filepath.IsAbs(o.worker[0]):
		return fmt.Errorf("-worker %q: want an absolute program and its arguments", strings.Join(o.worker, " "))
	case os.Geteuid() != 0:
		return errors.New("needs root (it boots a private systemd)")
	}
	if err := o.reload.check(); err != nil {
		return err
	}
	if o.name == "" {
		o.name = "bench-" + o.mode
	}
	return nil
}

// render returns the configuration with its placeholders replaced.
func (o *options) render() ([]byte, *config.Config, error) {
	src, err := os.ReadFile(o.config)
	if err != nil {
		return nil, nil, err
	}
	src = bytes.ReplaceAll(src, []byte("@PORT@"), []byte(strconv.Itoa(o.port)))
	src = bytes.ReplaceAll(src, []byte("@BIN@"), []byte(boxBin))
	if o.workerExtra != "" {
		src = append(append(src, '\n'), o.workerExtra+"\n"...)
	}
	c, err := config.Parse(boxConfig, src)
	if err != nil {
		return nil, nil, fmt.Errorf("configuration %s: %w", o.config, err)
	}
	if len(c.Workers) == 0 {
		return nil, nil, fmt.Errorf("configuration %s: no [[worker]]", o.config)
	}
	return src, c, nil
}

func run(o *options) (err error) {
	src, cfg, err := o.render()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	bootCtx, cancel := context.WithTimeout(ctx, o.ready)
	defer cancel()
	began := time.Now()
	box, err := sdbox.Start(bootCtx, sdbox.Options{
		Name:        o.name,
		Sysusers:    units.Sysusers,
		Binds:       []sdbox.Bind{{Source: o.bin, Target: boxBin}},
		StopTimeout: 5 * time.Second,
	})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := box.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	booted := time.Since(began)

	var front int
	var workers []int
	switch o.mode {
	case "house", "reload":
		front, workers, err = startHouse(bootCtx, box, src, cfg, o.socketExtra)
	default:
		front, workers, err = startReference(bootCtx, box, o, cfg)
	}
	if err != nil {
		return errors.Join(err, fmt.Errorf("journal (tail):\n%s", journal(box)))
	}
	if err := waitHTTP(bootCtx, o.port); err != nil {
		return errors.Join(err, fmt.Errorf("journal (tail):\n%s", journal(box)))
	}
	if o.mode == "reference" {
		// The copies are children of the launcher: known once started.
		if workers, err = childrenOf(front, o.copies, filepath.Base(o.worker[0]), bootCtx); err != nil {
			return err
		}
	}
	line := fmt.Sprintf("front=%d\nworkers=%s\n", front, joinInts(workers))
	if o.pids != "" {
		tmp := o.pids + ".tmp"
		if err := os.WriteFile(tmp, []byte(line), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, o.pids); err != nil {
			return err
		}
	}
	fmt.Printf("sdrow: %s ready on 127.0.0.1:%d in %.2f s (box booted in %.2f s, host pid %d): front=%d workers=%s\n",
		o.mode, o.port, time.Since(began).Seconds(), booted.Seconds(), box.PID(), front, joinInts(workers))
	if o.mode == "reload" {
		w := stickyWorker(cfg)
		res, err := reloadUnderLoad(ctx, box, o.port, units.Group{Name: w.Name}, w.Amount, string(w.Dispatch), o.reload)
		if err != nil {
			return errors.Join(err, fmt.Errorf("journal (tail):\n%s", journal(box)))
		}
		fmt.Println(res.line())
		return nil
	}

	// Until told to stop, or until the harness that started us is gone
	// (reparented: nobody would ever stop us), without leaving a box.
	parent := os.Getppid()
	tick := time.NewTicker(500 * time.Millisecond) // no event tells a child its parent died but PDEATHSIG, which a signal context would turn into the same wait
	defer tick.Stop()
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-tick.C:
			if os.Getppid() != parent {
				fmt.Println("sdrow: the process that started me is gone; powering off")
				break wait
			}
		}
	}
	if o.mode == "house" {
		for _, w := range cfg.Workers {
			g := units.Group{Name: w.Name}
			if b, err := box.ReadFile(g.DispatchStatePath()); err == nil {
				fmt.Printf("sdrow: %s %s\n", g.DispatchStatePath(), bytes.TrimSpace(b))
			}
		}
	}
	return nil
}

// startHouse installs the configuration and starts powerhouse.target, as
// `powerhouse install --now` does on a real machine, and returns the host
// PIDs of the first sticky group's supervisor and of its instances.
//
// socketExtra, when set, are [Socket] lines of a drop-in for that group's
// public socket unit, in place before the units are started.
func startHouse(ctx context.Context, box *sdbox.Box, src []byte, cfg *config.Config, socketExtra string) (int, []int, error) {
	if err := box.WriteFile(boxConfig, src, 0o644); err != nil {
		return 0, nil, err
	}
	if socketExtra != "" {
		g := units.Group{Name: stickyWorker(cfg).Name}
		p := "/etc/systemd/system/" + g.PublicSocket() + ".d/50-bench.conf"
		if err := box.WriteFile(p, []byte("[Socket]\n"+socketExtra+"\n"), 0o644); err != nil {
			return 0, nil, err
		}
	}
	if out, err := box.Run(ctx, boxBin+"/powerhouse", "install", "--now", boxConfig); err != nil {
		return 0, nil, fmt.Errorf("powerhouse install --now: %w\n%s", err, out)
	}
	w := stickyWorker(cfg)
	g := units.Group{Name: w.Name}
	if out, err := box.Systemctl(ctx, "show", "-p", "DeferAcceptUSec", "--value", g.PublicSocket()); err == nil {
		// In the row's log: which deferral the measured socket had.
		fmt.Printf("sdrow: %s DeferAcceptUSec=%s\n", g.PublicSocket(), bytes.TrimSpace(out))
	}
	front, err := mainPID(ctx, box, g.SupervisorUnit())
	if err != nil {
		return 0, nil, err
	}
	var workers []int
	for i := 1; i <= w.Amount; i++ {
		pid, err := mainPID(ctx, box, g.Instance(i))
		if err != nil {
			return 0, nil, err
		}
		workers = append(workers, pid)
	}
	return front, workers, nil
}

// stickyWorker is the configuration's first sticky group, else its first.
func stickyWorker(cfg *config.Config) *config.Worker {
	for i := range cfg.Workers {
		if cfg.Workers[i].Sticky {
			return &cfg.Workers[i]
		}
	}
	return &cfg.Workers[0]
}

// refSkip are the worker unit's [Service] settings the reference does not
// take: how the unit is started and restarted and what PowerHouse passes
// its workers (hand-off socket, environment). Everything else (user,
// sandboxing, system call filter) it takes as is.
var refSkip = []string{"Type", "NotifyAccess", "Environment", "ExecStart", "ExecReload", "Sockets", "Restart", "RestartSec", "KillMode", "WatchdogSec"}

// startReference starts reuseport as a transient service with the
// sandboxing of the configuration's first worker unit, and returns the
// host PID of its main process (the launcher); the copies come later.
func startReference(ctx context.Context, box *sdbox.Box, o *options, cfg *config.Config) (int, []int, error) {
	us, err := generator.Generate(cfg, generator.Options{Binary: boxBin + "/powerhouse", ConfigPath: "/etc/powerhouse/powerhouse.toml"})
	if err != nil {
		return 0, nil, err
	}
	tmpl := units.Group{Name: cfg.Workers[0].Name}.WorkerTemplate()
	args := []string{"--unit=" + refUnit, "--service-type=exec", "--collect"}
	found := false
	for _, u := range us {
		if u.Name != tmpl {
			continue
		}
		found = true
		for _, opt := range u.Options {
			if opt.Section == "Service" && !slices.Contains(refSkip, opt.Name) {
				args = append(args, "-p", opt.Name+"="+opt.Value)
			}
		}
	}
	if !found {
		return 0, nil, fmt.Errorf("the configuration generates no %s", tmpl)
	}
	args = append(args, boxBin+"/reuseport", "-listen", "127.0.0.1:"+strconv.Itoa(o.port), "-n", strconv.Itoa(o.copies), "--")
	args = append(args, o.worker...)
	if out, err := box.Run(ctx, "systemd-run", args...); err != nil {
		return 0, nil, fmt.Errorf("systemd-run %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	front, err := mainPID(ctx, box, refUnit)
	return front, nil, err
}

// mainPID returns the host PID of unit's main process.
func mainPID(ctx context.Context, box *sdbox.Box, unit string) (int, error) {
	out, err := box.Systemctl(ctx, "show", "-p", "MainPID", "--value", unit)
	if err != nil {
		return 0, fmt.Errorf("MainPID of %s: %w\n%s", unit, err, out)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("MainPID of %s: %q (not running?)", unit, bytes.TrimSpace(out))
	}
	return hostPID(box.PID(), pid)
}

// hostPID maps pid, a PID in the namespace of the box whose PID 1 is
// host PID init, to the host's: the process whose NSpid line ends with
// pid and whose PID namespace is the box's.
func hostPID(init, pid int) (int, error) {
	want, err := pidNS(init)
	if err != nil {
		return 0, err
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		h, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(st)) {
			rest, ok := strings.CutPrefix(line, "NSpid:")
			if !ok {
				continue
			}
			f := strings.Fields(rest)
			if len(f) >= 2 && f[len(f)-1] == strconv.Itoa(pid) {
				if ns, err := pidNS(h); err == nil && ns == want {
					return h, nil
				}
			}
			break
		}
	}
	return 0, fmt.Errorf("no host process is PID %d of the box", pid)
}

type nsID struct{ dev, ino uint64 }

func pidNS(pid int) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/pid", &st); err != nil {
		return nsID{}, fmt.Errorf("pid namespace of %d: %w", pid, err)
	}
	return nsID{st.Dev, st.Ino}, nil
}

// childrenOf waits until ppid has n children whose command name is comm
// (the shell that sets LISTEN_PID has exec'd the copy) and returns them. Children are
// found by their parent PID in /proc/PID/stat: /proc/PID/task/TID/children
// lists only the children that thread forked, and Go forks from any.
func childrenOf(ppid, n int, comm string, ctx context.Context) ([]int, error) {
	if len(comm) > 15 { // the kernel keeps the first 15 bytes (TASK_COMM_LEN)
		comm = comm[:15]
	}
	for {
		var kids []int
		ents, err := os.ReadDir("/proc")
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			st, err := os.ReadFile("/proc/" + e.Name() + "/stat")
			if err != nil {
				continue
			}
			// "PID (comm) STATE PPID ...": comm may hold spaces.
			i := bytes.LastIndexByte(st, ')')
			j := bytes.IndexByte(st, '(')
			if i < 0 || j < 0 {
				continue
			}
			f := strings.Fields(string(st[i+1:]))
			if len(f) > 1 && f[1] == strconv.Itoa(ppid) && string(st[j+1:i]) == comm {
				kids = append(kids, pid)
			}
		}
		if len(kids) == n {
			return kids, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%d of %d %s copies under pid %d: %w", len(kids), n, comm, ppid, ctx.Err())
		case <-time.After(20 * time.Millisecond): // nothing signals an exec to a third process
		}
	}
}

// waitHTTP polls the row's port until a GET answers 200.
func waitHTTP(ctx context.Context, port int) error {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: (&net.Dialer{Timeout: time.Second}).DialContext}}
	url := "http://127.0.0.1:" + strconv.Itoa(port) + "/"
	var last error
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never answered: %v (%w)", url, last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func journal(box *sdbox.Box) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := box.Run(ctx, "journalctl", "--no-pager", "-n", "60", "-o", "short-monotonic")
	return string(out)
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}
