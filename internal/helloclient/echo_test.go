package helloclient

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeEcho serves one connection at a time with answer: given the request
// line and each line after the upgrade, it returns what to write back.
// A stand-in for examples/hello (whose own tests run the real one): it
// can answer wrong, which hello never does.
func fakeEcho(t *testing.T, status string, echo func(line string) string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
				}
				c.Write([]byte("HTTP/1.1 " + status + "\r\nContent-Length: 0\r\n\r\n"))
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(echo(strings.TrimSuffix(line, "\n")) + "\n"))
				}
			}()
		}
	}()
	return l.Addr().String()
}

func TestEcho(t *testing.T) {
	good := func(l string) string { return "instance=web@2 pid=42 remote=x echo=" + l }
	tests := []struct {
		name    string
		status  string
		echo    func(string) string
		dialErr string
		sayErr  string
	}{
		{name: "upgraded", status: "101 Switching Protocols", echo: good},
		{name: "refused upgrade", status: "426 Upgrade Required", echo: good, dialErr: "status 426, want 101"},
		{name: "wrong echo", status: "101 Switching Protocols", echo: func(string) string { return "instance=web@2 pid=42 echo=other" }, sayErr: `got "instance=web@2 pid=42 echo=other"`},
		{name: "no answer line", status: "101 Switching Protocols", echo: func(l string) string { return "nobody echo=" + l }, sayErr: "unexpected answer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := fakeEcho(t, tt.status, tt.echo)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			e, err := DialEcho(ctx, "127.0.0.1", addr)
			if tt.dialErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.dialErr) {
					t.Fatalf("DialEcho: %v, want %q", err, tt.dialErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			r, err := e.Say("hi there", 5*time.Second)
			if tt.sayErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.sayErr) {
					t.Fatalf("Say: %+v %v, want %q", r, err, tt.sayErr)
				}
				return
			}
			if err != nil || r.Instance != "web@2" || r.PID != "42" {
				t.Fatalf("Say: %+v %v", r, err)
			}
			if _, err := e.Say("two\nlines", time.Second); err == nil {
				t.Error("Say of two lines: no error")
			}
		})
	}
}
