package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/activation"
	"github.com/powerhouse/powerhouse/affinity"
)

// poll is a bare engine.io v4 long-polling client: enough of the protocol
// to see the session id the server minted and the answer to "whoami",
// with nothing between the test and the server's own bytes.
type poll struct {
	t   *testing.T
	c   *http.Client
	url string
	sid string
}

func (p *poll) do(method, body string) string {
	p.t.Helper()
	u := p.url + "?EIO=4&transport=polling"
	if p.sid != "" {
		u += "&sid=" + p.sid
	}
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		p.t.Fatal(err)
	}
	resp, err := p.c.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		p.t.Fatalf("%s %s: %s %s", method, u, resp.Status, b)
	}
	return string(b)
}

// TestWhoami: under instance 3 of group chat, the engine.io handshake
// gives a session id minted by activation.NewSessionID for instance 3 (the
// hook took), and "whoami" answers with the group, the instance, the pid
// and that session id.
func TestWhoami(t *testing.T) {
	t.Setenv(activation.EnvGroup, "chat")
	t.Setenv(activation.EnvInstance, "3")
	io, h := newServer()
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer io.Close(nil)
	p := &poll{t: t, c: &http.Client{Timeout: 10 * time.Second}, url: srv.URL + path}

	open := p.do(http.MethodGet, "")
	var hs struct {
		SID string `json:"sid"`
	}
	if !strings.HasPrefix(open, "0") || json.Unmarshal([]byte(open[1:]), &hs) != nil {
		t.Fatalf("handshake answered %q, want an engine.io open packet", open)
	}
	if n, ok := affinity.InstanceOfID(hs.SID); !ok || n != 3 {
		t.Fatalf("session id %q names instance %d (%v), want one minted for instance 3", hs.SID, n, ok)
	}
	p.sid = hs.SID

	p.do(http.MethodPost, "40") // connect to the main namespace
	if got := p.do(http.MethodGet, ""); !strings.HasPrefix(got, "40{") {
		t.Fatalf("namespace connect answered %q", got)
	}
	p.do(http.MethodPost, `421["whoami"]`) // event with ack id 1
	got := p.do(http.MethodGet, "")
	if !strings.HasPrefix(got, "431") {
		t.Fatalf("whoami answered %q, want an ack with id 1", got)
	}
	var ack []whoami
	if err := json.Unmarshal([]byte(got[3:]), &ack); err != nil || len(ack) != 1 {
		t.Fatalf("whoami ack %q: %v", got, err)
	}
	want := whoami{Group: "chat", Instance: "3", PID: os.Getpid(), SID: hs.SID}
	if ack[0] != want {
		t.Errorf("whoami = %+v, want %+v", ack[0], want)
	}
}
