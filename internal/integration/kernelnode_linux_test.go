package integration

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/testenv"
	"github.com/powerhouse/powerhouse/sticky"
	"github.com/powerhouse/powerhouse/supervisor"
	"github.com/powerhouse/powerhouse/units"
)

// nodePort is the port of the kernel-mode Node house: not one of the
// demo's, nor kernelPort, so the test takes no port lock.
const nodePort = 19395

// nodeGroup is the group of examples/nodeworker/kernel.toml.
const nodeGroup = "node"

// nodeWorkerJS is examples/nodeworker/server.js's copy in bin, where the
// workers' user reaches it (see pyWorker).
const nodeWorkerJS = "nodeworker.js"

// nodeSources is how many client addresses the test uses.
const nodeSources = 40

var nodeURL = fmt.Sprintf("http://127.0.0.1:%d/", nodePort)

// kernelNodeConfig returns examples/nodeworker/kernel.toml, the README's
// kernel-mode quick start (four stock Node.js servers, no PowerHouse
// code, no READY=1), with the script where the box has it and the
// test's port.
func kernelNodeConfig(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(repoRoot(), "examples", "nodeworker", "kernel.toml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	for _, r := range [][2]string{
		{`"/opt/nodeworker/server.js"`, fmt.Sprintf("%q", filepath.Join(boxBin, nodeWorkerJS))},
		{`"127.0.0.1:8080"`, fmt.Sprintf(`"127.0.0.1:%d"`, nodePort)},
	} {
		if !strings.Contains(cfg, r[0]) {
			t.Fatalf("examples/nodeworker/kernel.toml has no %s to replace", r[0])
		}
		cfg = strings.ReplaceAll(cfg, r[0], r[1])
	}
	return cfg
}

// nodeWorker returns which instance answered a GET from src: server.js
// answers "hello from worker <POWERHOUSE_INSTANCE>".
func nodeWorker(src string) (string, error) {
	body, err := getBody(client(src), nodeURL)
	if err != nil {
		return "", err
	}
	id, ok := strings.CutPrefix(body, "hello from worker ")
	if !ok || !strings.HasSuffix(id, "\n") {
		return "", fmt.Errorf("unexpected answer %q", body)
	}
	return strings.TrimSuffix(id, "\n"), nil
}

// nodeMap asks from every source address once: address -> instance.
func nodeMap(t *testing.T, h *house) map[string]string {
	t.Helper()
	m := map[string]string{}
	for i := 0; i < nodeSources; i++ {
		id, err := nodeWorker(clientAddr(i))
		if err != nil {
			t.Fatalf("client %s: %v\n%s", clientAddr(i), err, h.journal())
		}
		m[clientAddr(i)] = id
	}
	return m
}

// nodeLoad keeps new connections flowing, one request at a time from
// each source address, until finish, and records who answered each.
type nodeLoad struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	failures   []string
	seen       map[string]map[string]int // address -> instance -> requests
	wg         sync.WaitGroup
	stop       chan struct{}
}

func startNodeLoad(addrs []string) *nodeLoad {
	l := &nodeLoad{stop: make(chan struct{}), seen: map[string]map[string]int{}}
	for _, a := range addrs {
		l.seen[a] = map[string]int{}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				id, err := nodeWorker(a)
				l.mu.Lock()
				if err != nil {
					l.failed.Add(1)
					l.failures = append(l.failures, fmt.Sprintf("%s at %s: %v", a, time.Now().Format("15:04:05.000"), err))
				} else {
					l.ok.Add(1)
					l.seen[a][id]++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *nodeLoad) finish() { close(l.stop); l.wg.Wait() }

func (l *nodeLoad) waitServed(t *testing.T, n int64) {
	t.Helper()
	target := l.ok.Load() + n
	waitFor(t, 30*time.Second, fmt.Sprintf("%d more requests served", n), func() bool { return l.ok.Load() >= target })
}

// TestIntegrationKernelNodeWorker runs a stock Node.js HTTP server
// (examples/nodeworker: http.createServer().listen({fd: 3}), no
// PowerHouse code, no READY=1) as the four instances of a kernel-mode
// group, installed from the README's kernel.toml with the real CLI
// (powerhouse install --now) in a real systemd 252:
//
//   - sticky: each of 40 client addresses, asked 10 times on new
//     connections, always reaches the same instance, the one hand-off mode
//     would pick (rendezvous hashing over the 4, sticky.Set), and the
//     addresses are spread over at least 3 of the 4 (plain SO_REUSEPORT,
//     without the steering program, hashes each connection's ports too,
//     and sends every address to several instances);
//   - a rolling reload (systemctl reload powerhouse@node) while new
//     connections keep coming from all 40 addresses fails no request,
//     gives every instance a new process, and moves no address: each
//     instance keeps its buckets and its socket queues its connections
//     while its process restarts.
func TestIntegrationKernelNodeWorker(t *testing.T) {
	testenv.Program(t, "node") // kernel.toml runs "node", which systemd finds in its PATH
	js, err := os.ReadFile(filepath.Join(repoRoot(), "examples", "nodeworker", "server.js"))
	if err == nil {
		err = os.WriteFile(filepath.Join(bin, nodeWorkerJS), js, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
	h := bootKernelHouse(t)
	const src = "/run/src/kernel.toml"
	if err := os.MkdirAll(h.box.Path(filepath.Dir(src)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.box.Path(src), []byte(kernelNodeConfig(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.powerhouse("install", "--now", src); err != nil {
		t.Fatalf("powerhouse install --now: %v\n%s\n%s", err, out, h.journal())
	}
	g := units.Group{Name: nodeGroup}
	// install --now returns once the supervisor is ready; the instances
	// join the bucket table as systemd reports them up.
	var ks *supervisor.KernelStatus
	waitFor(t, 30*time.Second, "steering over the 4 Node instances", func() bool {
		out, err := h.powerhouse("status", "--json", nodeGroup)
		var gs []supervisor.GroupStatus
		if err != nil || json.Unmarshal([]byte(out), &gs) != nil || len(gs) != 1 {
			return false
		}
		ks = gs[0].Kernel
		return ks != nil && (ks.Steering != "sticky" || len(ks.InTable) == 4)
	})
	if ks.Steering != "sticky" {
		t.Fatalf("steering %q (%s), want sticky\n%s", ks.Steering, ks.Degraded, h.journal())
	}
	if got := h.show(g.Instance(1), "Type"); got != "exec" {
		t.Errorf("%s: Type=%s, want exec (notify = false)", g.Instance(1), got)
	}
	status, _ := h.powerhouse("status", nodeGroup)
	t.Logf("powerhouse status %s:\n%s", nodeGroup, status)

	var home map[string]string // address -> its instance
	t.Run("every address always reaches the same instance", func(t *testing.T) {
		home = nodeMap(t, h)
		var moved []string
		for round := 1; round < 10; round++ {
			for a, id := range nodeMap(t, h) {
				if id != home[a] {
					moved = append(moved, fmt.Sprintf("round %d: %s reached worker %s, before worker %s", round, a, id, home[a]))
				}
			}
		}
		if len(moved) > 0 {
			t.Errorf("%d of %d requests reached another worker than their address's first, e.g.:\n%s", len(moved), 9*nodeSources, strings.Join(moved[:min(len(moved), 10)], "\n"))
		}
		per := map[string]int{}
		set := sticky.NewSet(1, 2, 3, 4)
		var other []string
		for a, id := range home {
			per[id]++
			if n, _ := set.Pick(netip.MustParseAddr(a)); id != fmt.Sprint(n) {
				other = append(other, fmt.Sprintf("%s reached worker %s; hand-off mode picks instance %d", a, id, n))
			}
		}
		if len(other) > 0 {
			t.Errorf("%d of %d addresses reach another instance than hand-off mode's, e.g.:\n%s", len(other), nodeSources, strings.Join(other[:min(len(other), 10)], "\n"))
		}
		if len(per) < 3 {
			t.Errorf("the 40 addresses reach only workers %v: want at least 3 of the 4", per)
		}
		if len(moved) > 0 {
			t.Logf("status:\n%s\njournal:\n%s", status, h.journal())
		}
		t.Logf("addresses per worker: %v", per)
	})
	if home == nil {
		t.FailNow()
	}

	t.Run("a rolling reload under new connections fails none and moves no address", func(t *testing.T) {
		before := pidsOf(h, nodeGroup, 4)
		addrs := make([]string, 0, nodeSources)
		for i := 0; i < nodeSources; i++ {
			addrs = append(addrs, clientAddr(i))
		}
		load := startNodeLoad(addrs)
		load.waitServed(t, 200)
		began := time.Now()
		h.systemctl("reload", g.SupervisorUnit())
		took := time.Since(began)
		load.waitServed(t, 200)
		load.finish()

		if n := load.failed.Load(); n != 0 {
			t.Errorf("%d of %d requests failed during the reload:\n%s", n, n+load.ok.Load(), strings.Join(load.failures[:min(len(load.failures), 20)], "\n"))
		}
		for _, a := range addrs {
			ids := load.seen[a]
			if len(ids) != 1 || ids[home[a]] == 0 {
				t.Errorf("%s (worker %s) was served by %v during the reload", a, home[a], ids)
			}
		}
		after := pidsOf(h, nodeGroup, 4)
		for i, p := range before {
			if after[i] == p || after[i] == "0" {
				t.Errorf("instance %d: PID %s before, %s after the reload", i, p, after[i])
			}
		}
		if t.Failed() {
			j, _ := h.run("journalctl", "--no-pager", "-o", "short-precise", "-u", g.InstancePattern(), "-u", g.SupervisorUnit())
			t.Logf("journal:\n%s", j)
		}
		t.Logf("reload of 4 Node instances took %v (PIDs %v -> %v); %d requests on new connections from %d addresses, %d failed",
			took.Round(time.Millisecond), before, after, load.ok.Load(), len(addrs), load.failed.Load())
	})
}
