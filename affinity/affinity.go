package affinity

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Kind is what a group's connections are routed by.
type Kind uint8

const (
	Source Kind = iota // the client's address
	Header             // a request header
	Cookie             // a cookie
	Query              // a query parameter of the request target
)

func (k Kind) String() string {
	switch k {
	case Source:
		return "source"
	case Header:
		return "header"
	case Cookie:
		return "cookie"
	case Query:
		return "query"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Bounds of what a dispatcher peeks and keys on.
const (
	// MaxHead is the most bytes of a request head read for a key.
	MaxHead = 8 << 10
	// MaxKey is the longest key; a longer value is malformed.
	MaxKey = 1024
	// MaxName is the longest NAME of a spec.
	MaxName = 128
)

// Spec is a parsed affinity spec. The zero value is Source.
type Spec struct {
	Kind Kind
	// Name is the header, cookie or query parameter name; "" for
	// Source. Header names are kept as written and matched
	// case-insensitively.
	Name string
}

// IsKey reports whether s routes by a key in the request (not Source):
// the dispatcher must peek.
func (s Spec) IsKey() bool { return s.Kind != Source }

// XFF reports whether s is "header:X-Forwarded-For", whose value is a
// list of hops read against the trusted proxies.
func (s Spec) XFF() bool { return s.Kind == Header && strings.EqualFold(s.Name, "X-Forwarded-For") }

// String returns the spec as written in the configuration.
func (s Spec) String() string {
	if s.Kind == Source {
		return "source"
	}
	return s.Kind.String() + ":" + s.Name
}

// Parse reads a spec: "source", "header:NAME", "cookie:NAME" or
// "query:NAME". NAME must be an HTTP token (a cookie's name too); a query
// parameter's name may be any non-empty text of printable ASCII but '&',
// '=', '#' and '%', compared byte for byte with the name as sent (not
// decoded).
func Parse(s string) (Spec, error) {
	if s == "source" {
		return Spec{}, nil
	}
	kind, name, ok := strings.Cut(s, ":")
	if !ok {
		return Spec{}, fmt.Errorf("affinity %q: use \"source\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"", s)
	}
	var k Kind
	switch kind {
	case "header":
		k = Header
	case "cookie":
		k = Cookie
	case "query":
		k = Query
	default:
		return Spec{}, fmt.Errorf("affinity %q: %q is not a kind of key: use \"header:NAME\", \"cookie:NAME\" or \"query:NAME\" (or \"source\")", s, kind)
	}
	switch {
	case name == "":
		return Spec{}, fmt.Errorf("affinity %q: the %s name is missing", s, kind)
	case len(name) > MaxName:
		return Spec{}, fmt.Errorf("affinity %q: the %s name is longer than %d bytes", s, kind, MaxName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if k == Query {
			if c <= ' ' || c >= 0x7f || strings.IndexByte("&=#%?", c) >= 0 {
				return Spec{}, fmt.Errorf("affinity %q: a query parameter name may not contain %q (write the name as sent, without percent-encoding)", s, c)
			}
			continue
		}
		if !isTchar(c) {
			return Spec{}, fmt.Errorf("affinity %q: a %s name is an HTTP token and may not contain %q", s, kind, c)
		}
	}
	return Spec{Kind: k, Name: name}, nil
}

// Options are what Extract needs besides the spec and the head.
type Options struct {
	// TrustedProxies lists the proxies whose X-Forwarded-For is honoured
	// (the connection's peer must be one) and whose hops are skipped
	// (the key is the last hop not in the list). Prefixes are compared
	// with unmapped addresses: write IPv4 prefixes as IPv4.
	TrustedProxies []netip.Prefix
}

// Result is the key found in a head.
type Result struct {
	// Key is the key; "" when the head has none (the connection goes by
	// the group's fallback).
	Key string
	// Addr is the client address an X-Forwarded-For key names (Key is its
	// text): a dispatcher places it as it would a connection from that
	// address, so a client keeps its instance whether it comes through
	// the proxy or not.
	Addr netip.Addr
	// XFFIgnored says that X-Forwarded-For was sent by a peer that is not
	// a trusted proxy and was ignored.
	XFFIgnored bool
}

// Errors of Extract. A dispatcher counts them by reason and routes the
// connection by its fallback.
var (
	// ErrIncomplete: the head is not complete yet; peek again when more
	// has arrived (or give up at MaxHead: too large).
	ErrIncomplete = errors.New("affinity: request head incomplete")
	// ErrMalformed: what was peeked is not an HTTP/1.x request head (TLS,
	// another protocol, a header this parser refuses), or the key is too
	// long.
	ErrMalformed = errors.New("affinity: not an HTTP/1.x request head")
)

// Extract finds spec's key in head, the first bytes of a connection from
// peer (the zero address for a unix-socket peer). It returns
// ErrIncomplete when head ends before the key can be known (before the end
// of the request line for a query key, before the blank line that ends
// the head otherwise), and ErrMalformed (wrapped, with what was wrong)
// when head is not an HTTP/1.x request. Only the first MaxHead bytes are
// read: a head that does not end within them is ErrIncomplete for ever,
// which the caller counts as too large. Extract allocates only the key's
// string, an error, and X-Forwarded-For's list of hops.
func Extract(spec Spec, head []byte, peer netip.Addr, o Options) (Result, error) {
	if len(head) > MaxHead {
		head = head[:MaxHead]
	}
	if !spec.IsKey() {
		return Result{}, nil
	}
	line, rest, ok := nextLine(head)
	if !ok {
		if err := checkPrefix(head); err != nil {
			return Result{}, err
		}
		return Result{}, ErrIncomplete
	}
	target, err := requestLine(line)
	if err != nil {
		return Result{}, err
	}
	if spec.Kind == Query {
		v, found := queryParam(target, spec.Name)
		if !found {
			return Result{}, nil
		}
		return keyResult(v)
	}
	xff := spec.XFF()
	var hops []byte // X-Forwarded-For values in order, joined by commas
	var val []byte
	found := false
	for {
		line, rest, ok = nextLine(rest)
		if !ok {
			return Result{}, ErrIncomplete
		}
		if len(line) == 0 {
			break // the end of the head
		}
		name, value, err := headerField(line)
		if err != nil {
			return Result{}, err
		}
		switch {
		case found && !xff:
			// Keep reading: the head must be complete and well formed, so
			// that a key is never taken from a request the worker refuses.
		case spec.Kind == Header && asciiEqualFold(name, spec.Name):
			if xff {
				if len(hops)+len(value)+1 > MaxHead {
					return Result{}, fmt.Errorf("%w: X-Forwarded-For too long", ErrMalformed)
				}
				if len(hops) > 0 {
					hops = append(hops, ',')
				}
				hops = append(hops, value...)
				found = true
				continue
			}
			val, found = value, true
		case spec.Kind == Cookie && asciiEqualFold(name, "Cookie"):
			val, found = cookieValue(value, spec.Name)
		}
	}
	if !found {
		return Result{}, nil
	}
	if xff {
		return forwardedFor(hops, peer, o.TrustedProxies)
	}
	return keyResult(val)
}

func keyResult(v []byte) (Result, error) {
	switch {
	case len(v) == 0:
		return Result{}, nil
	case len(v) > MaxKey:
		return Result{}, fmt.Errorf("%w: key longer than %d bytes", ErrMalformed, MaxKey)
	}
	return Result{Key: string(v)}, nil
}

// nextLine splits b after its first line, returning the line without its
// CRLF (a bare LF is accepted as line end too, as HTTP servers do).
func nextLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, b, false
	}
	line = b[:i]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, b[i+1:], true
}

// checkPrefix refuses, before the request line is complete, what cannot
// become one: a byte that is no method's (TLS starts with 0x16).
func checkPrefix(b []byte) error {
	for i, c := range b {
		switch {
		case c == ' ' && i == 0:
			return fmt.Errorf("%w: empty method", ErrMalformed)
		case c == ' ':
			return nil
		case !isTchar(c):
			return fmt.Errorf("%w: byte %#02x in the method", ErrMalformed, c)
		}
	}
	return nil
}

// requestLine checks "METHOD SP target SP HTTP/1.x" and returns target.
func requestLine(line []byte) ([]byte, error) {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return nil, fmt.Errorf("%w: no method", ErrMalformed)
	}
	for _, c := range line[:sp] {
		if !isTchar(c) {
			return nil, fmt.Errorf("%w: byte %#02x in the method", ErrMalformed, c)
		}
	}
	rest := line[sp+1:]
	sp = bytes.IndexByte(rest, ' ')
	if sp <= 0 {
		return nil, fmt.Errorf("%w: no request target", ErrMalformed)
	}
	target, version := rest[:sp], rest[sp+1:]
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return nil, fmt.Errorf("%w: byte %#02x in the request target", ErrMalformed, c)
		}
	}
	if len(version) != 8 || string(version[:7]) != "HTTP/1." || version[7] != '0' && version[7] != '1' {
		return nil, fmt.Errorf("%w: version %q is not HTTP/1.0 or HTTP/1.1", ErrMalformed, clip(version))
	}
	return target, nil
}

// headerField splits "name: value", trimming the value's optional white
// space. The name must be a token followed at once by the colon (RFC 9112
// 5.1: a server must refuse white space there); a line starting with white
// space is obsolete line folding, refused; so is a CR, LF or NUL in the
// value.
func headerField(line []byte) (name, value []byte, err error) {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return nil, nil, fmt.Errorf("%w: header line without a name and colon", ErrMalformed)
	}
	name = line[:colon]
	for _, c := range name {
		if !isTchar(c) {
			return nil, nil, fmt.Errorf("%w: byte %#02x in a header name", ErrMalformed, c)
		}
	}
	value = line[colon+1:]
	for _, c := range value {
		if c == 0 || c == '\r' || c == '\n' {
			return nil, nil, fmt.Errorf("%w: byte %#02x in a header value", ErrMalformed, c)
		}
	}
	return name, bytes.Trim(value, " \t"), nil
}

// queryParam returns the first value of parameter name in target's query
// (after '?', before any '#'), percent-decoded ('+' is a space). A value
// with a bad escape is kept as sent.
func queryParam(target []byte, name string) ([]byte, bool) {
	q := bytes.IndexByte(target, '?')
	if q < 0 {
		return nil, false
	}
	query := target[q+1:]
	if h := bytes.IndexByte(query, '#'); h >= 0 {
		query = query[:h]
	}
	for len(query) > 0 {
		var pair []byte
		pair, query, _ = bytes.Cut(query, []byte("&"))
		k, v, _ := bytes.Cut(pair, []byte("="))
		if string(k) == name {
			return unescape(v), true
		}
	}
	return nil, false
}

// unescape percent-decodes v; it allocates only when v has an escape.
func unescape(v []byte) []byte {
	if bytes.IndexByte(v, '%') < 0 && bytes.IndexByte(v, '+') < 0 {
		return v
	}
	out := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '+':
			out = append(out, ' ')
		case c == '%':
			if i+2 >= len(v) || unhex(v[i+1]) < 0 || unhex(v[i+2]) < 0 {
				return v
			}
			out = append(out, byte(unhex(v[i+1])<<4|unhex(v[i+2])))
			i += 2
		default:
			out = append(out, c)
		}
	}
	return out
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// cookieValue returns the value of cookie name in a Cookie header's value
// ("a=1; b=2"), without the double quotes a value may be written in.
func cookieValue(header []byte, name string) ([]byte, bool) {
	for len(header) > 0 {
		var pair []byte
		pair, header, _ = bytes.Cut(header, []byte(";"))
		pair = bytes.Trim(pair, " \t")
		k, v, ok := bytes.Cut(pair, []byte("="))
		if !ok || string(k) != name {
			continue
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		return v, true
	}
	return nil, false
}

// forwardedFor reads the hops of X-Forwarded-For (client first, each proxy
// appending the address it got the request from) from the right, skipping
// trusted proxies: the first hop that is not one is the client as the
// nearest untrusted party saw it, which no client can forge. Only a
// trusted peer's header counts: anyone else could write anything.
func forwardedFor(hops []byte, peer netip.Addr, trust []netip.Prefix) (Result, error) {
	if !Trusted(trust, peer) {
		return Result{XFFIgnored: true}, nil
	}
	var last netip.Addr
	for len(hops) > 0 {
		i := bytes.LastIndexByte(hops, ',')
		hop := bytes.Trim(hops[i+1:], " \t")
		hops = hops[:max(i, 0)]
		if i < 0 {
			hops = nil
		}
		if len(hop) == 0 {
			continue
		}
		a, ok := parseHop(hop)
		if !ok {
			return Result{}, fmt.Errorf("%w: X-Forwarded-For hop %q is not an IP address", ErrMalformed, clip(hop))
		}
		last = a
		if !Trusted(trust, a) {
			break
		}
	}
	if !last.IsValid() {
		return Result{}, nil
	}
	// Every hop trusted: the leftmost is the client (last holds it).
	return Result{Key: last.String(), Addr: last}, nil
}

// parseHop reads an address, with or without a port ("192.0.2.1",
// "192.0.2.1:443", "2001:db8::1", "[2001:db8::1]:443"), unmapped and
// without a zone.
func parseHop(b []byte) (netip.Addr, bool) {
	if len(b) > 64 {
		return netip.Addr{}, false
	}
	s := string(b)
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil {
			return a.Unmap().WithZone(""), true
		}
	}
	return netip.Addr{}, false
}

// Trusted reports whether a (unmapped, zone dropped) is in one of the
// prefixes. The zero address (a unix-socket peer) is never trusted: a
// unix listener's peers have no address to check.
func Trusted(trust []netip.Prefix, a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap().WithZone("")
	for _, p := range trust {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// isTchar reports whether c may appear in an HTTP token (RFC 9110 5.6.2).
func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return c < 0x80 && strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// clip keeps error messages short whatever a client sent.
func clip(b []byte) string {
	if len(b) > 32 {
		return string(b[:32]) + "…"
	}
	return string(b)
}
