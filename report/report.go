package report

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/powerhouse/powerhouse/handoff"
)

// Wire constants. docs/report.md is the reference.
const (
	// Magic opens every datagram: "PHRP" (PowerHouse RePort).
	Magic = "PHRP"
	// Version is the newest report version this package writes and reads.
	// It reads every version from 1 to Version and writes the lowest one
	// that carries the message: Hello, Draining and Closed are version 1,
	// DrainResult (added later) is version 2.
	Version = 2
	// MaxDatagramLen bounds every datagram of every version, present and
	// future: receivers read at most this many bytes, and a longer
	// datagram is malformed whatever its version.
	MaxDatagramLen = 4096
	// MaxReleaseLen bounds Hello.Release.
	MaxReleaseLen = 128
	// MaxHandoffVersions bounds how many hand-off header versions a Hello
	// may list.
	MaxHandoffVersions = 16

	// HelloInterval is how often a worker repeats its Hello while it
	// serves (package activation does), so that a supervisor that
	// restarted learns about the workers that outlived it. A supervisor
	// that has heard no Hello from an instance this long after either
	// started can take it for a worker that does not report (an older
	// library, or another language) and treat it conservatively.
	HelloInterval = 30 * time.Second

	// SocketEnv names the environment variable that gives a worker the
	// path of its group's report socket: <runtime dir>/<group>/report.sock,
	// set by the generated worker unit. Unset: the worker reports nothing.
	SocketEnv = "POWERHOUSE_REPORT_SOCKET"
)

// Offsets of the common header. Everything multi-byte is big-endian.
const (
	offMagic   = 0 // 4 bytes
	offVersion = 4 // 1 byte
	offKind    = 5 // 1 byte
	headerLen  = 6 // then the body of the kind

	helloFixed     = 4 + 1 + 1 // features, release length, hand-off version count
	closedLen      = 8         // the count
	drainResultLen = 8 + 8     // drained, cut
	// maxLen1 is the longest version-1 datagram, a Hello with the longest
	// release and every hand-off version.
	maxLen1 = headerLen + helloFixed + MaxReleaseLen + MaxHandoffVersions
)

// The longest version-1 datagram fits in the bound of every version
// (compile-time check); version 2 adds only DrainResult, which is shorter.
var _ [MaxDatagramLen - maxLen1]struct{}
var _ [maxLen1 - (headerLen + drainResultLen)]struct{}

// Kind says which message a datagram carries.
type Kind uint8

// The message kinds: 1 to 3 of version 1, 4 of version 2. A kind is
// written in the version that introduced it, and only that one.
const (
	KindHello       Kind = 1
	KindDraining    Kind = 2
	KindClosed      Kind = 3
	KindDrainResult Kind = 4
)

// version is the report version that carries kind k, 0 for no kind.
func (k Kind) version() uint8 {
	switch k {
	case KindHello, KindDraining, KindClosed:
		return 1
	case KindDrainResult:
		return 2
	}
	return 0
}

func (k Kind) String() string {
	switch k {
	case KindHello:
		return "hello"
	case KindDraining:
		return "draining"
	case KindClosed:
		return "closed"
	case KindDrainResult:
		return "drain result"
	}
	return "kind " + strconv.Itoa(int(k))
}

// Message is one report: a Hello, a Draining, a Closed or a DrainResult. Callers tell them
// apart with a type switch; no other type implements it.
type Message interface {
	// Kind is the message's kind byte.
	Kind() Kind
	// AppendBinary appends the encoded datagram to b. It fails, leaving b
	// as it was, when a field is out of bounds.
	AppendBinary(b []byte) ([]byte, error)
	message()
}

// Features is what a worker declares it supports, a bit set.
type Features uint32

const (
	// FeatureReloadOnSIGHUP: the worker re-reads its configuration on
	// SIGHUP and keeps running, so the supervisor may signal it instead of
	// restarting it.
	FeatureReloadOnSIGHUP Features = 1 << 0

	knownFeatures = FeatureReloadOnSIGHUP
)

// Has reports whether every feature of g is in f.
func (f Features) Has(g Features) bool { return f&g == g }

// String lists the features by name, unknown bits in hex: "reload-on-sighup",
// "reload-on-sighup|0x4", "none".
func (f Features) String() string {
	if f == 0 {
		return "none"
	}
	var names []string
	if f.Has(FeatureReloadOnSIGHUP) {
		names = append(names, "reload-on-sighup")
	}
	if u := f &^ knownFeatures; u != 0 {
		names = append(names, fmt.Sprintf("%#x", uint32(u)))
	}
	return strings.Join(names, "|")
}

// Hello is the first datagram a worker sends, and repeats every
// HelloInterval: which release of the library it runs, which hand-off
// header versions it understands, and what it supports. A receiver treats
// a repeated Hello from the same process as the same news.
type Hello struct {
	// Release is the worker library's release ("v0.3.0"; see Release): 1
	// to MaxReleaseLen bytes of printable ASCII without spaces.
	Release string
	// HandoffVersions are the hand-off header versions (package handoff)
	// the worker accepts: 1 to MaxHandoffVersions values from 1 to 255, in
	// increasing order.
	HandoffVersions []uint8
	// Features the worker supports. Bits this package does not know are
	// carried and decoded as they are, not refused: a declared capability
	// that the receiver does not know is one it will not use.
	Features Features
}

// Draining says the worker began to drain: it stopped accepting new
// connections (SIGTERM) and finishes those it has.
type Draining struct{}

// Closed counts the connections the worker closed since its previous
// Closed report; at least 1.
type Closed struct {
	Count uint64
}

// DrainResult is the last report of a draining worker, sent once its
// drain is over, just before it exits: how many of its connections ended
// on their own during the drain (requests that finished, idle keep-alives
// it closed, WebSockets and long-polls that ended before the deadline)
// and how many it still had at the drain deadline and closed. Both may be
// 0. It is a version-2 message.
type DrainResult struct {
	Drained uint64
	Cut     uint64
}

func (Hello) Kind() Kind       { return KindHello }
func (Draining) Kind() Kind    { return KindDraining }
func (Closed) Kind() Kind      { return KindClosed }
func (DrainResult) Kind() Kind { return KindDrainResult }
func (Hello) message()         {}
func (Draining) message()      {}
func (Closed) message()        {}
func (DrainResult) message()   {}

// NewHello returns this process's Hello: Release(), the hand-off header
// version of the linked handoff package, and features.
func NewHello(features Features) Hello {
	return Hello{Release: Release(), HandoffVersions: []uint8{handoff.Version}, Features: features}
}

// Compatible reports whether a supervisor that sends hand-off headers of
// version handoffVersion can hand connections to the worker that sent h:
// nil if h lists that version. The error matches ErrIncompatible and names
// both sides, e.g. "worker library v0.3.0 understands hand-off header
// versions [1]; this supervisor (v0.4.0) sends version 2". The
// supervisor's release is Release() of the calling process.
func (h Hello) Compatible(handoffVersion int) error {
	for _, v := range h.HandoffVersions {
		if int(v) == handoffVersion {
			return nil
		}
	}
	return fmt.Errorf("%w: worker library %s understands hand-off header versions %v; this supervisor (%s) sends version %d",
		ErrIncompatible, h.Release, h.HandoffVersions, Release(), handoffVersion)
}

// AppendBinary appends the encoded Hello datagram to b.
func (h Hello) AppendBinary(b []byte) ([]byte, error) {
	if err := h.validate(); err != nil {
		return b, fmt.Errorf("encode hello: %w", err)
	}
	b = append(b, Magic...)
	b = append(b, 1, byte(KindHello))
	b = binary.BigEndian.AppendUint32(b, uint32(h.Features))
	b = append(b, byte(len(h.Release)), byte(len(h.HandoffVersions)))
	b = append(b, h.Release...)
	return append(b, h.HandoffVersions...), nil
}

// AppendBinary appends the encoded Draining datagram to b.
func (Draining) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, Magic...)
	return append(b, 1, byte(KindDraining)), nil
}

// AppendBinary appends the encoded Closed datagram to b.
func (c Closed) AppendBinary(b []byte) ([]byte, error) {
	if c.Count == 0 {
		return b, errors.New("encode closed: count 0 (nothing to report)")
	}
	b = append(b, Magic...)
	b = append(b, 1, byte(KindClosed))
	return binary.BigEndian.AppendUint64(b, c.Count), nil
}

// AppendBinary appends the encoded DrainResult datagram (version 2) to b.
func (d DrainResult) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, Magic...)
	b = append(b, KindDrainResult.version(), byte(KindDrainResult))
	b = binary.BigEndian.AppendUint64(b, d.Drained)
	return binary.BigEndian.AppendUint64(b, d.Cut), nil
}

func (h Hello) validate() error {
	if err := checkRelease(h.Release); err != nil {
		return err
	}
	return checkHandoffVersions(h.HandoffVersions)
}

func checkRelease[S string | []byte](r S) error {
	if len(r) == 0 {
		return errors.New("empty release")
	}
	if len(r) > MaxReleaseLen {
		return fmt.Errorf("release is %d bytes, longer than %d", len(r), MaxReleaseLen)
	}
	for i := 0; i < len(r); i++ {
		if c := r[i]; c <= 0x20 || c >= 0x7f {
			return fmt.Errorf("byte %#02x in release: want printable ASCII without spaces", c)
		}
	}
	return nil
}

func checkHandoffVersions(vs []uint8) error {
	if len(vs) == 0 {
		return errors.New("no hand-off header version")
	}
	if len(vs) > MaxHandoffVersions {
		return fmt.Errorf("%d hand-off header versions, more than %d", len(vs), MaxHandoffVersions)
	}
	for i, v := range vs {
		if v == 0 {
			return errors.New("hand-off header version 0")
		}
		if i > 0 && v <= vs[i-1] {
			return fmt.Errorf("hand-off header versions %v are not in increasing order", vs)
		}
	}
	return nil
}

// ErrMalformed is matched (errors.Is) by every error Decode returns: the
// datagram is not a report this package understands. Receivers count such
// datagrams and drop them.
var ErrMalformed = errors.New("malformed report")

// ErrIncompatible is matched by the error of Hello.Compatible.
var ErrIncompatible = errors.New("incompatible worker")

// VersionError is the error for a datagram whose version is newer than
// this package reads: the sender runs a newer release. It matches
// ErrMalformed too.
type VersionError struct {
	// Version is the datagram's version.
	Version uint8
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("report datagram of version %d; this receiver (powerhouse %s) reads report versions 1 to %d: the sender runs a newer release",
		e.Version, Release(), Version)
}

// Is makes a VersionError match ErrMalformed.
func (e *VersionError) Is(target error) bool { return target == ErrMalformed }

// Decode decodes b, which must be exactly one datagram. Every field is
// checked: magic, version, kind, lengths (no byte may be left over) and
// the content of each field; only unknown Features bits are let through
// (see Hello.Features). A version newer than Version gives a
// *VersionError. Errors match ErrMalformed.
func Decode(b []byte) (Message, error) {
	if len(b) > MaxDatagramLen {
		return nil, fmt.Errorf("%w: datagram is %d bytes, longer than %d", ErrMalformed, len(b), MaxDatagramLen)
	}
	if len(b) < len(Magic) || string(b[offMagic:offMagic+len(Magic)]) != Magic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrMalformed, b[:min(len(b), len(Magic))])
	}
	if len(b) <= offVersion {
		return nil, fmt.Errorf("%w: no version byte", ErrMalformed)
	}
	switch v := b[offVersion]; {
	case v == 0:
		return nil, fmt.Errorf("%w: version 0", ErrMalformed)
	case v > Version:
		return nil, &VersionError{Version: v}
	}
	// Versions 1 and 2 share the header. Each kind has one layout, in the
	// version that introduced it: a kind in any other version is
	// malformed (a sender writes the lowest version that carries it), so
	// that every message has exactly one encoding. A later version that
	// changes a kind adds its layout here and keeps the older ones.
	if len(b) < headerLen {
		return nil, fmt.Errorf("%w: datagram is %d bytes, shorter than the %d-byte header", ErrMalformed, len(b), headerLen)
	}
	body := b[headerLen:]
	k := Kind(b[offKind])
	if v := k.version(); v != 0 && v != b[offVersion] {
		return nil, fmt.Errorf("%w: %s in a version-%d datagram; it is a version-%d message", ErrMalformed, k, b[offVersion], v)
	}
	switch k {
	case KindHello:
		h, err := decodeHello(body)
		if err != nil {
			return nil, fmt.Errorf("%w: hello: %w", ErrMalformed, err)
		}
		return h, nil
	case KindDraining:
		if len(body) != 0 {
			return nil, fmt.Errorf("%w: draining: %d bytes after the header, want none", ErrMalformed, len(body))
		}
		return Draining{}, nil
	case KindClosed:
		if len(body) != closedLen {
			return nil, fmt.Errorf("%w: closed: %d bytes after the header, want %d", ErrMalformed, len(body), closedLen)
		}
		n := binary.BigEndian.Uint64(body)
		if n == 0 {
			return nil, fmt.Errorf("%w: closed: count 0", ErrMalformed)
		}
		return Closed{Count: n}, nil
	case KindDrainResult:
		if len(body) != drainResultLen {
			return nil, fmt.Errorf("%w: drain result: %d bytes after the header, want %d", ErrMalformed, len(body), drainResultLen)
		}
		return DrainResult{Drained: binary.BigEndian.Uint64(body), Cut: binary.BigEndian.Uint64(body[8:])}, nil
	default:
		return nil, fmt.Errorf("%w: unknown message kind %d", ErrMalformed, uint8(k))
	}
}

func decodeHello(b []byte) (Hello, error) {
	if len(b) < helloFixed {
		return Hello{}, fmt.Errorf("%d bytes, shorter than the fixed %d", len(b), helloFixed)
	}
	features := Features(binary.BigEndian.Uint32(b))
	rn, hn := int(b[4]), int(b[5])
	rest := b[helloFixed:]
	if len(rest) != rn+hn {
		return Hello{}, fmt.Errorf("release length %d and %d hand-off versions but %d bytes follow", rn, hn, len(rest))
	}
	rel, vs := rest[:rn], rest[rn:]
	if err := checkRelease(rel); err != nil {
		return Hello{}, err
	}
	if err := checkHandoffVersions(vs); err != nil {
		return Hello{}, err
	}
	return Hello{Release: string(rel), HandoffVersions: slices.Clone(vs), Features: features}, nil
}

// release is the release this package reports, set at build time by the
// project's own binaries:
//
//	go build -ldflags "-X github.com/powerhouse/powerhouse/report.release=v0.4.0"
//
// Workers built by `go build` of their own module leave it empty: Release
// then reads the module version from the build information.
var release string

const modulePath = "github.com/powerhouse/powerhouse"

// buildRelease is computed once: the build information does not change.
var buildRelease = sync.OnceValue(func() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	if bi.Main.Path == modulePath {
		return bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path == modulePath {
			if d.Replace != nil && d.Replace.Version != "" {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return ""
})

// Release returns the release of PowerHouse this process was built with,
// the single place both sides name it: "v0.4.0" when the binary was built
// with the -X flag above (make build does), else the version of the
// powerhouse module in the build information (a worker depending on
// v0.3.0 reports "v0.3.0"; a build inside the repository "(devel)" or a
// pseudo-version), else "unknown". It is always a valid Hello.Release.
func Release() string {
	for _, r := range []string{release, buildRelease()} {
		if r != "" && checkRelease(r) == nil {
			return r
		}
	}
	return "unknown"
}

// Sender is who sent a datagram, as the kernel reports it
// (SCM_CREDENTIALS): process id, user id and group id, translated into the
// receiver's namespaces. The kernel fills it in from the sending process,
// which can claim only ids it holds (any, with CAP_SETUID/CAP_SETGID): the
// supervisor attributes the datagram to an instance by PID.
type Sender struct {
	PID int32
	UID uint32
	GID uint32
}

// ErrDescriptors is matched by the DatagramError of a datagram that
// carried file descriptors (SCM_RIGHTS): reports carry none. Every
// descriptor that arrived is closed.
var ErrDescriptors = errors.New("report datagram carries file descriptors")

// ErrNoCredentials is matched by the DatagramError of a datagram without
// sender credentials, which happens only when SO_PASSCRED was not set on
// the receiving socket when the datagram was sent.
var ErrNoCredentials = errors.New("report datagram without sender credentials (SO_PASSCRED not set on the socket?)")

// DatagramError is the error Receiver.Recv returns for one datagram it
// refused; the receiver goes on with the next. Err says why (see Recv).
type DatagramError struct {
	// Sender is the datagram's sender, the zero Sender when the kernel
	// reported none (ErrNoCredentials).
	Sender Sender
	Err    error
}

func (e *DatagramError) Error() string {
	if e.Sender == (Sender{}) {
		return "report: refused a datagram from an unknown sender: " + e.Err.Error()
	}
	return fmt.Sprintf("report: refused a datagram from pid %d (uid %d, gid %d): %v", e.Sender.PID, e.Sender.UID, e.Sender.GID, e.Err)
}

func (e *DatagramError) Unwrap() error { return e.Err }
