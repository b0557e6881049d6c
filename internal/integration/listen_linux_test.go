package integration

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestIntegrationPortBesideIPv6: a listener on a port alone (":P", every
// address) beside an IPv6 one serves IPv4 and IPv6 clients. The IPv6
// listener makes the socket unit bind IPv6-only (or "[::1]:Q" would also
// take IPv4), so the port alone is written as 0.0.0.0:P and [::]:P; as a
// bare port it was bound to [::]:P IPv6-only, and IPv4 clients were
// refused. The supervisor matches both sockets to the one listener.
func TestIntegrationPortBesideIPv6(t *testing.T) {
	h := newHouse(t, `title = "ports"
[[worker]]
name   = "web"
exec   = "`+filepath.Join(boxBin, "hello")+`"
amount = 2
sticky = true
listen = [":19398", "[::1]:19399"]
`)
	h.systemctl("start", "powerhouse.target")
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for _, url := range []string{"http://127.0.0.1:19398/", "http://[::1]:19398/", "http://[::1]:19399/"} {
		var body string
		var err error
		waitFor(t, 20*time.Second, "an answer from "+url, func() bool {
			body, err = getBody(c, url)
			return err == nil
		})
		if !strings.Contains(body, "instance=") {
			t.Errorf("%s answered %q", url, body)
		}
	}
}
