package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// serve runs the handlers on a real loopback HTTP server; stop ends the
// waiting polls as a shutdown would.
func serve(t *testing.T) (s *sessions, url string, stop context.CancelFunc) {
	t.Helper()
	stopping, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	s = newSessions("web@2", stopping)
	srv := httptest.NewServer(s.routes())
	t.Cleanup(srv.Close)
	return s, srv.URL, stop
}

func do(t *testing.T, method, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// open creates a session and returns its URL.
func open(t *testing.T, url string) string {
	t.Helper()
	code, body := do(t, "POST", url+"/session", "")
	id, ok := strings.CutPrefix(strings.Fields(body)[0], "session=")
	if code != http.StatusCreated || !ok || !strings.Contains(body, "instance=web@2") {
		t.Fatalf("POST /session: %d %q", code, body)
	}
	return url + "/session/" + id
}

func TestSendThenPoll(t *testing.T) {
	_, url, _ := serve(t)
	sess := open(t, url)
	for _, m := range []string{"one", "two\n", "three\r\n"} {
		if code, body := do(t, "POST", sess+"/send", m); code != http.StatusNoContent {
			t.Fatalf("send %q: %d %q", m, code, body)
		}
	}
	if code, body := do(t, "GET", sess+"/poll?timeout=1s", ""); code != 200 || body != "one\ntwo\nthree\n" {
		t.Errorf("poll: %d %q, want 200 with the three messages", code, body)
	}
	start := time.Now()
	if code, _ := do(t, "GET", sess+"/poll?timeout=200ms", ""); code != http.StatusNoContent {
		t.Errorf("poll of an empty session: %d, want 204", code)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("empty poll returned after %v, before its timeout", d)
	}
}

func TestPollWaitsForSend(t *testing.T) {
	s, url, _ := serve(t)
	sess := open(t, url)
	got := make(chan string, 1)
	go func() {
		_, body := do(t, "GET", sess+"/poll?timeout=10", "")
		got <- body
	}()
	// Send only once the poll is waiting on the queue, so that this checks
	// the wake-up and not a message already there.
	waitPolling(t, s, strings.TrimPrefix(sess, url+"/session/"))
	do(t, "POST", sess+"/send", "late")
	select {
	case b := <-got:
		if b != "late\n" {
			t.Errorf("poll answered %q, want %q", b, "late\n")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("poll still waiting after the send")
	}
}

// waitPolling waits until a poll has looked the session up (its lastUsed
// moves past its creation), so that the send usually wakes a waiting poll
// rather than filling the queue first; both must deliver the message.
func waitPolling(t *testing.T, s *sessions, id string) {
	t.Helper()
	s.mu.Lock()
	created := s.byID[id].lastUsed
	s.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		used := s.byID[id].lastUsed
		s.mu.Unlock()
		if used.After(created) {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("the poll never looked its session up")
}

func TestShutdownEndsPolls(t *testing.T) {
	_, url, stop := serve(t)
	sess := open(t, url)
	done := make(chan int, 1)
	go func() {
		code, _ := do(t, "GET", sess+"/poll", "")
		done <- code
	}()
	stop()
	select {
	case code := <-done:
		if code != http.StatusNoContent {
			t.Errorf("poll at shutdown: %d, want 204", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("poll still waiting after shutdown began")
	}
}

func TestRefusals(t *testing.T) {
	_, url, _ := serve(t)
	sess := open(t, url)
	for _, tc := range []struct {
		name, method, url, body string
		code                    int
		want                    string
	}{
		{"poll of an unknown session", "GET", url + "/session/NOPE/poll", "", 404, "unknown session (this is web@2)\n"},
		{"send to an unknown session", "POST", url + "/session/NOPE/send", "x", 404, "unknown session (this is web@2)\n"},
		{"message of two lines", "POST", sess + "/send", "a\nb", 400, "message: must be one line\n"},
		{"message too large", "POST", sess + "/send", strings.Repeat("x", maxMessage+1), 413, ""},
		{"bad timeout", "GET", sess + "/poll?timeout=soon", "", 400, ""},
		{"timeout too long", "GET", sess + "/poll?timeout=3m", "", 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(t, tc.method, tc.url, tc.body)
			if code != tc.code || tc.want != "" && body != tc.want {
				t.Errorf("%d %q, want %d %q", code, body, tc.code, tc.want)
			}
		})
	}
}

func TestPollTimeout(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     time.Duration
		err      bool
	}{
		{"default", "", defaultPollTimeout, false},
		{"duration", "500ms", 500 * time.Millisecond, false},
		{"seconds", "7", 7 * time.Second, false},
		{"zero", "0", 0, false},
		{"negative", "-1s", 0, true},
		{"too long", "121", 0, true},
		{"garbage", "soon", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pollTimeout(tc.in)
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("pollTimeout(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
			}
		})
	}
}

func TestExpire(t *testing.T) {
	s, url, _ := serve(t)
	old, fresh := open(t, url), open(t, url)
	s.mu.Lock()
	s.byID[strings.TrimPrefix(old, url+"/session/")].lastUsed = time.Now().Add(-time.Hour)
	s.mu.Unlock()
	s.expire(time.Now().Add(-idleExpiry))
	if code, _ := do(t, "POST", old+"/send", "x"); code != 404 {
		t.Errorf("send to an expired session: %d, want 404", code)
	}
	if code, _ := do(t, "POST", fresh+"/send", "x"); code != 204 {
		t.Errorf("send to a fresh session: %d, want 204", code)
	}
}
