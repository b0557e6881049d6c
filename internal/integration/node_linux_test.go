package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/internal/testenv"
)

// nodeServer answers with its uid and how many CPUs os.cpus() sees, on the
// group's shared socket (descriptor 3, as systemd passes it).
const nodeServer = `const http = require('http'), os = require('os'); ` +
	`http.createServer((q, r) => r.end('node uid=' + process.getuid() + ' cpus=' + os.cpus().length)).listen({fd: 3});`

// TestIntegrationNodeWorker runs a Node worker group under the generated
// units with the default hardening: Node compiles JavaScript to machine
// code as it runs, which MemoryDenyWriteExecute= kills, and its os.cpus()
// reads /proc/cpuinfo, which ProcSubset=pid hides. The group must serve,
// as the unprivileged user, seeing the machine's CPUs.
func TestIntegrationNodeWorker(t *testing.T) {
	node := testenv.Program(t, "node")
	cfg := fmt.Sprintf(`title = "Node house"

[[worker]]
name   = "js"
exec   = [%q, "-e", %q]
amount = 2
notify = false
listen = ["127.0.0.1:9996"]
`, node, nodeServer)
	h := newHouse(t, cfg)
	h.systemctl("start", "powerhouse.target")
	if got := h.show("powerhouse-js@1.service", "MemoryDenyWriteExecute"); got != "no" {
		t.Errorf("MemoryDenyWriteExecute=%s for a node worker, want no", got)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var body string
	waitFor(t, 20*time.Second, "the node workers to answer", func() bool {
		resp, err := client.Get("http://127.0.0.1:9996/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return true
	})
	if !strings.HasPrefix(body, "node uid=") || strings.HasPrefix(body, "node uid=0 ") || strings.Contains(body, "cpus=0") {
		t.Errorf("node worker answered %q: want an unprivileged uid and the machine's CPUs", body)
	}
	for _, u := range []string{"powerhouse-js@1.service", "powerhouse-js@2.service"} {
		if n := h.show(u, "NRestarts"); n != "0" {
			t.Errorf("%s restarted %s times:\n%s", u, n, h.journal())
		}
	}
}
