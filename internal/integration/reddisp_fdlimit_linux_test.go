package integration

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// redFDLimitConfig is a sticky group of amount instances whose workers may
// hold 64 descriptors.
func redFDLimitConfig(amount int) string {
	return fmt.Sprintf(`
[[worker]]
name   = "web"
exec   = %q
amount = %d
sticky = true
listen = ["127.0.0.1:9999"]
[worker.service]
limit_nofile = 64
`, filepath.Join(boxBin, "hello"), amount)
}

// TestIntegrationRedFDLimitDispatch: a worker short of descriptors stops
// reading hand-offs (activation's fdGate), and the dispatcher must keep
// the connections that come meanwhile until it reads again, not close
// them after QueueWait because no other instance had room.
func TestIntegrationRedFDLimitDispatch(t *testing.T) {
	const holds, requests = 60, 200
	h := newHouse(t, redFDLimitConfig(1))
	h.systemctl("start", "powerhouse.target")
	waitFor(t, 30*time.Second, "web@1 to answer", func() bool {
		_, err := redGet("127.0.0.2", "127.0.0.1:9999", "")
		return err == nil
	})
	// Connections the worker holds: a POST whose body never comes.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := range holds {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("127.0.4.%d", 1+i%200))}, Timeout: 3 * time.Second}
		c, err := d.Dial("tcp", "127.0.0.1:9999")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		if _, err := io.WriteString(c, "POST /message HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	var ok, failed atomic.Int32
	var mu sync.Mutex
	var errs []string
	var wg sync.WaitGroup
	for i := range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := redGet(fmt.Sprintf("127.0.5.%d", 1+i%200), "127.0.0.1:9999", ""); err != nil {
				failed.Add(1)
				mu.Lock()
				errs = append(errs, err.Error())
				mu.Unlock()
				return
			}
			ok.Add(1)
		}()
	}
	// Let the requests wait behind the paused worker past QueueWait (each
	// went round its order, instance 1 alone, at least once), then release
	// the held connections.
	waitFor(t, 10*time.Second, "the requests to wait past QueueWait", func() bool {
		ds := redDispatchState(t, h)
		return ds.QueueFull >= requests || ds.Dropped > 0
	})
	t.Logf("before release: ok %d failed %d dispatch %+v", ok.Load(), failed.Load(), redDispatchState(t, h))
	for _, c := range held {
		c.Close()
	}
	held = nil
	wg.Wait()
	t.Logf("ok %d failed %d dispatch %+v", ok.Load(), failed.Load(), redDispatchState(t, h))
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed, e.g. %v", n, requests, errs[:min(5, len(errs))])
	}
}
