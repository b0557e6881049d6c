package config

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/powerhouse/powerhouse/affinity"
)

func TestAffinityGood(t *testing.T) {
	const w = "[[worker]]\nname = \"w\"\nexec = \"/bin/w\"\nsticky = true\nlisten = [80]\n"
	for _, tc := range []struct {
		name     string
		src      string
		spec     affinity.Spec
		trusted  []netip.Prefix
		fallback Fallback
		factor   float64
	}{
		{name: "default", src: w},
		{name: "source written", src: w + "affinity = \"source\"\n"},
		{name: "query spread", src: w + "affinity = \"query:sid\"\nfallback = \"spread\"\n", spec: affinity.Spec{Kind: affinity.Query, Name: "sid"}, fallback: FallbackSpread},
		{name: "cookie source", src: w + "affinity = \"cookie:SESSION\"\nfallback = \"source\"\n", spec: affinity.Spec{Kind: affinity.Cookie, Name: "SESSION"}},
		{name: "xff", src: w + "affinity = \"header:X-Forwarded-For\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::ffff:192.0.2.1\"]\n",
			spec: affinity.Spec{Kind: affinity.Header, Name: "X-Forwarded-For"}, trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32")}},
		{name: "balance on source", src: w + "balance_factor = 1.25\n", factor: 1.25},
		{name: "balance integer", src: w + "affinity = \"header:X-User\"\nbalance_factor = 2\n", spec: affinity.Spec{Kind: affinity.Header, Name: "X-User"}, factor: 2},
		{name: "proxy listener", src: "[[worker]]\nname = \"w\"\nexec = \"/bin/w\"\nsticky = true\nlisten = [{ address = 80, proxy_protocol = true, proxy_from = [\"10.0.0.1\"] }]\naffinity = \"query:sid\"\n", spec: affinity.Spec{Kind: affinity.Query, Name: "sid"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("/etc/ph.toml", []byte(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			w := c.Workers[0]
			if w.Affinity != tc.spec || !reflect.DeepEqual(w.TrustedProxies, tc.trusted) || w.Fallback != tc.fallback || w.BalanceFactor != tc.factor {
				t.Errorf("got %v %v %v %v; want %v %v %v %v", w.Affinity, w.TrustedProxies, w.Fallback, w.BalanceFactor, tc.spec, tc.trusted, tc.fallback, tc.factor)
			}
		})
	}
}

func TestAffinityBad(t *testing.T) {
	const w = "[[worker]]\nname = \"w\"\nexec = \"/bin/w\"\n" // lines 1-3
	const sticky = w + "sticky = true\nlisten = [80]\n"       // lines 1-5
	for _, tc := range []struct {
		name string
		src  string
		line int
		key  string
		msg  string
	}{
		{"not sticky", w + "listen = [80]\naffinity = \"query:sid\"\n", 5, "worker.affinity", "needs a sticky group"},
		{"kernel", w + "sticky = true\nlisten = [\"127.0.0.1:80\"]\ndispatch = \"kernel\"\naffinity = \"cookie:sid\"\n", 7, "worker.affinity", "cannot be used with dispatch = \"kernel\""},
		{"bad spec", sticky + "affinity = \"path:x\"\n", 6, "worker.affinity", "not a kind of key"},
		{"not a string", sticky + "affinity = 3\n", 6, "worker.affinity", "must be a string"},
		{"xff without trust", sticky + "affinity = \"header:x-forwarded-for\"\n", 6, "worker.affinity", "needs trusted_proxies"},
		{"trust without xff", sticky + "affinity = \"query:sid\"\ntrusted_proxies = [\"10.0.0.1\"]\n", 7, "worker.trusted_proxies", "only means something"},
		{"trust everyone", sticky + "affinity = \"header:X-Forwarded-For\"\ntrusted_proxies = [\"0.0.0.0/0\"]\n", 7, "worker.trusted_proxies", "trusts every address"},
		{"trust host bits", sticky + "affinity = \"header:X-Forwarded-For\"\ntrusted_proxies = [\"10.0.0.1/8\"]\n", 7, "worker.trusted_proxies", "bits set"},
		{"trust empty", sticky + "affinity = \"header:X-Forwarded-For\"\ntrusted_proxies = []\n", 7, "worker.trusted_proxies", "is empty"},
		{"fallback without key", sticky + "fallback = \"spread\"\n", 6, "worker.fallback", "only means something with a key affinity"},
		{"fallback unknown", sticky + "affinity = \"query:sid\"\nfallback = \"random\"\n", 7, "worker.fallback", "not a fallback"},
		{"balance one", sticky + "balance_factor = 1.0\n", 6, "worker.balance_factor", "out of range"},
		{"balance huge", sticky + "balance_factor = 101\n", 6, "worker.balance_factor", "out of range"},
		{"balance nan", sticky + "balance_factor = nan\n", 6, "worker.balance_factor", "out of range"},
		{"balance string", sticky + "balance_factor = \"1.2\"\n", 6, "worker.balance_factor", "must be a number"},
		{"xff on unix sockets only", w + "sticky = true\nlisten = [\"/run/app.sock\"]\naffinity = \"header:X-Forwarded-For\"\ntrusted_proxies = [\"10.0.0.1\"]\n", 6, "worker.affinity", "have no address"},
		{"balance not sticky", w + "listen = [80]\nbalance_factor = 1.5\n", 5, "worker.balance_factor", "only applies to a sticky group"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("/etc/ph.toml", []byte(tc.src))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("Parse error = %v, want an ErrorList", err)
			}
			for _, e := range list {
				if e.Line == tc.line && e.Key == tc.key && strings.Contains(e.Msg, tc.msg) {
					return
				}
			}
			t.Errorf("want line %d key %q containing %q; got:\n%v", tc.line, tc.key, tc.msg, err)
		})
	}
}
