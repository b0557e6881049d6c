package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/powerhouse/powerhouse/units"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/affinity"
	"github.com/powerhouse/powerhouse/internal/testenv"
)

// socketIOPort is the socket.io group's listener in the box.
const socketIOPort = 19460

// socketIOClients is how many socket.io clients come from one address.
const socketIOClients = 50

// clientsRun is what examples/socketio/clients.js prints.
type clientsRun struct {
	Clients []struct {
		SIDs      []string `json:"sids"`
		Instances []string `json:"instances"`
		PIDs      []int    `json:"pids"`
		Answers   int      `json:"answers"`
		Errors    []string `json:"errors"`
	} `json:"clients"`
	Requests int `json:"requests"`
}

// buildSocketIO builds examples/socketio, a module of its own (so that
// the PowerHouse module does not depend on socket.io), into the run's
// binary directory, which every box sees at boxBin. Its go.sum is
// committed and -mod=readonly refuses to change it: the build leaves the
// tree as it found it.
func buildSocketIO(t *testing.T) {
	t.Helper()
	out := filepath.Join(bin, "socketio")
	if _, err := os.Stat(out); err == nil {
		return // built by an earlier test of this run (-count)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatal("the go command is not in PATH: cannot build examples/socketio")
	}
	cmd := exec.Command(goTool, "build", "-mod=readonly", "-buildvcs=false", "-o", out, ".")
	cmd.Dir = filepath.Join(repoRoot(), "examples", "socketio")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build examples/socketio: %v\n%s", err, b)
	}
}

// TestIntegrationSocketIO: 50 real socket.io clients (npm socket.io-client,
// long-polling only, a new TCP connection for every request), all from
// 127.0.0.1 as from behind one NAT, against 4 instances of
// examples/socketio, whose engine.io session ids are minted by
// activation.NewSessionID.
//
//   - affinity = "query:sid", fallback = "spread": the handshakes (no sid
//     yet) spread over the instances, and every later request goes by the
//     tag of its sid to the instance that minted it: no client loses its
//     session ("Session ID unknown", or any other error), every client
//     sees one process throughout, and at least 3 of the 4 instances
//     serve. The dispatcher's counters agree: one fallback per handshake,
//     a tag-routed connection per request at least.
//   - affinity = "source" (the default), the control: the same clients
//     all land on one instance, the NAT problem key affinity solves.
func TestIntegrationSocketIO(t *testing.T) {
	node := testenv.Program(t, "node")
	nodePath := testenv.NodeModules(t, "socket.io-client")
	buildSocketIO(t)
	for _, tc := range []struct {
		name     string
		affinity string // the group's affinity lines
		check    func(t *testing.T, r clientsRun, per map[string]int, d sioStats)
	}{
		{name: "query-sid", affinity: "affinity = \"query:sid\"\nfallback = \"spread\"\n", check: checkSIDAffinity},
		{name: "source", check: func(t *testing.T, _ clientsRun, per map[string]int, _ sioStats) {
			if len(per) != 1 {
				t.Errorf("under source affinity %d clients from one address reached %d instances, want 1: %v", socketIOClients, len(per), per)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHouse(t, fmt.Sprintf(`title = "socket.io"
[[worker]]
name   = "sio"
exec   = %q
amount = 4
sticky = true
listen = ["127.0.0.1:%d"]
%s`, filepath.Join(boxBin, "socketio"), socketIOPort, tc.affinity))
			h.systemctl("start", "powerhouse.target")
			waitFor(t, 30*time.Second, "the 4 socket.io instances to be ready", func() bool {
				for n := 1; n <= 4; n++ {
					if h.show(units.Group{Name: "sio"}.Instance(n), "ActiveState") != "active" {
						return false
					}
				}
				return true
			})
			before := sioCounters(t, h)
			start := time.Now()
			r := runSocketIOClients(t, node, nodePath)
			t.Logf("%d clients, %d whoami answers in %v", len(r.Clients), r.Requests, time.Since(start).Round(time.Millisecond))
			per := map[string]int{}
			for i, c := range r.Clients {
				for _, e := range c.Errors {
					t.Errorf("client %d: %s", i, e)
				}
				if len(c.Instances) != 1 || len(c.PIDs) != 1 || len(c.SIDs) != 1 {
					t.Errorf("client %d saw instances %v, pids %v, sids %v: want one of each throughout", i, c.Instances, c.PIDs, c.SIDs)
				}
				// At 100 ms a question, over 3 s: a client that got
				// few answers was not served throughout.
				if c.Answers < 5 {
					t.Errorf("client %d got %d answers in 3 s, want at least 5", i, c.Answers)
				}
				for _, in := range c.Instances {
					per[in]++
				}
			}
			if len(r.Clients) != socketIOClients {
				t.Fatalf("the client script ran %d clients, want %d", len(r.Clients), socketIOClients)
			}
			after := sioCounters(t, h)
			d := sioStats{after.fallbacks - before.fallbacks, after.tagRouted - before.tagRouted, after.keyRouted - before.keyRouted}
			t.Logf("clients per instance, all from 127.0.0.1: %v; dispatcher: %d fallbacks, %d tag-routed, %d key-routed connections", per, d.fallbacks, d.tagRouted, d.keyRouted)
			tc.check(t, r, per, d)
		})
	}
}

// checkSIDAffinity is the query:sid run's own verdict: ≥ 3 instances used,
// each client's sid names the instance that answered it, and the
// dispatcher's counters (d, over the clients' run) agree: exactly one
// fallback per client (its handshake, the only request without a sid) and
// at least one tag-routed connection per answer (the POST that carried
// the question: a new connection per request, each routed afresh).
func checkSIDAffinity(t *testing.T, r clientsRun, per map[string]int, d sioStats) {
	t.Helper()
	if len(per) < 3 {
		t.Errorf("%d clients from one address reached %d instances, want at least 3: %v", socketIOClients, len(per), per)
	}
	for i, c := range r.Clients {
		if len(c.SIDs) != 1 || len(c.Instances) != 1 {
			continue // reported above
		}
		n, ok := affinity.InstanceOfID(c.SIDs[0])
		if want := "sio@" + strconv.Itoa(n); !ok || c.Instances[0] != want {
			t.Errorf("client %d: session id %s (instance %d, %v) answered by %s", i, c.SIDs[0], n, ok, c.Instances[0])
		}
	}
	if d.fallbacks != socketIOClients {
		t.Errorf("the dispatcher placed %d connections by the fallback, want %d: one handshake per client", d.fallbacks, socketIOClients)
	}
	if d.tagRouted < int64(r.Requests) {
		t.Errorf("the dispatcher placed %d connections by their session id's tag for %d answers: want a new connection per request", d.tagRouted, r.Requests)
	}
}

// sioStats are the dispatcher's key-affinity counters of group sio.
type sioStats struct{ fallbacks, tagRouted, keyRouted int64 }

// sioCounters scrapes them with `powerhouse metrics sio`.
func sioCounters(t *testing.T, h *house) sioStats {
	t.Helper()
	out, err := h.powerhouse("metrics", "sio")
	if err != nil {
		t.Fatalf("powerhouse metrics sio: %v\n%s", err, out)
	}
	fams := parseExposition(t, strings.NewReader(out))
	val := func(name string) int64 {
		v, ok := seriesValue(fams, name, map[string]string{"group": "sio"})
		if !ok {
			t.Fatalf("no %s{group=sio} in\n%s", name, out)
		}
		return int64(v)
	}
	return sioStats{
		fallbacks: val("powerhouse_affinity_fallbacks_total"),
		tagRouted: val("powerhouse_tag_routed_total"),
		keyRouted: val("powerhouse_key_routed_total"),
	}
}

// runSocketIOClients runs examples/socketio/clients.js on the host: 50
// clients from 127.0.0.1 for 3 seconds.
func runSocketIOClients(t *testing.T, node, nodePath string) clientsRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	script := filepath.Join(repoRoot(), "examples", "socketio", "clients.js")
	cmd := exec.CommandContext(ctx, node, script, fmt.Sprintf("http://127.0.0.1:%d", socketIOPort), strconv.Itoa(socketIOClients), "3")
	cmd.Env = append(os.Environ(), "NODE_PATH="+nodePath)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node clients.js: %v\n%s", err, stderr.String())
	}
	var r clientsRun
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("node clients.js printed %q: %v\n%s", out, err, stderr.String())
	}
	return r
}
