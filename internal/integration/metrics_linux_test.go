package integration

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/powerhouse/powerhouse/internal/sdbox"
)

const (
	metricsWebURL = "http://127.0.0.1:19440/"
	metricsTCPURL = "http://127.0.0.1:19441/metrics"
)

// parseExposition parses the Prometheus text format.
func parseExposition(t *testing.T, r io.Reader) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		t.Fatalf("exposition: %v", err)
	}
	return fams
}

// seriesValue returns the value of the first series of family name
// whose labels include want.
func seriesValue(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
series:
	for _, m := range fams[name].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue series
			}
		}
		return m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue(), true
	}
	return 0, false
}

// TestIntegrationMetrics: a sticky group installed with the metrics key.
// N connections of a load generator (one request each, counted by the
// generator) move powerhouse_handed_off_total, as `powerhouse metrics web`
// prints it and expfmt parses it, by exactly the generator's count
// (scrapes during the load see it grow, within those bounds); the
// group's metrics socket is 0660 root:powerhouse and a user outside the
// group cannot read it; the TCP endpoint (powerhouse-metrics.socket)
// serves the same merge, OpenMetrics when asked; `powerhouse top --once`
// shows each instance with its unit; STATUS= is "2/2 up · R conn/s · N
// misses"; status prints the same headline.
func TestIntegrationMetrics(t *testing.T) {
	h := bootHouse(t, sdbox.Options{})
	src := h.box.Path("/run/src/metrics.toml")
	os.MkdirAll(filepath.Dir(src), 0o755)
	cfg := `title   = "metrics"
metrics = "127.0.0.1:19441"

[[worker]]
name   = "web"
exec   = "` + filepath.Join(boxBin, "hello") + `"
amount = 2
sticky = true
listen = ["127.0.0.1:19440"]
`
	if err := os.WriteFile(src, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.powerhouse("install", "--now", "/run/src/metrics.toml"); err != nil {
		t.Fatalf("install --now: %v\n%s\n%s", err, out, h.journal())
	}
	waitFor(t, 20*time.Second, "web to answer", func() bool {
		_, err := get(client("127.0.0.2"), metricsWebURL)
		return err == nil
	})
	handed := func() float64 {
		t.Helper()
		out, err := h.powerhouse("metrics", "web")
		if err != nil {
			t.Fatalf("powerhouse metrics web: %v\n%s", err, out)
		}
		fams := parseExposition(t, strings.NewReader(out))
		v, ok := seriesValue(fams, "powerhouse_handed_off_total", map[string]string{"group": "web"})
		if !ok {
			t.Fatalf("no powerhouse_handed_off_total{group=web} in\n%s", out)
		}
		return v
	}
	before := handed()

	// The load generator: N connections from several sources, each one
	// request, counted.
	// Scrapes run during the load: each sees the counter between where
	// it started and where the load takes it, never going back.
	const n = 300
	var ok int
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		for i := 0; i < n; i++ {
			if _, err := get(client(clientAddr(i%20)), metricsWebURL); err == nil {
				ok++
			}
		}
	}()
	last, scrapes := before, 0
	for running := true; running; scrapes++ {
		select {
		case <-loadDone:
			running = false
		default:
		}
		v := handed()
		if v < last || v > before+n {
			t.Errorf("during the load: handed off %v after %v (started at %v, %d connections)", v, last, before, n)
		}
		last = v
	}
	t.Logf("%d scrapes during the load", scrapes)
	if ok != n {
		t.Errorf("the load generator got %d answers of %d", ok, n)
	}
	if got := handed() - before; got != float64(ok) {
		t.Errorf("powerhouse_handed_off_total grew by %v; the load generator made %d connections", got, ok)
	}

	// The socket: 0660 root:powerhouse, closed to other users.
	sock := "/run/powerhouse/web/metrics.sock"
	if out, err := h.run("stat", "-c", "%a %U:%G %F", sock); err != nil || strings.TrimSpace(out) != "660 root:powerhouse socket" {
		t.Errorf("stat %s: %v: %q, want 660 root:powerhouse socket", sock, err, out)
	}
	if out, err := h.run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", filepath.Join(boxBin, "powerhouse"), "metrics", "web"); err == nil || !strings.Contains(out, "permission denied") {
		t.Errorf("a user outside the group read the metrics: %v\n%s", err, out)
	}
	if out, err := h.run("setpriv", "--reuid=65534", "--regid=65534", "--groups=powerhouse", filepath.Join(boxBin, "powerhouse"), "metrics", "web"); err != nil || !strings.Contains(out, "powerhouse_handed_off_total") {
		t.Errorf("a member of the group powerhouse could not read the metrics: %v\n%s", err, out)
	}

	// The TCP endpoint: the merge, every series labelled; OpenMetrics
	// when asked.
	c := &http.Client{Timeout: 10 * time.Second}
	var fams map[string]*dto.MetricFamily
	waitFor(t, 20*time.Second, "the TCP metrics endpoint", func() bool {
		resp, err := c.Get(metricsTCPURL)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return false
		}
		fams = parseExposition(t, resp.Body)
		return true
	})
	if v, _ := seriesValue(fams, "powerhouse_handed_off_total", map[string]string{"group": "web"}); v < before+n {
		t.Errorf("TCP endpoint: powerhouse_handed_off_total{group=web} = %v, want at least %v", v, before+n)
	}
	if v, ok := seriesValue(fams, "powerhouse_instance_up", map[string]string{"group": "web", "instance": "2", "unit": "powerhouse-web@2.service"}); !ok || v != 1 {
		t.Errorf("TCP endpoint: instance 2 up = %v (present %v)", v, ok)
	}
	if _, ok := seriesValue(fams, "process_cpu_seconds_total", map[string]string{"group": "web"}); !ok {
		t.Error("TCP endpoint: no process_cpu_seconds_total{group=web}")
	}
	// The near-limit figures, read under the supervisor's sandbox: the
	// hand-off queues (empty: the workers took every connection), the
	// descriptors in flight and the listener's accept queue and bound.
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"powerhouse_instance_handoff_queue_length", map[string]string{"group": "web", "instance": "1"}, 0},
		{"powerhouse_instance_handoff_queue_length", map[string]string{"group": "web", "instance": "2"}, 0},
		{"powerhouse_handoff_fds_in_flight", map[string]string{"group": "web"}, 0},
		{"powerhouse_handoff_fds_in_flight_limit", map[string]string{"group": "web"}, 1},
		{"powerhouse_listener_backlog", map[string]string{"group": "web", "listener": "127.0.0.1:19440"}, 0},
		{"powerhouse_listener_backlog_limit", map[string]string{"group": "web", "listener": "127.0.0.1:19440"}, 1},
	} {
		if v, ok := seriesValue(fams, c.name, c.labels); !ok || v < c.min {
			t.Errorf("TCP endpoint: %s%v = %v (present %v), want at least %v", c.name, c.labels, v, ok, c.min)
		}
	}
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, metricsTCPURL, nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	if resp, err := c.Do(req); err != nil {
		t.Errorf("OpenMetrics: %v", err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/openmetrics-text") || !strings.HasSuffix(strings.TrimSpace(string(b)), "# EOF") {
			t.Errorf("OpenMetrics: %s, %q ... ", resp.Header.Get("Content-Type"), string(b[max(0, len(b)-40):]))
		}
	}

	// top --once: every instance, with its unit and PID.
	out, err := h.powerhouse("top", "--once", "--interval", "200ms")
	if err != nil {
		t.Fatalf("top --once: %v\n%s", err, out)
	}
	t.Logf("powerhouse top --once:\n%s", out)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^group web: 2/2 up · \S+ conn/s · \d+ misses · 0 dropped$`),
		regexp.MustCompile(`(?m)^  web@1 +up +\S+ +\d+ +\d+ +\d+ +- +\d+ +\d+ +powerhouse-web@1\.service$`),
		regexp.MustCompile(`(?m)^  web@2 +up +\S+ +\d+ +\d+ +\d+ +- +\d+ +\d+ +powerhouse-web@2\.service$`),
	} {
		if !want.MatchString(out) {
			t.Errorf("top --once: no line matching %s in\n%s", want, out)
		}
	}

	// STATUS=, and the headline of status.
	re := regexp.MustCompile(`^2/2 up · [0-9.]+[kM]? conn/s · \d+ misses$`)
	if st := h.show("powerhouse@web.service", "StatusText"); !re.MatchString(st) {
		t.Errorf("STATUS=%q, want %s", st, re)
	}
	if out, err := h.powerhouse("status", "web"); err != nil || !regexp.MustCompile(`(?m)^  2/2 up · `).MatchString(out) {
		t.Errorf("status: %v\n%s", err, out)
	}
}
