package affinity

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Spec
		err      string
	}{
		{name: "source", in: "source", want: Spec{}},
		{name: "header", in: "header:X-Session", want: Spec{Header, "X-Session"}},
		{name: "xff", in: "header:x-forwarded-for", want: Spec{Header, "x-forwarded-for"}},
		{name: "cookie", in: "cookie:sid", want: Spec{Cookie, "sid"}},
		{name: "query", in: "query:sid", want: Spec{Query, "sid"}},
		{name: "query with brackets", in: "query:a[b]", want: Spec{Query, "a[b]"}},
		{name: "empty", in: "", err: "use \"source\""},
		{name: "no name", in: "cookie:", err: "name is missing"},
		{name: "unknown kind", in: "path:x", err: "not a kind of key"},
		{name: "space in header", in: "header:X Y", err: "HTTP token"},
		{name: "colon in cookie", in: "cookie:a:b", err: "HTTP token"},
		{name: "ampersand in query", in: "query:a&b", err: "may not contain"},
		{name: "escape in query", in: "query:a%20b", err: "may not contain"},
		{name: "too long", in: "query:" + strings.Repeat("a", MaxName+1), err: "longer than"},
		{name: "Source capitalised", in: "Source", err: "use \"source\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Parse(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Parse(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
			if back, err := Parse(got.String()); err != nil || back != got {
				t.Fatalf("Parse(String()) = %v, %v; want %v", back, err, got)
			}
		})
	}
}

func mustSpec(t testing.TB, s string) Spec {
	t.Helper()
	sp, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func TestExtract(t *testing.T) {
	lb := netip.MustParseAddr("10.0.0.5")
	stranger := netip.MustParseAddr("198.51.100.9")
	trust := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("2001:db8::/64")}
	for _, tc := range []struct {
		name, spec, head string
		peer             netip.Addr
		want             Result
		err              error
	}{
		{name: "query", spec: "query:sid", head: "GET /socket.io/?EIO=4&transport=polling&sid=ph2.abc HTTP/1.1\r\n", want: Result{Key: "ph2.abc"}},
		{name: "query needs only the request line", spec: "query:sid", head: "GET /?sid=k HTTP/1.1\r\nHost: x", want: Result{Key: "k"}},
		{name: "query first of two", spec: "query:sid", head: "GET /?sid=a&sid=b HTTP/1.1\r\n", want: Result{Key: "a"}},
		{name: "query decoded", spec: "query:sid", head: "GET /?sid=a%2Fb+c HTTP/1.1\r\n", want: Result{Key: "a/b c"}},
		{name: "query bad escape kept", spec: "query:sid", head: "GET /?sid=a%zz HTTP/1.1\r\n", want: Result{Key: "a%zz"}},
		{name: "query not in fragment", spec: "query:sid", head: "GET /?x=1#sid=2 HTTP/1.1\r\n", want: Result{}},
		{name: "query absent", spec: "query:sid", head: "GET /?sidx=1 HTTP/1.1\r\n", want: Result{}},
		{name: "query empty value", spec: "query:sid", head: "GET /?sid= HTTP/1.1\r\n", want: Result{}},
		{name: "query no query", spec: "query:sid", head: "GET / HTTP/1.0\r\n", want: Result{}},
		{name: "query absolute form", spec: "query:sid", head: "GET http://h/p?sid=z HTTP/1.1\r\n", want: Result{Key: "z"}},
		{name: "query incomplete line", spec: "query:sid", head: "GET /?sid=abc", err: ErrIncomplete},
		{name: "query LF only", spec: "query:sid", head: "GET /?sid=q HTTP/1.1\n", want: Result{Key: "q"}},
		{name: "header", spec: "header:X-Session", head: "GET / HTTP/1.1\r\nHost: a\r\nx-session:  s1 \r\n\r\n", want: Result{Key: "s1"}},
		{name: "header first of two", spec: "header:X-Session", head: "GET / HTTP/1.1\r\nX-Session: a\r\nX-Session: b\r\n\r\n", want: Result{Key: "a"}},
		{name: "header absent", spec: "header:X-Session", head: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", want: Result{}},
		{name: "header head incomplete", spec: "header:X-Session", head: "GET / HTTP/1.1\r\nX-Session: a\r\n", err: ErrIncomplete},
		{name: "header space before colon", spec: "header:X-Session", head: "GET / HTTP/1.1\r\nX-Session : a\r\n\r\n", err: ErrMalformed},
		{name: "header folded", spec: "header:X-Session", head: "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", err: ErrMalformed},
		{name: "header bare CR", spec: "header:X-Session", head: "GET / HTTP/1.1\r\nX-Session: a\rb\r\n\r\n", err: ErrMalformed},
		{name: "header malformed after key", spec: "header:X-Session", head: "GET / HTTP/1.1\r\nX-Session: a\r\nbad\r\n\r\n", err: ErrMalformed},
		{name: "cookie", spec: "cookie:sid", head: "GET / HTTP/1.1\r\nCookie: a=1; sid=\"c2\"; b=3\r\n\r\n", want: Result{Key: "c2"}},
		{name: "cookie in second header", spec: "cookie:sid", head: "GET / HTTP/1.1\r\nCookie: a=1\r\ncookie: sid=c3\r\n\r\n", want: Result{Key: "c3"}},
		{name: "cookie name exact", spec: "cookie:sid", head: "GET / HTTP/1.1\r\nCookie: SID=x; xsid=y\r\n\r\n", want: Result{}},
		{name: "xff trusted peer", spec: "header:X-Forwarded-For", peer: lb, head: "GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.6\r\n\r\n", want: Result{Key: "203.0.113.7", Addr: netip.MustParseAddr("203.0.113.7")}},
		{name: "xff last untrusted hop", spec: "header:X-Forwarded-For", peer: lb, head: "GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1, 203.0.113.7\r\n\r\n", want: Result{Key: "203.0.113.7", Addr: netip.MustParseAddr("203.0.113.7")}},
		{name: "xff two headers", spec: "header:X-Forwarded-For", peer: lb, head: "GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n", want: Result{Key: "203.0.113.7", Addr: netip.MustParseAddr("203.0.113.7")}},
		{name: "xff all trusted", spec: "header:X-Forwarded-For", peer: lb, head: "GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.8, 10.0.0.9\r\n\r\n", want: Result{Key: "10.0.0.8", Addr: netip.MustParseAddr("10.0.0.8")}},
		{name: "xff with ports", spec: "header:X-Forwarded-For", peer: lb, head: "GET / HTTP/1.1\r\nX-Forwarded-For: [2001:db9::1]:443\r\n\r\n", want: Result{Key: "2001:db9::1", Addr: netip.MustParseAddr("2001:db9::1")}},
		{name: "xff mapped peer", spec: "header:X-Forwarded-For", peer: netip.MustParseAddr("::ffff:10.0.0.5"), head: "GET / HTTP/1.1\r\nX-Forwarded-For: ::ffff:203.0.113.7\r\n\r\n", want: Result{Key: "203.0.113.7", Addr: netip.MustParseAddr("203.0.113.7")}},
		{name: "xff untrusted peer", spec: "header:X-Forwarded-For", peer: stranger, head: "GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n", want: Result{XFFIgnored: true}},
		{name: "xff unix peer", spec: "header:X-Forwarded-For", head: "GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n", want: Result{XFFIgnored: true}},
		{name: "xff absent", spec: "header:X-Forwarded-For", peer: lb, head: "GET / HTTP/1.1\r\n\r\n", want: Result{}},
		{name: "xff garbage hop", spec: "header:X-Forwarded-For", peer: lb, head: "GET / HTTP/1.1\r\nX-Forwarded-For: evil, \r\n\r\n", err: ErrMalformed},
		{name: "tls client hello", spec: "query:sid", head: "\x16\x03\x01\x02\x00\x01", err: ErrMalformed},
		{name: "http2 preface", spec: "header:X", head: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", err: ErrMalformed},
		{name: "empty method", spec: "query:sid", head: " / HTTP/1.1\r\n", err: ErrMalformed},
		{name: "no target", spec: "query:sid", head: "GET\r\n", err: ErrMalformed},
		{name: "nothing yet", spec: "query:sid", head: "", err: ErrIncomplete},
		{name: "key too long", spec: "query:sid", head: "GET /?sid=" + strings.Repeat("k", MaxKey+1) + " HTTP/1.1\r\n", err: ErrMalformed},
		{name: "source peeks nothing", spec: "source", head: "\x16", want: Result{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Extract(mustSpec(t, tc.spec), []byte(tc.head), tc.peer, Options{TrustedProxies: trust})
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("Extract = %+v, %v; want %v", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Extract = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// TestExtractBounded: a head that never ends within MaxHead stays
// incomplete (the caller counts it too large) whatever follows.
func TestExtractBounded(t *testing.T) {
	head := []byte("GET / HTTP/1.1\r\nX-Pad: " + strings.Repeat("a", 2*MaxHead) + "\r\nX-Session: late\r\n\r\n")
	_, err := Extract(mustSpec(t, "header:X-Session"), head, netip.Addr{}, Options{})
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("err = %v, want ErrIncomplete", err)
	}
}

func TestExtractAllocs(t *testing.T) {
	spec := mustSpec(t, "query:sid")
	head := []byte("GET /socket.io/?EIO=4&transport=polling&sid=ph2.q2V0aGlzaXNyYW5kb21ieQ HTTP/1.1\r\nHost: x\r\n\r\n")
	n := testing.AllocsPerRun(100, func() { Extract(spec, head, netip.Addr{}, Options{}) })
	if n > 1 {
		t.Fatalf("%v allocations per Extract, want at most 1 (the key)", n)
	}
}

func TestSessionID(t *testing.T) {
	seen := map[string]bool{}
	for _, inst := range []int{1, 2, 9, 10, 99, 1000, MaxInstance} {
		id := NewSessionID(inst)
		if seen[id] {
			t.Fatalf("id %q twice", id)
		}
		seen[id] = true
		if got, ok := InstanceOfID(id); !ok || got != inst {
			t.Fatalf("InstanceOfID(%q) = %d, %v; want %d", id, got, ok, inst)
		}
		if strings.Trim(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
			t.Fatalf("id %q has characters outside [A-Za-z0-9._-]", id)
		}
	}
	for _, inst := range []int{0, -1, MaxInstance + 1} {
		id := NewSessionID(inst)
		if len(id) != idRandom {
			t.Fatalf("NewSessionID(%d) = %q, want the random part alone", inst, id)
		}
		if _, ok := InstanceOfID(id); ok {
			t.Fatalf("InstanceOfID(%q) ok for an untagged id", id)
		}
	}
	good := "ph3." + NewSessionID(0)
	for _, tc := range []struct {
		name, id string
		want     int
		ok       bool
	}{
		{name: "good", id: good, want: 3, ok: true},
		{name: "leading zero", id: "ph03." + good[4:]},
		{name: "zero", id: "ph0." + good[4:]},
		{name: "too high", id: "ph1025." + good[4:]},
		{name: "no number", id: "ph." + good[4:]},
		{name: "sign", id: "ph+3." + good[4:]},
		{name: "short", id: good[:len(good)-1]},
		{name: "long", id: good + "A"},
		{name: "bad alphabet", id: "ph3." + strings.Repeat("+", idRandom)},
		{name: "trailing bits", id: "ph3." + strings.Repeat("A", idRandom-1) + "B"},
		{name: "other prefix", id: "PH3." + good[4:]},
		{name: "empty", id: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := InstanceOfID(tc.id)
			if ok != tc.ok || got != tc.want {
				t.Fatalf("InstanceOfID(%q) = %d, %v; want %d, %v", tc.id, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func FuzzExtract(f *testing.F) {
	for _, s := range []string{
		"GET /?sid=ph2.abc HTTP/1.1\r\n",
		"GET / HTTP/1.1\r\nCookie: a=1; sid=x\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n\r\n",
		"\x16\x03\x01",
		"POST /a?b=%41 HTTP/1.0\nX: y\n\n",
	} {
		f.Add([]byte(s), uint8(0))
	}
	specs := []Spec{{Query, "sid"}, {Header, "X-Session"}, {Cookie, "sid"}, {Header, "X-Forwarded-For"}}
	trust := Options{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	f.Fuzz(func(t *testing.T, head []byte, which uint8) {
		spec := specs[int(which)%len(specs)]
		r, err := Extract(spec, head, netip.MustParseAddr("10.0.0.1"), trust)
		switch {
		case err != nil && (r != Result{}):
			t.Fatalf("error %v with a result %+v", err, r)
		case err != nil && !errors.Is(err, ErrIncomplete) && !errors.Is(err, ErrMalformed):
			t.Fatalf("unclassified error %v", err)
		case len(r.Key) > MaxKey:
			t.Fatalf("key of %d bytes", len(r.Key))
		case r.Key != "" && !strings.Contains(string(head), r.Key) && spec.Kind != Query && !spec.XFF():
			t.Fatalf("key %q is not in the head", r.Key)
		}
		// More bytes never turn a found key into another one: what was
		// found stays found once the head completes the same way.
		if err == nil && r.Key != "" && spec.Kind == Query {
			r2, err2 := Extract(spec, append(append([]byte(nil), head...), "more"...), netip.MustParseAddr("10.0.0.1"), trust)
			if len(head)+4 <= MaxHead && (err2 != nil || r2.Key != r.Key) {
				t.Fatalf("appending changed the key: %+v, %v -> %+v, %v", r, err, r2, err2)
			}
		}
	})
}

func FuzzInstanceOfID(f *testing.F) {
	f.Add("ph3." + NewSessionID(0))
	f.Add("ph1024.AAAAAAAAAAAAAAAAAAAAAA")
	f.Add("ph01.AAAAAAAAAAAAAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, id string) {
		n, ok := InstanceOfID(id)
		if !ok {
			if n != 0 {
				t.Fatalf("not ok with instance %d", n)
			}
			return
		}
		if n < 1 || n > MaxInstance || !strings.HasPrefix(id, "ph") || len(id) > MaxIDLen {
			t.Fatalf("InstanceOfID(%q) = %d", id, n)
		}
		// A valid id re-encodes to itself: one id, one spelling.
		dot := strings.IndexByte(id, '.')
		raw, err := strict.DecodeString(id[dot+1:])
		if err != nil || "ph"+itoa(n)+"."+strict.EncodeToString(raw) != id {
			t.Fatalf("id %q is not canonical", id)
		}
	})
}

func itoa(n int) string {
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}
