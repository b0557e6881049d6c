package cli

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/powerhouse/powerhouse/units"
)

// groupMetrics serves, on group's metrics socket under root, a registry
// shaped like a supervisor's (client_golang, every series labelled
// group=): a stand-in for the supervisor, whose own endpoint the
// supervisor package and TestIntegrationMetrics test. handed is the
// handed-off counter, which the test moves.
func groupMetrics(t *testing.T, root, group string, instances int) prometheus.Counter {
	t.Helper()
	reg := prometheus.NewRegistry()
	r := prometheus.WrapRegistererWith(prometheus.Labels{"group": group}, reg)
	handed := prometheus.NewCounter(prometheus.CounterOpts{Name: "powerhouse_handed_off_total", Help: "Connections handed to a worker instance."})
	wanted := prometheus.NewGauge(prometheus.GaugeOpts{Name: "powerhouse_instances_wanted", Help: "Instances the group should run (amount)."})
	up := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "powerhouse_instance_up", Help: "1 when the instance's serving side runs (active or reloading)."}, []string{"instance", "unit"})
	per := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "powerhouse_instance_handed_off_total", Help: "Connections handed to this instance."}, []string{"instance"})
	r.MustRegister(handed, wanted, up, per)
	wanted.Set(float64(instances))
	g := units.Group{Name: group, Root: root}
	for n := 1; n <= instances; n++ {
		up.WithLabelValues(string(rune('0'+n)), g.Instance(n)).Set(1)
		per.WithLabelValues(string(rune('0' + n))).Add(0)
	}
	if err := os.MkdirAll(g.RuntimeDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", g.MetricsPath())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return handed
}

func metricsRoot(t *testing.T) string {
	t.Helper()
	// A short path: the sockets' must fit in sun_path.
	dir, err := os.MkdirTemp("", "mx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestMetricsVerb: powerhouse metrics merges every running group's
// exposition into one that Prometheus' parser reads, each series with its
// group; a group named prints only its own; a group that does not answer
// is named and the exit status is 1.
func TestMetricsVerb(t *testing.T) {
	root := metricsRoot(t)
	groupMetrics(t, root, "web", 2).Add(7)
	groupMetrics(t, root, "api", 1).Add(3)

	code, out, errOut := runIn(t, root, "metrics")
	if code != 0 {
		t.Fatalf("metrics: exit %d: %s", code, errOut)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(out))
	if err != nil {
		t.Fatalf("the merged exposition does not parse: %v\n%s", err, out)
	}
	got := map[string]float64{}
	for _, m := range fams["powerhouse_handed_off_total"].GetMetric() {
		got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
	}
	if got["web"] != 7 || got["api"] != 3 || len(got) != 2 {
		t.Errorf("handed off by group %v, want web 7, api 3", got)
	}

	code, out, _ = runIn(t, root, "metrics", "api")
	if code != 0 || strings.Contains(out, `group="web"`) || !strings.Contains(out, `powerhouse_handed_off_total{group="api"} 3`) {
		t.Errorf("metrics api: exit %d\n%s", code, out)
	}

	code, _, errOut = runIn(t, root, "metrics", "gone")
	if code != 1 || !strings.Contains(errOut, "group gone") {
		t.Errorf("metrics gone: exit %d: %s", code, errOut)
	}
	if code, _, errOut = runIn(t, root, "metrics", "../etc"); code != 2 {
		t.Errorf("metrics ../etc: exit %d: %s", code, errOut)
	}
}

// TestMetricsEndpoint: the house-level endpoint answers GET /metrics with
// the merge while clients that send nothing, or send a request and never
// read, hold connections: they do not hold up a scraper.
func TestMetricsEndpoint(t *testing.T) {
	root := metricsRoot(t)
	groupMetrics(t, root, "web", 2).Add(5)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveMetricsEndpoint(ctx, []net.Listener{l}, root, io.Discard) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	// Slow and hostile clients: connected, silent; and a request whose
	// answer is never read.
	for i := 0; i < 8; i++ {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i%2 == 1 {
			io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
		}
	}
	c := &http.Client{Timeout: 3 * time.Second}
	t0 := time.Now()
	var resp *http.Response
	var b []byte
	for {
		resp, err = c.Get("http://" + l.Addr().String() + "/metrics")
		if err != nil {
			t.Fatalf("scrape beside slow clients: %v", err)
		}
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		// The requests whose answers are never read take in-flight
		// slots until their handlers return; a loaded machine may still
		// run them: a scraper's 503 is tried again, within the bound.
		if resp.StatusCode != http.StatusServiceUnavailable || time.Since(t0) > 2*time.Second {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if resp.StatusCode != 200 || !strings.Contains(string(b), `powerhouse_handed_off_total{group="web"} 5`) {
		t.Errorf("scrape: %s\n%s", resp.Status, b)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("scrape took %v beside slow clients", d)
	}
	resp, err = c.Get("http://" + l.Addr().String() + "/other")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("GET /other: %s", resp.Status)
		}
	}
}

// TestTopOnce: top --once, not on a terminal, prints one block: each
// group's headline and a line per instance with its rate over the
// interval (the counter moved between the two looks) and its unit.
func TestTopOnce(t *testing.T) {
	root := metricsRoot(t)
	handed := groupMetrics(t, root, "web", 2)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// Connections keep coming while top looks twice.
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				handed.Add(1)
			}
		}
	}()
	code, out, errOut := runIn(t, root, "top", "--once", "--interval", "200ms")
	if code != 0 {
		t.Fatalf("top --once: exit %d: %s", code, errOut)
	}
	for _, re := range []string{
		`(?m)^powerhouse top · \d\d:\d\d:\d\d · every 200ms · hand-off queues hold \d+ \(net\.unix\.max_dgram_qlen\)$`,
		`(?m)^group web: 2/2 up · [1-9][0-9.]*k? conn/s · 0 misses · 0 dropped$`,
		`(?m)^  web@1 +up, out of dispatch +0 +0 +0 +0 +- +0 +- +powerhouse-web@1\.service$`,
		`(?m)^  web@2 +up, out of dispatch +0 +0 +0 +0 +- +0 +- +powerhouse-web@2\.service$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("no line matching %s in\n%s", re, out)
		}
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("escape sequences when not on a terminal: %q", out)
	}
	if code, _, _ := runIn(t, root, "top", "--interval", "1ms"); code != 2 {
		t.Errorf("top --interval 1ms: exit %d, want 2", code)
	}
}
