package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

var metricsVerb = verb{
	name:  "metrics",
	args:  "[GROUP...]",
	short: "print the metrics of each running group (what a Prometheus scraper gets)",
	long: `Prints, in the Prometheus text format, the metrics of the groups named (every
group whose supervisor runs, by default), each series labelled group=NAME:
what a scraper gets from each group's metrics socket,
RUNTIME/GROUP/metrics.sock (/run/powerhouse/GROUP/metrics.sock; with --user
$XDG_RUNTIME_DIR/powerhouse/GROUP/metrics.sock). The socket is 0660, owned by
root and the group ` + config.DefaultUser + `: run it as root or as a member of that group.
docs/status.md lists the metrics. A group whose supervisor does not answer
is named on standard error, and the exit status is 1.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		user := fs.Bool("user", false, "the groups of the user's service manager")
		return func(e *env, args []string) error {
			base := scopeOf(*user).RuntimeBase()
			if e.runtimeRoot != "" {
				base = e.runtimeRoot
			}
			socks, err := metricsSockets(base, args)
			if err != nil {
				return err
			}
			fams, errs := gatherGroups(e.ctx, socks)
			for _, err := range errs {
				fmt.Fprintf(e.stderr, "powerhouse metrics: %v\n", err)
			}
			enc := expfmt.NewEncoder(e.stdout, expfmt.NewFormat(expfmt.TypeTextPlain))
			for _, f := range fams {
				if err := enc.Encode(f); err != nil {
					return err
				}
			}
			if len(errs) > 0 {
				return &exitError{code: ExitFailure}
			}
			return nil
		}
	},
}

// metricsSockets returns the metrics sockets of the groups named, or of
// every group with one under base, by group name.
func metricsSockets(base string, groups []string) (map[string]string, error) {
	out := map[string]string{}
	if len(groups) > 0 {
		for _, g := range groups {
			if len(g) > 64 || !config.NameRE.MatchString(g) {
				return nil, usagef("group %q: not a group name", g)
			}
			out[g] = units.Group{Name: g, Root: base}.MetricsPath()
		}
		return out, nil
	}
	paths, err := filepath.Glob(filepath.Join(base, "*", "metrics.sock"))
	if err != nil {
		return nil, err
	}
	if len(paths) > maxMetricsGroups {
		paths = paths[:maxMetricsGroups]
	}
	for _, p := range paths {
		out[filepath.Base(filepath.Dir(p))] = p
	}
	if len(out) == 0 {
		return nil, &exitError{code: ExitFailure, err: fmt.Errorf("no group's supervisor serves metrics under %s (is the house running? --user for a user's house)", base)}
	}
	return out, nil
}

// Bounds of a gather: each group's answer is read within a time and a
// size, so that one stuck or hostile supervisor (or a socket someone else
// put there) holds nothing up.
const (
	maxMetricsGroups  = config.MaxGroups
	maxExposition     = 8 << 20
	groupScrapeTimout = 5 * time.Second
)

// scrapeGroup gets and parses the exposition of one metrics socket.
func scrapeGroup(ctx context.Context, path string) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, groupScrapeTimout)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true, MaxResponseHeaderBytes: 64 << 10}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://metrics/metrics", nil)
	if err != nil {
		return nil, err
	}
	// The classic text format, the one expfmt's parser reads.
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s", resp.Status)
	}
	lr := &io.LimitedReader{R: resp.Body, N: maxExposition + 1}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(lr)
	if lr.N <= 0 {
		return nil, fmt.Errorf("exposition over %d bytes", maxExposition)
	}
	return fams, err
}

// gatherGroups scrapes every socket (at once) and merges the families of
// the same name; each group's series carry its label already. The errors
// name the group whose scrape failed.
func gatherGroups(ctx context.Context, socks map[string]string) ([]*dto.MetricFamily, []error) {
	type result struct {
		group string
		fams  map[string]*dto.MetricFamily
		err   error
	}
	ch := make(chan result, len(socks))
	for g, p := range socks {
		go func() {
			fams, err := scrapeGroup(ctx, p)
			ch <- result{g, fams, err}
		}()
	}
	var gs prometheus.Gatherers
	var errs []error
	for range socks {
		r := <-ch
		if r.err != nil {
			errs = append(errs, fmt.Errorf("group %s: %s: %w", r.group, socks[r.group], r.err))
			continue
		}
		list := make([]*dto.MetricFamily, 0, len(r.fams))
		for _, f := range r.fams {
			list = append(list, f)
		}
		gs = append(gs, prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return list, nil }))
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	fams, err := gs.Gather()
	if err != nil {
		// Inconsistent families between groups (different releases of
		// powerhouse): what could be merged is kept, and said.
		errs = append(errs, err)
	}
	return fams, errs
}

var metricsEndpointVerb = verb{
	name:    "metrics-endpoint",
	signals: true,
	short:   "(internal) serve every group's metrics on TCP (what " + units.MetricsService + " runs)",
	long: `Runs as ` + units.MetricsService + `, on the socket systemd passes it (the
top-level metrics key): GET /metrics answers with the merged metrics of
every group's metrics socket under --runtime, in the Prometheus text format
or OpenMetrics as the scraper asks; every series is labelled group=NAME.
A request must arrive within 2s; each group's answer is read within 5s and
8 MiB; at most 4 scrapes are served at a time (more get 503), and an
answer that a client does not read within 15s is abandoned, so that a slow
or hostile client never holds the endpoint up.`,
	flags: func(fs *flag.FlagSet) func(*env, []string) error {
		runtime := fs.String("runtime", units.System.RuntimeBase(), "the `DIR` holding each group's runtime directory")
		return func(e *env, args []string) error {
			if len(args) > 0 {
				return usagef("takes no arguments")
			}
			ls, err := activation.Listeners()
			if err != nil {
				return fmt.Errorf("metrics-endpoint: the sockets systemd passes: %w", err)
			}
			var live []net.Listener
			for _, l := range ls {
				if l != nil {
					live = append(live, l)
				}
			}
			if len(live) == 0 {
				return usagef("runs as %s, on the socket systemd passes it (LISTEN_FDS): set metrics in the configuration and install it", units.MetricsService)
			}
			fmt.Fprintf(e.stderr, "metrics-endpoint: answering on %s with the metrics under %s\n", live[0].Addr(), *runtime)
			return serveMetricsEndpoint(e.ctx, live, *runtime, e.stderr)
		}
	},
}

// houseGatherer gathers every group's metrics under base at each scrape.
func houseGatherer(ctx context.Context, base string, log io.Writer) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		socks, err := metricsSockets(base, nil)
		if err != nil {
			return nil, nil // no group runs: an empty exposition
		}
		fams, errs := gatherGroups(ctx, socks)
		// A group that does not answer is left out, not the others: an
		// error here would fail the whole scrape (promhttp.HandlerOpts).
		for _, err := range errs {
			fmt.Fprintf(log, "metrics-endpoint: %v\n", err)
		}
		return fams, nil
	})
}

// serveMetricsEndpoint serves GET /metrics on every listener until ctx
// ends.
func serveMetricsEndpoint(ctx context.Context, ls []net.Listener, base string, log io.Writer) error {
	h := promhttp.HandlerFor(houseGatherer(ctx, base, log), promhttp.HandlerOpts{
		EnableOpenMetrics:   true,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "metrics are at /metrics", http.StatusNotFound)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 2 * time.Second, ReadTimeout: 5 * time.Second,
		WriteTimeout: 15 * time.Second, IdleTimeout: 30 * time.Second, MaxHeaderBytes: 8 << 10,
		ErrorLog: nil}
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() { errc <- srv.Serve(l) }()
	}
	select {
	case <-ctx.Done():
		srv.Close()
		return nil
	case err := <-errc:
		srv.Close()
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("metrics-endpoint: %w", err)
	}
}
