package activation

import (
	"errors"
	"net"
	"sync"
)

// multiListener merges several listeners into one: a group listening on
// several addresses ("0.0.0.0:9999" and "[::]:9999") serves them all with
// one http.Server.
//
// One goroutine per listener accepts and hands the result over an
// unbuffered channel, so at most one connection per listener waits for the
// next Accept; Close closes every listener and closes any connection that
// was accepted but not yet taken.
type multiListener struct {
	ls      []net.Listener
	results chan acceptResult
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

type acceptResult struct {
	c   net.Conn
	err error
}

func newMultiListener(ls []net.Listener) *multiListener {
	m := &multiListener{ls: ls, results: make(chan acceptResult), done: make(chan struct{})}
	m.wg.Add(len(ls))
	for _, l := range ls {
		go m.run(l)
	}
	return m
}

func (m *multiListener) run(l net.Listener) {
	defer m.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
		select {
		case m.results <- acceptResult{c, err}:
			// Errors other than closing (EMFILE, ...) are passed on like a
			// single listener would, and accepting goes on; http.Server
			// backs off on them.
		case <-m.done:
			if c != nil {
				c.Close()
			}
			return
		}
	}
}

// Accept returns the next connection from any of the listeners.
func (m *multiListener) Accept() (net.Conn, error) {
	select {
	case r := <-m.results:
		return r.c, r.err
	case <-m.done:
		return nil, &net.OpError{Op: "accept", Net: m.Addr().Network(), Addr: m.Addr(), Err: net.ErrClosed}
	}
}

// Close closes every listener and waits for their goroutines.
func (m *multiListener) Close() error {
	err := error(&net.OpError{Op: "close", Net: m.Addr().Network(), Addr: m.Addr(), Err: net.ErrClosed})
	m.once.Do(func() {
		close(m.done)
		var errs []error
		for _, l := range m.ls {
			errs = append(errs, l.Close())
		}
		m.wg.Wait()
		err = errors.Join(errs...)
	})
	return err
}

// Addr returns the first listener's address.
func (m *multiListener) Addr() net.Addr { return m.ls[0].Addr() }

// Malformed sums the counts of the hand-off listeners among ls.
func (m *multiListener) Malformed() (count uint64, last error) {
	for _, l := range m.ls {
		if h, ok := l.(*HandoffListener); ok {
			n, e := h.Malformed()
			count += n
			if e != nil {
				last = e
			}
		}
	}
	return count, last
}

// Rejected sums the rejection counts of the hand-off listeners among ls.
func (m *multiListener) Rejected() (count uint64, last error) {
	for _, l := range m.ls {
		if h, ok := l.(*HandoffListener); ok {
			n, e := h.Rejected()
			count += n
			if e != nil {
				last = e
			}
		}
	}
	return count, last
}
