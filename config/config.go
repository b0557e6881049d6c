package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/BurntSushi/toml"

	"github.com/powerhouse/powerhouse/affinity"
)

// DefaultPath is where an installed house keeps its configuration.
const DefaultPath = "/etc/powerhouse/powerhouse.toml"

// Limits that keep generated names and paths within what systemd and the
// kernel accept.
const (
	MaxAmount = 1024 // instances per group
	// MaxGroups bounds the [[worker]] tables: each makes up to four unit
	// files, and install must be able to list every file it writes in
	// its manifest (units.MaxManifestEntries, 10,000): a house of 10,000
	// groups was installed once and could then be neither reinstalled
	// nor uninstalled.
	MaxGroups    = 1000
	MaxNameLen   = 32   // group name; keeps /run/powerhouse/<group>/<n>.sock under 108 bytes
	maxUnixPath  = 107  // sun_path without the terminating NUL
	maxTextBytes = 4096 // any single string value
)

// Type says how a group's workers get connections.
type Type string

const (
	// Cluster workers get the group's sockets: dispatched by the supervisor
	// when the group is sticky, shared among the instances otherwise.
	Cluster Type = "cluster"
	// Child workers run without any socket from PowerHouse.
	Child Type = "child"
)

// Dispatch says who picks the instance of a sticky group's connection.
type Dispatch string

const (
	// Handoff: the supervisor accepts every connection and passes it to
	// the instance's hand-off socket (the default).
	Handoff Dispatch = "handoff"
	// Kernel: every instance listens on the group's addresses itself, in
	// one SO_REUSEPORT group, and the kernel picks the socket (an eBPF
	// sk_reuseport program the supervisor loads): the supervisor is out
	// of the data path, and the worker needs only plain socket activation.
	Kernel Dispatch = "kernel"
)

// Config is a validated PowerHouse configuration.
type Config struct {
	// File is the absolute path the configuration was read from, or the
	// name given to Parse.
	File    string
	Title   string
	Amount  int
	Verbose bool
	// Prepare is nil when the file has no [prepare] table.
	Prepare *Prepare
	// Health is the address of the house's health endpoint (health),
	// which a front load balancer checks and `powerhouse drain` makes
	// fail; nil when the file has none. Its Name is unused.
	Health *Listener
	// Metrics is the TCP (or unix) address of the house's metrics
	// endpoint (metrics), a socket unit serving every group's metrics
	// merged; nil when the file has none. Its Name is unused.
	Metrics *Listener
	Workers []Worker
	// Warnings are settings the file asks for that generation had to work
	// around (file:line: key: what and why), in file order. generate,
	// verify and install print them.
	Warnings []*Error

	loc *locator // where each key is written, for WorkerError; nil when not made by Parse
}

// WorkerError returns a problem with key ("service.group") of the group
// c.Workers[i], on the line the key is written on, as Parse reports its
// own: for checks only a caller can make, such as whether a user exists on
// the system a house is installed on. Line is that of the enclosing table
// when the key is not written, 0 when c was not made by Parse.
func (c *Config) WorkerError(i int, key, format string, args ...any) *Error {
	at := "worker[" + strconv.Itoa(i) + "]." + key
	e := &Error{File: c.File, Key: displayKey(at), Msg: fmt.Sprintf(format, args...)}
	if c.loc != nil {
		e.Line = c.loc.line(at)
	}
	return e
}

// Prepare is the house's hook that runs once before any worker starts.
type Prepare struct {
	// Exec is the command line, split into words.
	Exec []string
}

// Worker is one group of identical worker instances.
type Worker struct {
	Name       string
	Title      string
	Exec       []string
	Amount     int
	Reloadable bool
	Type       Type
	Sticky     bool
	// Dispatch is how a sticky group's connections reach the instances:
	// Handoff (the default, also for groups that are not sticky, where it
	// means nothing) or Kernel.
	Dispatch Dispatch
	Listen   []Listener
	// NotifyReady says the workers report readiness (READY=1) to systemd.
	// It defaults to true for cluster groups, false for child groups.
	NotifyReady bool
	// Service holds systemd settings for the workers ([worker.service]).
	Service Service
	// Config is the group's configuration, passed to workers as JSON.
	// It is never nil.
	Config map[string]any
	// ReloadSignal is how the workers take a new configuration: "" (they
	// are restarted one at a time) or ReloadSIGHUP (reload_signal).
	ReloadSignal string
	// PublicConfig lists the Config keys whose values may appear in the
	// journal (public_config); the others are secrets.
	PublicConfig []string
	// Affinity is what a sticky group's dispatcher routes a connection by
	// (affinity): the client's address (the zero value, "source") or a key
	// in the first HTTP/1.x request, which it peeks without consuming it.
	// A key is refused on a group that is not sticky, in kernel dispatch.
	Affinity affinity.Spec
	// TrustedProxies are the proxies whose X-Forwarded-For is honoured
	// (trusted_proxies), for affinity = "header:X-Forwarded-For".
	TrustedProxies []netip.Prefix
	// Fallback is how a connection without a key is placed (fallback).
	Fallback Fallback
	// BalanceFactor bounds each instance's open connections to this many
	// times the average (balance_factor); 0 means no bound.
	BalanceFactor float64
}

// Fallback is how a key-affinity group places a connection without a key.
type Fallback uint8

const (
	// FallbackSource places it by the client's address (the default).
	FallbackSource Fallback = iota
	// FallbackSpread places it on the instance with the fewest open
	// connections, so that first requests from behind one NAT spread out.
	FallbackSpread
)

func (f Fallback) String() string {
	if f == FallbackSpread {
		return "spread"
	}
	return "source"
}

// MaxBalanceFactor bounds balance_factor: past it the bound never binds.
const MaxBalanceFactor = 100

// Listener is one public listening socket of a group.
type Listener struct {
	// Name identifies the listener in hand-off headers. It defaults to
	// Address.
	Name string
	// Network is "tcp" or "unix".
	Network string
	// Address is the normalised address: "0.0.0.0:9999", "[::]:9999",
	// ":9999" (every address, IPv4 and IPv6) or an absolute unix path.
	Address string
	// ProxyProtocol says that clients send a PROXY protocol v1 or v2
	// header first, whose source address is the client's.
	ProxyProtocol bool
	// ProxyFrom lists the peers trusted to send that header (proxy_from):
	// a single address is a /32 or /128 prefix, IPv4-mapped IPv6 ones are
	// written as IPv4. It is never empty on a TCP listener with
	// ProxyProtocol, and always empty otherwise.
	ProxyFrom []netip.Prefix
	// SocketUser, SocketGroup and SocketMode own a unix listener's socket
	// file (SocketUser=, SocketGroup=, SocketMode=): who may connect. ""
	// means systemd's default (root, and mode 0666). SocketMode is octal
	// ("0660"); it is required on a unix listener with ProxyProtocol.
	SocketUser  string
	SocketGroup string
	SocketMode  string
}

// Port returns the TCP port of l, or 0 for a unix socket.
func (l Listener) Port() int {
	if l.Network != "tcp" {
		return 0
	}
	i := strings.LastIndexByte(l.Address, ':')
	p, _ := strconv.Atoi(l.Address[i+1:])
	return p
}

// KernelDispatch reports whether the kernel picks the instance of each of
// w's connections (dispatch = "kernel").
func (w *Worker) KernelDispatch() bool { return w.Sticky && w.Dispatch == Kernel }

// Shares reports whether the instances of w share the group's sockets.
func (w *Worker) Shares() bool { return w.Type == Cluster && !w.Sticky && len(w.Listen) > 0 }

// Worker returns the group called name, or nil.
func (c *Config) Worker(name string) *Worker {
	for i := range c.Workers {
		if c.Workers[i].Name == name {
			return &c.Workers[i]
		}
	}
	return nil
}

// ConfigJSON returns the group's configuration as indented JSON.
func (w *Worker) ConfigJSON() ([]byte, error) {
	b, err := json.MarshalIndent(w.Config, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", w.Name, err)
	}
	return append(b, '\n'), nil
}

// Error is one problem in a configuration file.
type Error struct {
	File string
	Line int    // 0 when unknown
	Key  string // dotted key path, "" for the file as a whole
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem found in one file, in line order. It is
// returned as the error of Load and Parse; errors.As reaches it.
type ErrorList []*Error

func (l ErrorList) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Bounds on a configuration file. Every verb and the boot-time generator
// read it, so a hostile or mistaken file (a device, a generated monster)
// must fail fast: the TOML decoder's time grows with the square of the
// nesting (8,000 nested inline tables, 32 KB, take 13 s and gigabytes),
// and a real configuration is a few kilobytes, nested a few levels.
const (
	MaxFileSize = 1 << 20 // bytes
	MaxNesting  = 64      // tables, arrays, inline tables and dotted key parts, one inside another
)

// ReadFile reads the configuration file at path, at most MaxFileSize
// bytes: a larger file, or an endless one (/dev/zero), is an error
// naming the file.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, tooLarge(path)
	}
	return data, nil
}

// tooLarge is the problem of a file over MaxFileSize: a configuration
// error (exit status 2), as file: what is wrong.
func tooLarge(file string) ErrorList {
	return ErrorList{{File: file, Msg: fmt.Sprintf("larger than %d bytes: not a PowerHouse configuration", MaxFileSize)}}
}

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := ReadFile(path)
	var l ErrorList
	if errors.As(err, &l) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	return Parse(path, data)
}

// Parse validates the TOML document data, read from file (used in
// messages). Every problem is reported, as an ErrorList.
func Parse(file string, data []byte) (*Config, error) {
	if len(data) > MaxFileSize {
		return nil, tooLarge(file)
	}
	if line := tooDeep(data); line > 0 {
		return nil, ErrorList{{File: file, Line: line, Msg: fmt.Sprintf("nested more than %d levels deep (tables, arrays and dotted keys inside one another)", MaxNesting)}}
	}
	p := &parser{file: file, loc: newLocator(data)}
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, ErrorList{{File: file, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}}
		}
		return nil, ErrorList{{File: file, Msg: err.Error()}}
	}
	if !utf8.Valid(data) {
		p.errf("", "file is not valid UTF-8")
	}
	c := p.config(raw)
	if len(p.errs) > 0 {
		sort.SliceStable(p.errs, func(i, j int) bool { return p.errs[i].Line < p.errs[j].Line })
		return nil, p.errs
	}
	c.Warnings = p.warns
	c.loc = p.loc
	return c, nil
}

type parser struct {
	file  string
	loc   *locator
	errs  ErrorList
	warns []*Error
}

// warnf records something the file asks for that generation works
// around, with the key at path p.
func (p *parser) warnf(at, format string, args ...any) {
	p.warns = append(p.warns, &Error{File: p.file, Line: p.loc.line(at), Key: displayKey(at), Msg: fmt.Sprintf(format, args...)})
}

// errf records a problem with the key at path p ("worker[0].amount").
func (p *parser) errf(at, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: p.loc.line(at), Key: displayKey(at), Msg: fmt.Sprintf(format, args...)})
}

// displayKey turns "worker[1].listen" into the key a user wrote: "worker.listen".
var indexRE = regexp.MustCompile(`\[\d+\]`)

func displayKey(p string) string { return indexRE.ReplaceAllString(p, "") }

var (
	topKeys     = []string{"title", "amount", "verbose", "health", "metrics", "prepare", "worker"}
	prepareKeys = []string{"exec"}
	workerKeys  = []string{"name", "title", "exec", "amount", "reloadable", "type", "sticky", "listen", "notify", "service", "config", "reload_signal", "public_config", "dispatch", "affinity", "trusted_proxies", "fallback", "balance_factor"}
	listenKeys  = []string{"address", "proxy_protocol", "proxy_from", "name", "socket_user", "socket_group", "socket_mode"}
	// NameRE is what a group name may be: it becomes part of unit names
	// (powerhouse@NAME.service, powerhouse-NAME@.service) and of paths
	// (/run/powerhouse/NAME/), so it is limited to characters that need no
	// escaping in either, starts with a letter, and has no "@", "." or "/".
	NameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)
)

// reserved group names: they would collide with the house's own units.
var reserved = map[string]bool{"prepare": true, "proxy": true}

func (p *parser) unknown(prefix string, m map[string]any, allowed []string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !contains(allowed, k) {
			at := k
			if prefix != "" {
				at = prefix + "." + k
			}
			p.errf(at, "unknown key (allowed: %s)", strings.Join(allowed, ", "))
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (p *parser) config(raw map[string]any) *Config {
	p.unknown("", raw, topKeys)
	c := &Config{File: p.file, Title: "PowerHouse", Amount: runtime.NumCPU()}
	if v, ok := raw["title"]; ok {
		c.Title = p.text("title", v)
	}
	if v, ok := raw["amount"]; ok {
		c.Amount = p.amount("amount", v)
	}
	if v, ok := raw["verbose"]; ok {
		c.Verbose = p.boolean("verbose", v)
	}
	if v, ok := raw["prepare"]; ok {
		m, ok := v.(map[string]any)
		if !ok {
			p.errf("prepare", "must be a table ([prepare]), not %s", typeName(v))
		} else {
			p.unknown("prepare", m, prepareKeys)
			c.Prepare = &Prepare{}
			if e, ok := m["exec"]; ok {
				c.Prepare.Exec = p.command("prepare.exec", e)
			} else {
				p.errf("prepare", "missing key exec")
			}
		}
	}
	if v, ok := raw["health"]; ok {
		if l, ok := p.address("health", v); ok {
			c.Health = &l
		}
	}
	if v, ok := raw["metrics"]; ok {
		if l, ok := p.address("metrics", v); ok {
			c.Metrics = &l
			if c.Health != nil && conflicts(l, *c.Health) {
				p.errf("metrics", "address %s is already the health endpoint's (health, line %d)", l.Address, p.loc.line("health"))
			}
		}
	}
	v, ok := raw["worker"]
	if !ok {
		p.errf("", "no [[worker]] table: a house needs at least one worker group")
		return c
	}
	list, ok := v.([]map[string]any)
	if !ok {
		p.errf("worker", "must be an array of tables ([[worker]]), not %s", typeName(v))
		return c
	}
	if len(list) > MaxGroups {
		p.errf("worker["+strconv.Itoa(MaxGroups)+"]", "%d groups, more than %d: a house of that size is more than one machine's (see docs/scaling.md)", len(list), MaxGroups)
		return c
	}
	names := map[string]string{}
	type seen struct {
		l  Listener
		at string
	}
	var bound []seen
	for i, m := range list {
		at := "worker[" + strconv.Itoa(i) + "]"
		w := p.worker(at, m, c)
		if w.Name != "" {
			if _, dup := names[w.Name]; dup {
				p.errf(at+".name", "duplicate group name %q (also at line %d)", w.Name, p.loc.line(names[w.Name]))
			} else {
				names[w.Name] = at + ".name"
			}
		}
		for _, l := range w.Listen {
			if c.Health != nil && conflicts(l, *c.Health) {
				p.errf(at+".listen", "address %s is already the health endpoint's (health, line %d)", l.Address, p.loc.line("health"))
			}
			if c.Metrics != nil && conflicts(l, *c.Metrics) {
				p.errf(at+".listen", "address %s is already the metrics endpoint's (metrics, line %d)", l.Address, p.loc.line("metrics"))
			}
			for _, b := range bound {
				if conflicts(l, b.l) {
					p.errf(at+".listen", "address %s is already listened on (line %d)", l.Address, p.loc.line(b.at))
					break
				}
			}
			bound = append(bound, seen{l, at + ".listen"})
		}
		c.Workers = append(c.Workers, w)
	}
	return c
}

// conflicts reports whether two listeners cannot both bind: the same unix
// path, or the same port where one address covers the other (":p" takes
// every address; "0.0.0.0:p" every IPv4 one; "[::]:p", bound IPv6-only,
// every IPv6 one).
func conflicts(a, b Listener) bool {
	if a.Network != b.Network {
		return false
	}
	if a.Network == "unix" {
		return a.Address == b.Address
	}
	if a.Port() != b.Port() {
		return false
	}
	if strings.HasPrefix(a.Address, ":") || strings.HasPrefix(b.Address, ":") {
		return true
	}
	x, y := netip.MustParseAddrPort(a.Address).Addr(), netip.MustParseAddrPort(b.Address).Addr()
	return x.Is4() == y.Is4() && (x == y || x.IsUnspecified() || y.IsUnspecified())
}

func (p *parser) worker(at string, m map[string]any, c *Config) Worker {
	p.unknown(at, m, workerKeys)
	w := Worker{Title: c.Title, Amount: c.Amount, Reloadable: true, Type: Cluster, Dispatch: Handoff, Service: defaultService(), Config: map[string]any{}}
	if v, ok := m["name"]; ok {
		w.Name = p.text(at+".name", v)
		switch {
		case w.Name == "": // reported by text
		case len(w.Name) > MaxNameLen:
			p.errf(at+".name", "%q is longer than %d characters", w.Name, MaxNameLen)
			w.Name = ""
		case !NameRE.MatchString(w.Name):
			p.errf(at+".name", "%q is not a valid group name: use lower-case letters, digits, '-' and '_', starting with a letter (it becomes part of unit names and paths)", w.Name)
			w.Name = ""
		case reserved[w.Name]:
			p.errf(at+".name", "%q is reserved (powerhouse-%s* names the house's own units)", w.Name, w.Name)
			w.Name = ""
		}
	} else {
		p.errf(at, "missing key name")
	}
	if v, ok := m["title"]; ok {
		w.Title = p.text(at+".title", v)
	}
	if v, ok := m["exec"]; ok {
		w.Exec = p.command(at+".exec", v)
	} else {
		p.errf(at, "missing key exec")
	}
	if v, ok := m["amount"]; ok {
		w.Amount = p.amount(at+".amount", v)
	}
	if v, ok := m["reloadable"]; ok {
		w.Reloadable = p.boolean(at+".reloadable", v)
	}
	if v, ok := m["type"]; ok {
		s, _ := v.(string)
		switch Type(s) {
		case Cluster, Child:
			w.Type = Type(s)
		default:
			if _, isStr := v.(string); isStr {
				p.errf(at+".type", "%q is not a worker type: use \"cluster\" or \"child\"", s)
			} else {
				p.errf(at+".type", "must be a string (\"cluster\" or \"child\"), not %s", typeName(v))
			}
		}
	}
	if v, ok := m["sticky"]; ok {
		w.Sticky = p.boolean(at+".sticky", v)
	}
	w.NotifyReady = w.Type == Cluster
	if v, ok := m["notify"]; ok {
		w.NotifyReady = p.boolean(at+".notify", v)
	}
	if v, ok := m["listen"]; ok {
		w.Listen = p.listeners(at+".listen", v)
	}
	if v, ok := m["service"]; ok {
		w.Service = p.service(at+".service", v)
	}
	p.privateTmp(at, &w)
	p.jit(at, &w)
	if v, ok := m["config"]; ok {
		if t, ok := v.(map[string]any); ok {
			w.Config = p.jsonable(at+".config", t).(map[string]any)
		} else {
			p.errf(at+".config", "must be a table ([worker.config]), not %s", typeName(v))
		}
	}
	if v, ok := m["reload_signal"]; ok {
		w.ReloadSignal = p.reloadSignal(at+".reload_signal", v)
	}
	if v, ok := m["public_config"]; ok {
		w.PublicConfig = p.publicConfig(at+".public_config", v)
	}
	switch {
	case w.Type == Child && len(w.Listen) > 0:
		p.errf(at+".listen", "a %q worker gets no sockets: remove listen or use type = \"cluster\"", Child)
	case w.Type == Child && w.Sticky:
		p.errf(at+".sticky", "a %q worker gets no connections to dispatch: remove sticky or use type = \"cluster\"", Child)
	case w.Sticky && len(w.Listen) == 0:
		if _, ok := m["listen"]; !ok {
			p.errf(at+".sticky", "a sticky group needs listen addresses")
		}
	}
	if v, ok := m["dispatch"]; ok {
		p.dispatch(at, v, &w)
	}
	p.affinity(at, m, &w)
	return w
}

// affinity reads the keys that say how a sticky group's dispatcher places
// connections (affinity, trusted_proxies, fallback, balance_factor) and
// refuses a key affinity where the dispatcher cannot peek the request: a
// group that is not sticky (the kernel spreads its connections), kernel
// dispatch (the kernel picks the instance before a byte arrives). A TLS
// listener cannot be configured here (workers terminate TLS themselves):
// the dispatcher would peek ciphertext, refuse it as malformed and place
// the connection by the fallback; the README says so.
func (p *parser) affinity(at string, m map[string]any, w *Worker) {
	keyAt := ""
	if v, ok := m["affinity"]; ok {
		keyAt = at + ".affinity"
		s, isStr := v.(string)
		if !isStr {
			p.errf(keyAt, "must be a string (\"source\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"), not %s", typeName(v))
		} else if bad := badText(s); bad != "" {
			p.errf(keyAt, "%s", bad)
		} else if sp, err := affinity.Parse(s); err != nil {
			p.errf(keyAt, "%v", err)
		} else {
			w.Affinity = sp
		}
	}
	if v, ok := m["trusted_proxies"]; ok {
		tp := at + ".trusted_proxies"
		if !w.Affinity.XFF() {
			p.errf(tp, "only means something with affinity = \"header:X-Forwarded-For\": add it, or remove trusted_proxies")
		} else {
			w.TrustedProxies = p.prefixes(tp, v, "proxies", "trusted_proxies = [\"10.0.0.5\"]")
		}
	} else if w.Affinity.XFF() {
		p.errf(keyAt, "needs trusted_proxies: list the proxies that set X-Forwarded-For, e.g. trusted_proxies = [\"10.0.0.5\"]; any other peer could write any address in it")
	}
	if v, ok := m["fallback"]; ok {
		fa := at + ".fallback"
		switch s, _ := v.(string); {
		case !w.Affinity.IsKey():
			p.errf(fa, "only means something with a key affinity (affinity = \"query:NAME\", ...): every connection has a source address")
		case s == "source":
			w.Fallback = FallbackSource
		case s == "spread":
			w.Fallback = FallbackSpread
		default:
			if _, isStr := v.(string); isStr {
				p.errf(fa, "%q is not a fallback: use \"source\" or \"spread\"", s)
			} else {
				p.errf(fa, "must be a string (\"source\" or \"spread\"), not %s", typeName(v))
			}
		}
	}
	if v, ok := m["balance_factor"]; ok {
		bf := at + ".balance_factor"
		var f float64
		switch x := v.(type) {
		case float64:
			f = x
		case int64:
			f = float64(x)
		default:
			p.errf(bf, "must be a number greater than 1, e.g. 1.25, not %s", typeName(v))
			return
		}
		switch {
		case !w.Sticky || w.Dispatch == Kernel:
			p.errf(bf, "only applies to a sticky group in hand-off dispatch: it bounds the connections the dispatcher hands each instance")
		case !(f > 1) || f > MaxBalanceFactor:
			p.errf(bf, "%v is out of range: use a number greater than 1 and at most %d (1.25 lets an instance hold a quarter more than the average)", f, MaxBalanceFactor)
		default:
			w.BalanceFactor = f
		}
	}
	if !w.Affinity.IsKey() {
		return
	}
	switch {
	case !w.Sticky:
		p.errf(keyAt, "%q needs a sticky group (sticky = true): the instances of a group that is not sticky accept their connections themselves, and nothing reads the request to route it", w.Affinity)
	case w.Dispatch == Kernel:
		p.errf(keyAt, "%q cannot be used with dispatch = %q: the kernel picks the instance before the request arrives; keep dispatch = %q for this group, or affinity = \"source\"", w.Affinity, Kernel, Handoff)
	case w.Affinity.XFF() && len(w.Listen) > 0 && !slices.ContainsFunc(w.Listen, func(l Listener) bool { return l.Network == "tcp" }):
		// Trust is by peer address, and a unix socket's peers have none.
		p.errf(keyAt, "%q is honoured only from a peer in trusted_proxies, and the peers of a unix socket have no address: with a proxy on a unix socket, route by a header it sets (affinity = \"header:NAME\")", w.Affinity)
	}
}

// dispatch reads the dispatch key of the group w and refuses kernel mode
// where the kernel cannot pick the instance.
func (p *parser) dispatch(at string, v any, w *Worker) {
	at += ".dispatch"
	s, isStr := v.(string)
	switch Dispatch(s) {
	case Handoff:
		w.Dispatch = Handoff
		return
	case Kernel:
	default:
		if isStr {
			p.errf(at, "%q is not a dispatch mode: use %q or %q", s, Handoff, Kernel)
		} else {
			p.errf(at, "must be a string (%q or %q), not %s", Handoff, Kernel, typeName(v))
		}
		return
	}
	if !w.Sticky {
		p.errf(at, "%q only applies to a sticky group (sticky = true): the instances of a group that is not sticky already share its sockets, and the kernel spreads connections over them", Kernel)
		return
	}
	for _, l := range w.Listen {
		switch {
		case l.ProxyProtocol:
			// The kernel picks the socket from the packet's source address
			// before anything is read; behind a PROXY load balancer that is
			// the balancer's, and the client's is inside the stream.
			p.errf(at, "%q cannot serve listener %q with proxy_protocol = true: the client's address is inside the stream (the PROXY header), which the kernel does not read when it picks the instance; keep dispatch = %q for this group", Kernel, l.Name, Handoff)
			return
		case l.Network == "unix":
			p.errf(at, "%q cannot serve unix socket %s: only TCP listening sockets can share an address (SO_REUSEPORT), one per instance; keep dispatch = %q for this group", Kernel, l.Address, Handoff)
			return
		}
	}
	// Beside an IPv6 address the units bind IPv6-only, and a port alone
	// becomes two sockets (IPv4 and IPv6 wildcards): two reuseport groups
	// for one listener, which kernel steering keeps per listener.
	for _, l := range w.Listen {
		if strings.HasPrefix(l.Address, ":") && slices.ContainsFunc(w.Listen, func(x Listener) bool { return strings.HasPrefix(x.Address, "[") }) {
			p.errf(at, "%q cannot serve listener %q (port %d on every address) beside an IPv6 address: write \"0.0.0.0:%d\" and \"[::]:%d\" as two listeners", Kernel, l.Address, l.Port(), l.Port(), l.Port())
			return
		}
	}
	w.Dispatch = Kernel
}

// privateTmp keeps a worker that uses files under /tmp or /var/tmp from
// starting with PrivateTmp=, which replaces both with empty directories:
// systemd would fail to find the program, or the program its files.
//
//   - The program or working directory there: with private_tmp = true
//     written in the file the worker could never start, so that is an
//     error; otherwise PrivateTmp= is turned off, with a warning.
//   - A path there in any other word of exec (an argument, or inside an
//     sh -c script): PrivateTmp= is turned off with a warning, unless the
//     file says private_tmp = true (the path is then meant to be in the
//     worker's own /tmp, a pid file say).
func (p *parser) privateTmp(at string, w *Worker) {
	if len(w.Exec) == 0 || (w.Service.privateTmpSet && !w.Service.PrivateTmp) {
		return
	}
	var where, path string
	switch {
	case UnderTmp(w.Exec[0]):
		where, path = "exec", w.Exec[0]
	case UnderTmp(w.Service.WorkingDirectory):
		where, path = "service.working_directory", w.Service.WorkingDirectory
	}
	if path != "" {
		if w.Service.privateTmpSet {
			p.errf(at+".service.private_tmp", "the worker could not start: %s %s lies under %s, which private_tmp = true hides from it; remove private_tmp or move it out of %[3]s", where, path, tmpRoot(path))
			return
		}
		w.Service.PrivateTmp = false
		p.warnf(at+"."+where, "%s lies under %s, which a private /tmp would hide: group %s runs with PrivateTmp=no", path, tmpRoot(path), w.Name)
		return
	}
	if w.Service.privateTmpSet {
		return
	}
	for _, word := range w.Exec[1:] {
		if path := tmpPathIn(word); path != "" {
			w.Service.PrivateTmp = false
			p.warnf(at+".exec", "refers to %s under %s, which a private /tmp would hide: group %s runs with PrivateTmp=no (write private_tmp = true in [worker.service] if the path is meant to be in the worker's own /tmp)", path, tmpRoot(path), w.Name)
			return
		}
	}
}

// tmpWordRE finds an absolute path under /tmp or /var/tmp inside a word:
// an argument, "--opt=/tmp/x", or a path in an sh -c script.
var tmpWordRE = regexp.MustCompile(`(?:^|[^A-Za-z0-9_.~/-])((?:/var)?/tmp/[^\s'"\x60;&|<>()$]*)`)

// tmpPathIn returns the first path under /tmp/ or /var/tmp/ written in
// word, or "".
// jitRE matches the programs of runtimes that write machine code at run
// time: MemoryDenyWriteExecute= makes their mprotect(PROT_EXEC) fail, and
// they die at start (systemd.exec(5) names Node and Java). Node's os.cpus()
// also reads /proc/cpuinfo, which ProcSubset=pid hides (the cluster idiom
// then starts no worker).
var jitRE = regexp.MustCompile(`^(node|nodejs|npm|npx|yarn|pnpm|bun|deno|java|dotnet|pypy|pypy3|erl|elixir|mix)[0-9.]*$`)

// nodeRE is the part of jitRE that also needs /proc/cpuinfo.
var nodeRE = regexp.MustCompile(`^(node|nodejs|npm|npx|yarn|pnpm|bun|deno)[0-9.]*$`)

// jit relaxes the hardening a JIT runtime cannot run under, when the
// configuration did not choose: a program (or a word of an sh -c script)
// named like one turns MemoryDenyWriteExecute= off, and for Node-like
// runtimes ProcSubset= to "all", with a warning that says how to keep them.
func (p *parser) jit(at string, w *Worker) {
	if w.Service.mdweSet {
		return
	}
	for _, word := range w.Exec {
		for _, f := range strings.Fields(word) {
			prog := path.Base(f)
			if !jitRE.MatchString(prog) {
				continue
			}
			w.Service.MemoryDenyWriteExecute = false
			also := ""
			if nodeRE.MatchString(prog) && !w.Service.procSubsetSet {
				w.Service.ProcSubset = "all"
				also = " and ProcSubset=all (os.cpus() reads /proc/cpuinfo)"
			}
			p.warnf(at+".exec", "runs %s, a runtime that writes machine code as it runs (a JIT), which MemoryDenyWriteExecute= kills: group %s runs with MemoryDenyWriteExecute=no%s (write memory_deny_write_execute = true in [worker.service] to keep it)", prog, w.Name, also)
			return
		}
	}
}

func tmpPathIn(word string) string {
	m := tmpWordRE.FindStringSubmatch(word)
	if m == nil {
		return ""
	}
	return m[1]
}

func tmpRoot(path string) string {
	if strings.HasPrefix(path, "/var/tmp/") {
		return "/var/tmp"
	}
	return "/tmp"
}

func (p *parser) listeners(at string, v any) []Listener {
	var items []any
	switch t := v.(type) {
	case []any:
		items = t
	case []map[string]any:
		for _, m := range t {
			items = append(items, m)
		}
	default:
		items = []any{v}
	}
	if len(items) == 0 {
		p.errf(at, "is empty: give at least one address, or remove the key")
	}
	var out []Listener
	names := map[string]bool{}
	for i, it := range items {
		var l Listener
		var ok bool
		// Each listener has its own path, so that a problem in one written
		// on a line of its own is reported there.
		el := at + "[" + strconv.Itoa(i) + "]"
		if m, isTable := it.(map[string]any); isTable {
			if l, ok = p.listenerTable(el, m); !ok {
				continue
			}
		} else if l, ok = p.address(el, it); !ok {
			continue
		}
		if l.Name == "" {
			l.Name = l.Address
		}
		if len(l.Name) > 255 {
			p.errf(el+".name", "listener name longer than 255 bytes")
			continue
		}
		if names[l.Name] {
			p.errf(el, "listener %q appears twice", l.Name)
			continue
		}
		names[l.Name] = true
		out = append(out, l)
	}
	p.sameOwnership(at, out)
	return out
}

// Bounds of the PROXY trust list.
const maxProxyFrom = 256

// listenerTable reads a listener written as a table: an address and the
// keys that only a table can carry.
func (p *parser) listenerTable(at string, m map[string]any) (Listener, bool) {
	p.unknown(at, m, listenKeys)
	a, has := m["address"]
	if !has {
		p.errf(at, "a listener table needs an address key")
		return Listener{}, false
	}
	l, ok := p.address(at, a)
	if !ok {
		return Listener{}, false
	}
	if pp, has := m["proxy_protocol"]; has {
		l.ProxyProtocol = p.boolean(at+".proxy_protocol", pp)
	}
	if n, has := m["name"]; has {
		l.Name = p.text(at+".name", n)
	}
	_, hasFrom := m["proxy_from"]
	switch {
	case hasFrom && l.Network == "unix":
		p.errf(at+".proxy_from", "a unix socket has no peer address to check: say who may connect with socket_user, socket_group and socket_mode instead")
	case hasFrom && !l.ProxyProtocol:
		p.errf(at+".proxy_from", "only means something with proxy_protocol = true: add it, or remove proxy_from")
	case hasFrom:
		l.ProxyFrom = p.proxyFrom(at+".proxy_from", m["proxy_from"])
	case l.ProxyProtocol && l.Network == "tcp":
		// Configurations written before proxy_from existed land here:
		// any client could choose its source address (and instance).
		p.errf(at+".proxy_from", "required with proxy_protocol = true (listener %q): list the addresses of your load balancers, e.g. proxy_from = [\"10.0.0.5\"]; only they may then send a PROXY header", l.Address)
	}
	for _, k := range []struct {
		key string
		to  *string
		re  *regexp.Regexp
		use string
	}{
		{"socket_user", &l.SocketUser, userRE, "a user name or number"},
		{"socket_group", &l.SocketGroup, userRE, "a group name or number"},
		{"socket_mode", &l.SocketMode, socketModeRE, `an octal file mode such as "0660"`},
	} {
		v, has := m[k.key]
		if !has {
			continue
		}
		if l.Network != "unix" {
			p.errf(at+"."+k.key, "only applies to a unix socket listener: a TCP listener has no socket file")
			continue
		}
		s := p.text(at+"."+k.key, v)
		if s != "" && !k.re.MatchString(s) {
			p.errf(at+"."+k.key, "%q is not %s", s, k.use)
			continue
		}
		*k.to = s
	}
	if l.SocketMode != "" && len(l.SocketMode) == 3 {
		l.SocketMode = "0" + l.SocketMode
	}
	if l.ProxyProtocol && l.Network == "unix" && l.SocketMode == "" {
		p.errf(at+".socket_mode", "required with proxy_protocol = true (unix socket %q, which anyone may connect to by default and send a PROXY header): say who may, e.g. socket_group = \"haproxy\", socket_mode = \"0660\"", l.Address)
	}
	return l, true
}

// socketModeRE is a file mode for a socket: permission bits only, octal.
var socketModeRE = regexp.MustCompile(`^0?[0-7]{3}$`)

// proxyFrom reads the peers trusted to send PROXY headers: IP addresses
// and CIDR prefixes, IPv4 or IPv6.
func (p *parser) proxyFrom(at string, v any) []netip.Prefix {
	return p.prefixes(at, v, "load balancers", "proxy_from = [\"10.0.0.5\"]")
}

// prefixes reads a list of trusted addresses or CIDR prefixes (ParseTrusted).
func (p *parser) prefixes(at string, v any, who, example string) []netip.Prefix {
	list, ok := v.([]any)
	if !ok {
		p.errf(at, "must be an array of addresses or CIDR prefixes, e.g. [\"10.0.0.5\", \"192.0.2.0/24\"], not %s", typeName(v))
		return nil
	}
	if len(list) == 0 {
		p.errf(at, "is empty: list the addresses of your %s, e.g. %s", who, example)
		return nil
	}
	if len(list) > maxProxyFrom {
		p.errf(at, "has %d entries, more than %d: use CIDR prefixes", len(list), maxProxyFrom)
		return nil
	}
	var out []netip.Prefix
	seen := map[netip.Prefix]bool{}
	for _, x := range list {
		s, isStr := x.(string)
		if !isStr {
			p.errf(at, "entries must be strings, not %s", typeName(x))
			return nil
		}
		pf, err := ParseTrusted(s)
		if err != nil {
			p.errf(at, "%v", err)
			continue
		}
		if !seen[pf] {
			seen[pf] = true
			out = append(out, pf)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// ParseTrusted parses one proxy_from entry: an address ("192.0.2.7",
// "2001:db8::7") or a CIDR prefix ("10.0.0.0/8"). Host bits must be zero,
// zones are refused, IPv4-mapped IPv6 is turned into IPv4 (a dual-stack
// socket reports IPv4 peers mapped, the kernel's filters see IPv4), and a
// prefix that takes every address is refused: it would trust anyone.
func ParseTrusted(s string) (netip.Prefix, error) {
	if bad := badText(s); bad != "" {
		return netip.Prefix{}, fmt.Errorf("%q %s", s, bad)
	}
	var pf netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if pf, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or a CIDR prefix such as \"10.0.0.0/8\"", s)
		}
		if pf.Masked() != pf {
			return netip.Prefix{}, fmt.Errorf("%q has bits set after the prefix: write %s for the network, or %s alone for the address", s, pf.Masked(), pf.Addr())
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or a CIDR prefix such as \"10.0.0.0/8\" (no host names or zones)", s)
		}
		pf = netip.PrefixFrom(a, a.BitLen())
	}
	if a := pf.Addr(); a.Is4In6() && pf.Bits() >= 96 {
		pf = netip.PrefixFrom(a.Unmap(), pf.Bits()-96)
	}
	if pf.Bits() == 0 {
		return netip.Prefix{}, fmt.Errorf("%q trusts every address, which is what proxy_from exists to prevent: list your load balancers", s)
	}
	return pf, nil
}

// sameOwnership checks that the unix listeners that share a socket unit
// (the direct ones, and the PROXY ones) ask for the same owner and mode:
// systemd sets SocketUser=, SocketGroup= and SocketMode= per unit.
func (p *parser) sameOwnership(at string, ls []Listener) {
	first := map[bool]*Listener{}
	for i := range ls {
		l := &ls[i]
		if l.Network != "unix" {
			continue
		}
		f := first[l.ProxyProtocol]
		if f == nil {
			first[l.ProxyProtocol] = l
			continue
		}
		if f.SocketUser != l.SocketUser || f.SocketGroup != l.SocketGroup || f.SocketMode != l.SocketMode {
			kind := "without"
			if l.ProxyProtocol {
				kind = "with"
			}
			p.errf(at, "unix listeners %s and %s (both %s proxy_protocol) share a socket unit and must have the same socket_user, socket_group and socket_mode", f.Address, l.Address, kind)
			return
		}
	}
}

// address parses one listen address: a port (9999 or "9999"), ":port",
// "ipv4:port", "[ipv6]:port" or an absolute unix socket path.
func (p *parser) address(at string, v any) (Listener, bool) {
	var s string
	switch t := v.(type) {
	case int64:
		s = strconv.FormatInt(t, 10)
	case string:
		s = t
	default:
		p.errf(at, "address must be a string or a port number, not %s", typeName(v))
		return Listener{}, false
	}
	if bad := badText(s); bad != "" {
		p.errf(at, "address %q %s", s, bad)
		return Listener{}, false
	}
	if strings.HasPrefix(s, "/") {
		if len(s) > maxUnixPath {
			p.errf(at, "unix socket path %q is longer than %d bytes", s, maxUnixPath)
			return Listener{}, false
		}
		if filepath.Clean(s) != s || strings.ContainsAny(s, " \\%$\"'") {
			p.errf(at, "unix socket path %q must be clean and contain no spaces, quotes, '\\', '%%' or '$'", s)
			return Listener{}, false
		}
		return Listener{Network: "unix", Address: s}, true
	}
	if !strings.Contains(s, ":") {
		s = ":" + s
	}
	i := strings.LastIndexByte(s, ':')
	host, portStr := s[:i], s[i+1:]
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 || portStr != strconv.Itoa(port) {
		p.errf(at, "address %q: port must be a number from 1 to 65535", s)
		return Listener{}, false
	}
	if host == "" {
		return Listener{Network: "tcp", Address: ":" + portStr}, true
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		a, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !a.Is6() || a.Zone() != "" {
			p.errf(at, "address %q: %q is not an IPv6 address", s, host)
			return Listener{}, false
		}
		return Listener{Network: "tcp", Address: netip.AddrPortFrom(a, uint16(port)).String()}, true
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.Is4() {
		p.errf(at, "address %q: host must be an IPv4 address or an IPv6 address in brackets (systemd binds addresses, not names)", s)
		return Listener{}, false
	}
	return Listener{Network: "tcp", Address: netip.AddrPortFrom(a, uint16(port)).String()}, true
}

func (p *parser) text(at string, v any) string {
	s, ok := v.(string)
	if !ok {
		p.errf(at, "must be a string, not %s", typeName(v))
		return ""
	}
	if bad := badText(s); bad != "" {
		p.errf(at, "%s", bad)
		return ""
	}
	if s == "" {
		p.errf(at, "must not be empty")
		return ""
	}
	if strings.TrimSpace(s) != s {
		p.errf(at, "must not start or end with white space")
		return ""
	}
	if strings.HasSuffix(s, `\`) {
		p.errf(at, "must not end with a backslash (it would continue the unit file line)")
		return ""
	}
	return s
}

// badText says what makes s unfit for a unit file, or "".
func badText(s string) string {
	if len(s) > maxTextBytes {
		return fmt.Sprintf("is longer than %d bytes", maxTextBytes)
	}
	if !utf8.ValidString(s) {
		return "is not valid UTF-8"
	}
	for _, r := range s {
		if r == '\n' || r == '\r' {
			return "must not contain a line break"
		}
		if unicode.IsControl(r) {
			return fmt.Sprintf("must not contain control character %U", r)
		}
	}
	return ""
}

func (p *parser) amount(at string, v any) int {
	n, ok := v.(int64)
	if !ok {
		p.errf(at, "must be an integer, not %s", typeName(v))
		return 1
	}
	if n < 1 || n > MaxAmount {
		p.errf(at, "%d is out of range: use 1 to %d instances", n, MaxAmount)
		return 1
	}
	return int(n)
}

func (p *parser) boolean(at string, v any) bool {
	b, ok := v.(bool)
	if !ok {
		p.errf(at, "must be true or false, not %s", typeName(v))
	}
	return b
}

// command reads a command line: a string split into words like a shell
// does (quotes and backslashes; no variables, globs or operators), or an
// array of strings taken as the words.
func (p *parser) command(at string, v any) []string {
	var words []string
	switch t := v.(type) {
	case string:
		if bad := badText(t); bad != "" {
			p.errf(at, "%s", bad)
			return nil
		}
		w, err := SplitCommand(t)
		if err != nil {
			p.errf(at, "%v", err)
			return nil
		}
		words = w
	case []any:
		for _, x := range t {
			s, ok := x.(string)
			if !ok {
				p.errf(at, "array must hold strings, not %s", typeName(x))
				return nil
			}
			if bad := badText(s); bad != "" {
				p.errf(at, "word %q %s", s, bad)
				return nil
			}
			words = append(words, s)
		}
	default:
		p.errf(at, "must be a string or an array of strings, not %s", typeName(v))
		return nil
	}
	if len(words) == 0 || words[0] == "" {
		p.errf(at, "is empty: give the command to run")
		return nil
	}
	prog := words[0]
	switch {
	case strings.ContainsAny(prog[:1], "-@:+!|"):
		p.errf(at, "program %q must not start with %q", prog, prog[:1])
		return nil
	case strings.HasPrefix(prog, "/"):
		if filepath.Clean(prog) != prog {
			p.errf(at, "program path %q is not clean", prog)
			return nil
		}
	case strings.Contains(prog, "/"):
		// Relative to the configuration file, like paths in most tools'
		// configuration: "../bin/hello" next to a checked-out project.
		words[0] = filepath.Join(filepath.Dir(p.file), prog)
		if !filepath.IsAbs(words[0]) {
			p.errf(at, "program %q is relative, and the configuration's own path %q is not absolute", prog, p.file)
			return nil
		}
	case strings.ContainsAny(prog[:1], "-@:+!|"):
		p.errf(at, "program %q must not start with %q", prog, prog[:1])
		return nil
	}
	return words
}

// SplitCommand splits a command line into words the way a POSIX shell
// would for a simple command: white space separates words; single quotes
// keep everything; double quotes keep everything but \" \\ \$ \`; a
// backslash outside quotes escapes the next character. Shell syntax that
// would need a shell ($, `, |, ;, &, <, >, globbing) is not interpreted:
// those characters are taken literally.
func SplitCommand(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New("unterminated double quote")
			}
			inWord = true
		case c == '\\':
			if i+1 >= len(s) {
				return nil, errors.New("trailing backslash")
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// jsonable converts decoded TOML into values encoding/json writes the same
// way every time (dates become RFC 3339 strings).
func (p *parser) jsonable(at string, v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			out[k] = p.jsonable(at+"."+k, x)
		}
		return out
	case []map[string]any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = p.jsonable(at, x)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = p.jsonable(at, x)
		}
		return out
	case float64:
		if t != t || t > 1e308 || t < -1e308 {
			p.errf(at, "%v cannot be written as JSON", t)
			return nil
		}
		return t
	case time.Time: // also TOML's local dates and times
		return t.Format(time.RFC3339Nano)
	default:
		return v
	}
}

func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	default:
		return fmt.Sprintf("a %T", v)
	}
}

// Notify reports whether the group's workers tell systemd when they are
// ready (Type=notify), as the activation library does.
func (w *Worker) Notify() bool { return w.NotifyReady }
