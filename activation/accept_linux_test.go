package activation_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
	"github.com/powerhouse/powerhouse/internal/sockettest"
)

// TestServeAcceptErrors: every accept error but a closed listener backs off
// and serving goes on. net/http alone returns from Serve on the errors it
// does not call Temporary (EPROTO, EPERM, ENOBUFS, ENOMEM), ending the
// worker.
func TestServeAcceptErrors(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "")
	for _, tt := range []struct {
		name string
		err  error
	}{
		{"EMFILE", syscall.EMFILE},
		{"ENFILE", syscall.ENFILE},
		{"ENOBUFS", syscall.ENOBUFS},
		{"ENOMEM", syscall.ENOMEM},
		{"ECONNABORTED", syscall.ECONNABORTED},
		{"EPROTO", syscall.EPROTO},
		{"EPERM", syscall.EPERM},
		{"EINTR", syscall.EINTR},
		{"timeout", os.ErrDeadlineExceeded},
		{"hand-off recvmsg", errors.New("handoff: recvmsg: no buffer space available")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			real, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			fl := sockettest.NewFailingListener(real, tt.err, tt.err, tt.err)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				done <- (&activation.ServeConfig{}).Serve(ctx, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, "ok")
				})}, fl)
			}()
			client := &http.Client{Timeout: 10 * time.Second}
			defer client.CloseIdleConnections()
			resp, err := client.Get("http://" + real.Addr().String())
			if err != nil {
				select {
				case serr := <-done:
					t.Fatalf("GET: %v; Serve returned: %v", err, serr)
				default:
					t.Fatalf("GET: %v", err)
				}
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "ok" {
				t.Errorf("GET: %q", b)
			}
			if n := fl.Left(); n != 0 {
				t.Errorf("%d queued errors not returned", n)
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve after cancel: %v, want nil", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return after cancel")
			}
		})
	}

	// A listener closed under Serve ends it, with an error saying so.
	t.Run("closed", func(t *testing.T) {
		real, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		fl := sockettest.NewFailingListener(real, syscall.EPROTO)
		real.Close()
		done := make(chan error, 1)
		go func() { done <- (&activation.ServeConfig{}).Serve(context.Background(), &http.Server{}, fl) }()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("Serve on a closed listener: %v, want net.ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return on a closed listener")
		}
	})
}
