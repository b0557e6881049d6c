package sdbox

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Exclusive makes the calling test the only one, across test processes on
// this machine, that holds name until it ends: boxes share the host's
// network namespace, so tests of different packages (which `go test ./...`
// runs at once) that bind the same ports take the same name. It blocks
// until the holder's test ends. Within one process it nests: a test that
// boots two boxes takes it twice.
func Exclusive(t testing.TB, name string) {
	t.Helper()
	locks.Lock()
	defer locks.Unlock()
	if h := locks.held[name]; h != nil {
		h.n++
		t.Cleanup(func() { locks.release(name) })
		return
	}
	p := filepath.Join(os.TempDir(), "sdbox-"+name+".lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatalf("sdbox: lock %s: %v", p, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("sdbox: lock %s: %v", p, err)
	}
	if locks.held == nil {
		locks.held = map[string]*heldLock{}
	}
	locks.held[name] = &heldLock{f: f, n: 1}
	t.Cleanup(func() { locks.release(name) })
}

type heldLock struct {
	f *os.File
	n int
}

// locks are the cross-process locks this process holds; a test process is
// the only user of this package, and the state lives as long as it does.
var locks lockTable

type lockTable struct {
	sync.Mutex
	held map[string]*heldLock
}

func (l *lockTable) release(name string) {
	l.Lock()
	defer l.Unlock()
	h := l.held[name]
	if h == nil {
		return
	}
	if h.n--; h.n == 0 {
		h.f.Close() // releases the flock
		delete(l.held, name)
	}
}
