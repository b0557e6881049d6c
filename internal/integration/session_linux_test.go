package integration

import (
	"fmt"
	"github.com/powerhouse/powerhouse/units"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The session example's house (testdata/session.toml): the same worker as
// a sticky group and as a shared-socket group, four instances each.
const (
	stickySessionURL = "http://127.0.0.1:19501"
	sharedSessionURL = "http://127.0.0.1:19502"
	sessionClients   = 32
	sessionRounds    = 6
)

// sessionConfig returns testdata/session.toml with the worker's path made
// absolute for the binary under test (TestMain builds it).
func sessionConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(), "testdata", "session.toml"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), `"../bin/session"`, `"`+filepath.Join(boxBin, "session")+`"`)
}

// sessionTally counts what the clients of one group saw.
type sessionTally struct {
	mu      sync.Mutex
	created map[string]int    // instance -> sessions it created
	sends   map[string]int    // outcome -> count
	polls   map[string]int    // outcome -> count
	samples map[string]string // outcome -> one body (or error) that had it
}

// sessionOutcome names a reply: "ok"; "404" (no such session here); for a poll,
// "204" (timed out: its message went to another instance) or "200 other
// messages" (earlier rounds' messages that went astray, and not this one);
// else the status or the error.
func sessionOutcome(resp *http.Response, err error, want string) (string, string) {
	if err != nil {
		return "error", err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	body := string(b)
	switch {
	case err != nil:
		return "error", err.Error()
	case resp.StatusCode == http.StatusNotFound:
		return "404", body
	case resp.StatusCode == http.StatusNoContent && want == "":
		return "ok", body // a send
	case resp.StatusCode == http.StatusNoContent:
		return "204", body
	case resp.StatusCode == http.StatusOK && body == want:
		return "ok", body
	case resp.StatusCode == http.StatusOK && want != "":
		return "200 other messages", body
	default:
		return fmt.Sprintf("status %d", resp.StatusCode), body
	}
}

func (s *sessionTally) add(m map[string]int, what, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m[what]++
	if _, ok := s.samples[what]; !ok && what != "ok" {
		s.samples[what] = strings.TrimSpace(body)
	}
}

// sessionClient opens a session from src, then, sessionRounds times,
// long-polls it while it sends a message to it (each on its own
// connection: both from src), and records what happened.
func sessionClient(t *testing.T, tally *sessionTally, base, src string, keepAlive bool, pollTimeout string) {
	c := client(src)
	if keepAlive {
		c = keepAliveClient(src)
	}
	resp, err := c.Post(base+"/session", "", nil)
	if err != nil {
		t.Errorf("%s: POST /session: %v", src, err)
		return
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var id, inst string
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "session":
			id = v
		case "instance":
			inst = v
		}
	}
	if resp.StatusCode != http.StatusCreated || id == "" || inst == "" {
		t.Errorf("%s: POST /session: %d %q", src, resp.StatusCode, b)
		return
	}
	tally.mu.Lock()
	tally.created[inst]++
	tally.mu.Unlock()
	for round := 0; round < sessionRounds; round++ {
		msg := fmt.Sprintf("%s round %d", src, round)
		polled := make(chan struct{})
		go func() {
			defer close(polled)
			resp, err := c.Get(base + "/session/" + id + "/poll?timeout=" + pollTimeout)
			what, body := sessionOutcome(resp, err, msg+"\n")
			tally.add(tally.polls, what, body)
		}()
		resp, err := c.Post(base+"/session/"+id+"/send", "text/plain", strings.NewReader(msg))
		what, body := sessionOutcome(resp, err, "")
		tally.add(tally.sends, what, body)
		<-polled
	}
}

// runSessions runs sessionClients clients against base, half of them on new
// connections for every request and half with keep-alive.
func runSessions(t *testing.T, base, pollTimeout string) *sessionTally {
	tally := &sessionTally{created: map[string]int{}, sends: map[string]int{}, polls: map[string]int{}, samples: map[string]string{}}
	var wg sync.WaitGroup
	for i := 0; i < sessionClients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sessionClient(t, tally, base, fmt.Sprintf("127.0.0.%d", 10+i), i%2 == 1, pollTimeout)
		}()
	}
	wg.Wait()
	return tally
}

func sessionSorted(m map[string]int) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	for _, k := range ks {
		fmt.Fprintf(&b, "%s: %d; ", k, m[k])
	}
	return strings.TrimSuffix(b.String(), "; ")
}

func sessionSum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// TestIntegrationSession runs examples/session, which keeps its sessions
// in worker memory, with four instances in a real systemd: behind the
// sticky dispatcher every poll and send of every client finds its session;
// as a shared-socket group many of them reach an instance that never heard
// of it.
func TestIntegrationSession(t *testing.T) {
	h := newHouse(t, sessionConfig(t))
	h.systemctl("start", "powerhouse.target")
	for _, g := range []string{"sticky", "shared"} {
		for n := 1; n <= 4; n++ {
			u := units.Group{Name: g}.Instance(n)
			if got := h.show(u, "ActiveState"); got != "active" {
				t.Fatalf("%s: %s\n%s", u, got, h.journal())
			}
		}
	}
	total := sessionClients * sessionRounds

	t.Run("sticky: every poll finds its session", func(t *testing.T) {
		start := time.Now()
		tally := runSessions(t, stickySessionURL, "10s")
		t.Logf("%d clients × %d rounds in %v; sessions per instance: %s; sends: %s; polls: %s",
			sessionClients, sessionRounds, time.Since(start).Round(time.Millisecond),
			sessionSorted(tally.created), sessionSorted(tally.sends), sessionSorted(tally.polls))
		if tally.polls["ok"] != total || tally.sends["ok"] != total {
			t.Errorf("polls ok %d, sends ok %d, want %d each: polls %s; sends %s; for example %q",
				tally.polls["ok"], tally.sends["ok"], total, sessionSorted(tally.polls), sessionSorted(tally.sends), tally.samples)
		}
		if len(tally.created) != 4 {
			t.Errorf("sessions were created on %d instances, want all 4: %s", len(tally.created), sessionSorted(tally.created))
		}
	})

	t.Run("shared socket: polls miss their session", func(t *testing.T) {
		start := time.Now()
		// A poll whose message went to another instance waits its whole
		// timeout: keep it short.
		tally := runSessions(t, sharedSessionURL, "1s")
		t.Logf("%d clients × %d rounds in %v; sessions per instance: %s; sends: %s; polls: %s; a 404 said %q",
			sessionClients, sessionRounds, time.Since(start).Round(time.Millisecond),
			sessionSorted(tally.created), sessionSorted(tally.sends), sessionSorted(tally.polls), tally.samples["404"])
		if n := sessionSum(tally.polls) - tally.polls["error"]; n != total {
			t.Errorf("%d polls answered, want %d: %s; for example %q", n, total, sessionSorted(tally.polls), tally.samples)
		}
		if tally.polls["404"] == 0 {
			t.Errorf("no poll reached an instance without its session: %s", sessionSorted(tally.polls))
		}
		// With four instances a poll finds its session about one time in
		// four; demand at least a quarter of failures.
		if failed := total - tally.polls["ok"]; failed < total/4 {
			t.Errorf("only %d of %d polls failed without stickiness: %s", failed, total, sessionSorted(tally.polls))
		}
		if s := tally.samples["404"]; !strings.HasPrefix(s, "unknown session (this is shared@") {
			t.Errorf("a 404 said %q, want it to name the instance", s)
		}
	})
}
