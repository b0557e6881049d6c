package integration

import (
	"fmt"
	"github.com/powerhouse/powerhouse/units"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// redLoad asks hello for / from 64 sources at rate a second until stop is
// closed, and counts what failed.
type redLoad struct {
	ok, failed atomic.Int32
	mu         sync.Mutex
	errs       []string
	wg         sync.WaitGroup
	stop       chan struct{}
}

func startRedLoad(addr string, rate int) *redLoad {
	l := &redLoad{stop: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			l.wg.Add(1)
			go func(src string) {
				defer l.wg.Done()
				if _, err := redGet(src, addr, ""); err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					l.errs = append(l.errs, err.Error())
					l.mu.Unlock()
					return
				}
				l.ok.Add(1)
			}(fmt.Sprintf("127.0.3.%d", 1+i%64))
		}
	}()
	return l
}

func (l *redLoad) finish() {
	close(l.stop)
	l.wg.Wait()
}

// TestIntegrationRedScaleDownUnderLoad: `powerhouse scale web 2` while
// 400 connections a second arrive, then `scale web 4`: both finish, and
// no client is lost. Before the fix the scale-down never ended: the
// surplus instances stayed in dispatch while they stopped, connections
// queued in their hand-off sockets started them again, and `scale` gave
// up with "2 surplus still up".
func TestIntegrationRedScaleDownUnderLoad(t *testing.T) {
	h := newHouse(t, demoConfig(t))
	h.systemctl("start", "powerhouse.target")
	waitFor(t, 30*time.Second, "web@1..4 active", func() bool {
		for n := 1; n <= 4; n++ {
			if h.show(units.Group{Name: "web"}.Instance(n), "ActiveState") != "active" {
				return false
			}
		}
		return true
	})
	l := startRedLoad("127.0.0.1:9999", 400)
	waitFor(t, 10*time.Second, "the load", func() bool { return l.ok.Load() > 200 })
	if out, err := h.powerhouse("scale", "--config", boxConfig, "--timeout", "15s", "web", "2"); err != nil {
		l.finish()
		st, _ := h.run("systemctl", "list-units", "--all", "--no-pager", "powerhouse-web*")
		t.Fatalf("scale: %v\n%s\n%s", err, out, st)
	}
	n := l.ok.Load() + l.failed.Load()
	waitFor(t, 10*time.Second, "the load after the scale-down", func() bool { return l.ok.Load()+l.failed.Load() > n+200 })
	// And back: the surplus instances' sockets come back with them.
	if out, err := h.powerhouse("scale", "--config", boxConfig, "--timeout", "15s", "web", "4"); err != nil {
		l.finish()
		t.Fatalf("scale back to 4: %v\n%s", err, out)
	}
	waitFor(t, 10*time.Second, "web@3 and 4 back in dispatch", func() bool { return len(redDispatchState(t, h).InDispatch) == 4 })
	n = l.ok.Load() + l.failed.Load()
	waitFor(t, 10*time.Second, "the load after the scale-up", func() bool { return l.ok.Load()+l.failed.Load() > n+200 })
	l.finish()
	t.Logf("%d answered, %d failed; dispatch %+v", l.ok.Load(), l.failed.Load(), redDispatchState(t, h))
	if f := l.failed.Load(); f > 0 {
		t.Errorf("%d connections failed across the scale-down, e.g. %v", f, l.errs[:min(5, len(l.errs))])
	}
}
