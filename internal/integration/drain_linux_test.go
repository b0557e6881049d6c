package integration

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/units"
)

const (
	drainWebURL    = "http://127.0.0.1:19420/"
	drainAPIURL    = "http://127.0.0.1:19421/"
	drainHealthURL = "http://127.0.0.1:19422/healthz"
	movedHealthURL = "http://127.0.0.1:19423/healthz"
)

// drainConfig is a house behind a load balancer: a sticky hand-off group,
// a shared-socket group and the health endpoint the balancer checks.
func drainConfig(health string) string {
	hello := filepath.Join(boxBin, "hello")
	return `title  = "drain"
health = "` + health + `"

[[worker]]
name   = "web"
exec   = "` + hello + `"
amount = 2
sticky = true
listen = ["127.0.0.1:19420"]

[[worker]]
name   = "api"
exec   = "` + hello + `"
amount = 2
listen = ["127.0.0.1:19421"]
`
}

// healthCheck is what a load balancer's HTTP check sees: the status code
// and body, or an error.
func healthCheck(url string) (int, string, error) {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// trickle sends one request on a new connection to url every 50ms until
// stopped, and counts the answers.
type trickle struct {
	stop   chan struct{}
	wg     sync.WaitGroup
	ok     atomic.Int64
	failed atomic.Int64
	last   atomic.Int64 // UnixNano of the last request sent
}

func startTrickle(url string) *trickle {
	tr := &trickle{stop: make(chan struct{})}
	tr.wg.Add(1)
	go func() {
		defer tr.wg.Done()
		c := client("127.0.0.5")
		for {
			select {
			case <-tr.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			tr.last.Store(time.Now().UnixNano())
			if _, err := get(c, url); err != nil {
				tr.failed.Add(1)
			} else {
				tr.ok.Add(1)
			}
		}
	}()
	return tr
}

func (tr *trickle) finish() { close(tr.stop); tr.wg.Wait() }

// TestIntegrationDrain: a house installed with a health endpoint
// (install --now) answers 200 there; powerhouse drain
// makes it answer 503 while both groups keep answering new connections,
// and says so when run twice; status shows the drain; drain --undo
// brings 200 back; a reinstall that moves the endpoint stops the old
// address and serves the new one. drain --wait does not stop the house while new
// connections arrive, whichever group they reach (the shared group's are
// seen only in the kernel's socket table): it gives up at --timeout with
// exit status 3 and leaves the house serving. With no traffic, drain
// --wait --quiet 1s stops powerhouse.target and reports it.
func TestIntegrationDrain(t *testing.T) {
	h := bootHouse(t, sdbox.Options{})
	src := h.box.Path("/run/src/drain.toml")
	os.MkdirAll(filepath.Dir(src), 0o755)
	if err := os.WriteFile(src, []byte(drainConfig("127.0.0.1:19422")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.powerhouse("install", "--now", "/run/src/drain.toml"); err != nil {
		t.Fatalf("install --now: %v\n%s\n%s", err, out, h.journal())
	}
	healthURL := drainHealthURL
	status := func() (int, string) {
		var code int
		var body string
		var err error
		waitFor(t, 20*time.Second, "an answer from the health endpoint", func() bool {
			code, body, err = healthCheck(healthURL)
			return err == nil
		})
		return code, body
	}
	if code, body := status(); code != 200 || body != "ok\n" {
		t.Fatalf("health before the drain: %d %q", code, body)
	}
	for _, url := range []string{drainWebURL, drainAPIURL} {
		waitFor(t, 20*time.Second, "an answer from "+url, func() bool { _, err := get(client("127.0.0.2"), url); return err == nil })
	}

	out, err := h.powerhouse("drain")
	if err != nil || !strings.Contains(out, "drain: draining since") || !strings.Contains(out, "127.0.0.1:19422") {
		t.Fatalf("drain: %v\n%s", err, out)
	}
	if code, body := status(); code != 503 || body != "draining\n" {
		t.Errorf("health while draining: %d %q", code, body)
	}
	// New connections are still served: the balancer moves them.
	for i := 0; i < 10; i++ {
		for _, url := range []string{drainWebURL, drainAPIURL} {
			if _, err := get(client(clientAddr(i)), url); err != nil {
				t.Errorf("while draining, a new connection to %s: %v", url, err)
			}
		}
	}
	if out, err := h.powerhouse("drain"); err != nil || !strings.Contains(out, "already draining since") {
		t.Errorf("drain twice: %v\n%s", err, out)
	}
	if out, _ := h.powerhouse("status"); !strings.Contains(out, "house: DRAINING since") || !strings.Contains(out, "answers 503 draining") {
		t.Errorf("status while draining:\n%s", out)
	}
	if dyn := h.show(units.HealthService, "DynamicUser"); dyn != "yes" {
		t.Errorf("%s: DynamicUser=%s", units.HealthService, dyn)
	}

	if out, err := h.powerhouse("drain", "--undo"); err != nil || !strings.Contains(out, "drain: ended") {
		t.Errorf("drain --undo: %v\n%s", err, out)
	}
	if code, body := status(); code != 200 || body != "ok\n" {
		t.Errorf("health after --undo: %d %q", code, body)
	}
	if out, _ := h.powerhouse("status"); strings.Contains(out, "DRAINING") {
		t.Errorf("status after --undo:\n%s", out)
	}

	// A reinstall that moves the endpoint: the old address goes, the new
	// one answers.
	if err := os.WriteFile(src, []byte(drainConfig("127.0.0.1:19423")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.powerhouse("install", "--now", "/run/src/drain.toml"); err != nil || !strings.Contains(out, "health endpoint 127.0.0.1:19422: moving it to 127.0.0.1:19423") {
		t.Fatalf("install moving the health endpoint: %v\n%s", err, out)
	}
	healthURL = movedHealthURL
	if code, body := status(); code != 200 || body != "ok\n" {
		t.Errorf("health at its new address: %d %q", code, body)
	}
	if _, _, err := healthCheck(drainHealthURL); err == nil {
		t.Errorf("the health endpoint's old address still answers")
	}

	// Traffic keeps arriving: --wait must not stop the house.
	for _, url := range []string{drainWebURL, drainAPIURL} {
		tr := startTrickle(url)
		waitFor(t, 10*time.Second, "the trickle to "+url, func() bool { return tr.ok.Load() > 2 })
		begin := time.Now()
		out, err := h.powerhouse("drain", "--wait", "--quiet", "1s", "--timeout", "3s")
		took := time.Since(begin)
		tr.finish()
		if code := exitCode(t, err); code != 3 || !strings.Contains(out, "new connections still arrive after 3s") || !strings.Contains(out, "still arriving") {
			t.Errorf("drain --wait with traffic to %s: exit %d after %v\n%s", url, code, took, out)
		}
		if st := h.show(units.Target, "ActiveState"); st != "active" {
			t.Errorf("after drain --wait timed out, %s is %s", units.Target, st)
		}
		if tr.failed.Load() > 0 {
			t.Errorf("%d of the trickle's requests to %s failed", tr.failed.Load(), url)
		}
		t.Logf("traffic to %s: drain --wait gave up after %v, %d requests served meanwhile", url, took.Round(time.Millisecond), tr.ok.Load())
	}

	// No traffic: the house stops after a second's quiet.
	begin := time.Now()
	out, err = h.powerhouse("drain", "--wait", "--quiet", "1s")
	if err != nil || !strings.Contains(out, "already draining") || !strings.Contains(out, "no new connection for 1s") || !strings.Contains(out, units.Target+" stopped") {
		t.Fatalf("drain --wait without traffic: %v after %v\n%s", err, time.Since(begin), out)
	}
	t.Logf("drain --wait --quiet 1s stopped the house in %v:\n%s", time.Since(begin).Round(time.Millisecond), out)
	for _, u := range []string{units.Target, units.Group{Name: "web"}.SupervisorUnit(), units.Group{Name: "api"}.Instance(1), units.HealthSocket} {
		if st := h.show(u, "ActiveState"); st != "inactive" {
			t.Errorf("after drain --wait, %s is %s", u, st)
		}
	}
	if out, _ := h.powerhouse("status"); !strings.Contains(out, "house: DRAINING since") {
		t.Errorf("status of the drained, stopped house:\n%s", out)
	}
}
