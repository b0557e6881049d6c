package integration

import (
	"context"
	"fmt"
	"github.com/powerhouse/powerhouse/internal/syncbuf"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/sdbox"
	"github.com/powerhouse/powerhouse/internal/testenv"
)

// Beyond one machine (docs/scaling.md): HAProxy hashes clients over two
// "hosts", each a box running its own house, and speaks PROXY protocol v2
// to each host's proxy_protocol listener.
const (
	lbFrontend = "127.0.0.1:19601"
	lbHostA    = "127.0.0.1:19602"
	lbHostB    = "127.0.0.1:19603"
	lbClients  = 48
	lbRounds   = 4
)

// lbHostConfig is one host's house: hello, sticky, behind the load balancer.
// The group is named after the host so that hello's instance=hosta@2 says
// which host answered (on real hosts the group would be the same).
func lbHostConfig(host, addr string) string {
	return fmt.Sprintf(`title = "PowerHouse on %[1]s"

[[worker]]
name   = %[1]q
exec   = %[2]q
amount = 3
sticky = true
listen = [{ address = %[3]q, proxy_protocol = true, proxy_from = ["127.0.0.1"], name = "lb" }]
`, host, filepath.Join(boxBin, "hello"), addr)
}

// startHAProxy runs haproxy with testdata/haproxy.cfg in the foreground on
// the host side, as a child of the test, until the test ends.
func startHAProxy(t *testing.T, path string) *syncbuf.Buffer {
	t.Helper()
	cfg := filepath.Join(repoRoot(), "testdata", "haproxy.cfg")
	env := append(os.Environ(), "PH_FRONTEND="+lbFrontend, "PH_HOST_A="+lbHostA, "PH_HOST_B="+lbHostB)
	if out, err := runEnv(env, path, "-c", "-f", cfg); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	out := new(syncbuf.Buffer)
	cmd := exec.Command(path, "-db", "-f", cfg)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	// Should the test die, the kernel kills haproxy too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill() // by PID: this process's own child, not yet reaped
		<-exited
	})
	waitFor(t, 10*time.Second, "haproxy to listen on "+lbFrontend, func() bool {
		select {
		case <-exited:
			t.Fatalf("haproxy exited: %s\n%s", cmd.ProcessState, out)
		default:
		}
		c, err := net.Dial("tcp", lbFrontend)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return out
}

// lbGet asks hello through the load balancer from src, on a new connection,
// and returns its reply and the client's own address on that connection.
func lbGet(src string) (reply, string, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	var local string
	c := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				conn, err := d.DialContext(ctx, network, addr)
				if err == nil {
					local = conn.LocalAddr().String()
				}
				return conn, err
			},
		},
	}
	r, err := get(c, "http://"+lbFrontend+"/")
	return r, local, err
}

func lbAddr(i int) string { return fmt.Sprintf("127.0.0.%d", 100+i) }

// lbMap asks once from every client address and returns addr -> instance
// (hosta@2), checking that the worker saw the client's own address and
// port, not HAProxy's.
func lbMap(t *testing.T) (map[string]string, error) {
	t.Helper()
	m := map[string]string{}
	for i := 0; i < lbClients; i++ {
		r, local, err := lbGet(lbAddr(i))
		if err != nil {
			return m, fmt.Errorf("client %s: %w", lbAddr(i), err)
		}
		if r.Remote != local {
			t.Errorf("client %s: worker %s saw remote=%s", local, r.Instance, r.Remote)
		}
		m[lbAddr(i)] = r.Instance
	}
	return m, nil
}

// lbPerHost counts the clients of each host and of each instance.
func lbPerHost(m map[string]string) (hosts, instances map[string]int) {
	hosts, instances = map[string]int{}, map[string]int{}
	for _, inst := range m {
		host, _, _ := strings.Cut(inst, "@")
		hosts[host]++
		instances[inst]++
	}
	return hosts, instances
}

// TestIntegrationHAProxy puts a real HAProxy (balance source, hash-type
// consistent, send-proxy-v2) in front of two hosts, each a box running its
// own house with a sticky hello group on a proxy_protocol listener, and
// checks the chain end to end: workers see the original clients, every
// client always reaches the same host and the same instance, and a host
// going away moves only its own clients.
func TestIntegrationHAProxy(t *testing.T) {
	sdbox.Require(t) // first, so that a run without root says so
	haproxy := testenv.Program(t, "haproxy")
	a := newHouse(t, lbHostConfig("hosta", lbHostA))
	a.systemctl("start", "powerhouse.target")
	b := newHouse(t, lbHostConfig("hostb", lbHostB))
	b.systemctl("start", "powerhouse.target")
	hout := startHAProxy(t, haproxy)
	defer func() {
		if t.Failed() {
			t.Logf("haproxy:\n%s", hout)
		}
	}()

	var first map[string]string
	t.Run("every client always reaches the same host and instance", func(t *testing.T) {
		var err error
		if first, err = lbMap(t); err != nil {
			t.Fatal(err)
		}
		for round := 1; round < lbRounds; round++ {
			again, err := lbMap(t)
			if err != nil {
				t.Fatal(err)
			}
			for addr, inst := range first {
				if again[addr] != inst {
					t.Errorf("%s reached %s, then %s", addr, inst, again[addr])
				}
			}
		}
		hosts, instances := lbPerHost(first)
		t.Logf("%d clients × %d rounds; clients per host: %v; per instance: %v", lbClients, lbRounds, hosts, instances)
		// Were the dispatchers hashing HAProxy's own address, every
		// client of a host would land on one instance.
		for _, host := range []string{"hosta", "hostb"} {
			n := 0
			for inst := range instances {
				if strings.HasPrefix(inst, host+"@") {
					n++
				}
			}
			if n < 2 {
				t.Errorf("%s: its clients reached %d instance(s), want them spread over its 3: %v", host, n, instances)
			}
		}
	})
	if first == nil {
		t.FailNow()
	}

	t.Run("a host going away moves only its clients", func(t *testing.T) {
		if err := b.box.Close(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var after map[string]string
		var failed []error
		waitFor(t, 10*time.Second, "hostb's clients to move to hosta", func() bool {
			var err error
			if after, err = lbMap(t); err != nil {
				failed = append(failed, err)
				return false
			}
			hosts, _ := lbPerHost(after)
			return hosts["hostb"] == 0
		})
		moved := time.Since(start)
		// hostb's port now refuses connections, and HAProxy retries a
		// refused connection on the next host of the ring at once (option
		// redispatch 1), even before its health check has marked hostb
		// down: no client sees an error. (A host that vanishes without a
		// word costs its clients up to timeout connect instead.)
		if len(failed) > 0 {
			t.Errorf("%d rounds had a failed request while hostb went away: %v", len(failed), failed)
		}
		// And they stay there.
		again, err := lbMap(t)
		if err != nil {
			t.Fatalf("after the move: %v", err)
		}
		for addr, inst := range first {
			if strings.HasPrefix(inst, "hosta@") && after[addr] != inst {
				t.Errorf("%s moved from %s to %s though its host stayed", addr, inst, after[addr])
			}
			if again[addr] != after[addr] {
				t.Errorf("%s reached %s, then %s", addr, after[addr], again[addr])
			}
		}
		_, instances := lbPerHost(after)
		t.Logf("hostb's clients moved within %v, none failed; per instance now: %v",
			moved.Round(time.Millisecond), instances)
	})

	t.Run("the host back takes back exactly its clients", func(t *testing.T) {
		// A new machine with the same configuration: rendezvous scores are
		// the same on every host and run, so each client finds its old
		// instance again.
		b2 := newHouse(t, lbHostConfig("hostb", lbHostB))
		b2.systemctl("start", "powerhouse.target")
		waitFor(t, 10*time.Second, "hostb's clients to come back", func() bool {
			m, err := lbMap(t)
			hosts, _ := lbPerHost(m)
			return err == nil && hosts["hostb"] > 0
		})
		// HAProxy marks a server up for all clients at once; one more
		// round must find every client where it started.
		now, err := lbMap(t)
		if err != nil {
			t.Fatal(err)
		}
		for addr, inst := range first {
			if now[addr] != inst {
				t.Errorf("%s: %s at first, %s once hostb is back", addr, inst, now[addr])
			}
		}
	})
}
