package report

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestNoCredentials: a datagram that came without SCM_CREDENTIALS is
// refused. Listen sets SO_PASSCRED before binding, so it cannot produce
// one: this receiver is built around a real socket bound without it, the
// case of a socket set up by someone else.
func TestNoCredentials(t *testing.T) {
	path := filepath.Join(t.TempDir(), "report.sock")
	uc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	r := &Receiver{uc: uc, path: path, buf: make([]byte, MaxDatagramLen+1), oob: make([]byte, oobLen)}
	defer r.Close()
	c, err := NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(Draining{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, s, err := r.Recv(ctx)
	var de *DatagramError
	if !errors.As(err, &de) || !errors.Is(err, ErrNoCredentials) {
		t.Fatalf("Recv = %v, want a DatagramError matching ErrNoCredentials", err)
	}
	if s != (Sender{}) {
		t.Errorf("sender %+v, want none", s)
	}
}
