package handoff

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"unicode/utf8"
)

// Wire constants of format version 1. docs/handoff.md is the reference.
const (
	// Magic opens every header: "PHHO" (PowerHouse Hand-Off).
	Magic = "PHHO"
	// Version is the only header version this package writes and accepts.
	Version = 1
	// MaxNameLen bounds the listener name; the length travels in one byte.
	MaxNameLen = 255
	// MaxHeaderLen is the largest valid header, 300 bytes: the 9-byte fixed
	// part, two IPv6 address/port pairs and the longest name.
	MaxHeaderLen = 9 + 2*(16+2) + MaxNameLen
)

// The fixed part must be what MaxHeaderLen counts (compile-time check).
var _ [MaxHeaderLen - (fixedLen + 2*(16+2) + MaxNameLen)]struct{}
var _ [(fixedLen + 2*(16+2) + MaxNameLen) - MaxHeaderLen]struct{}

// Offsets of the fixed part. Everything multi-byte is big-endian.
const (
	offMagic   = 0 // 4 bytes
	offVersion = 4 // 1 byte
	offFlags   = 5 // 1 byte
	offSrcFam  = 6 // 1 byte: familyNone, family4 or family6
	offDstFam  = 7 // 1 byte
	offNameLen = 8 // 1 byte
	fixedLen   = 9 // then source, destination, name
)

// Address family codes on the wire. The digits 4 and 6 rather than AF_INET
// values so that a hex dump reads at a glance and no OS constant leaks into
// the format.
const (
	familyNone = 0
	family4    = 4
	family6    = 6
)

// Flags are the header's bit flags.
type Flags uint8

const (
	// FlagProxy says the connection came through a PROXY protocol header
	// that the dispatcher consumed. Source and Destination then hold the
	// addresses it carried, or are zero when it carried none (a PROXY v2
	// LOCAL command, "PROXY UNKNOWN").
	FlagProxy Flags = 1 << 0

	knownFlags = FlagProxy
)

// ErrMalformed is matched (errors.Is) by every error that rejects a header
// or a datagram. Receivers count such datagrams and drop them.
var ErrMalformed = errors.New("malformed hand-off")

// VersionError is the error for a header whose version this package does
// not know: the dispatcher runs a release whose hand-off format this
// worker does not understand. It matches ErrMalformed too. Receive and
// ReceiveFrom check the version before anything else (length, descriptor
// count), since another version may differ in those.
type VersionError struct {
	// Version is the header's version byte.
	Version uint8
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("%v: hand-off header of version %d; this side understands version %d", ErrMalformed, e.Version, Version)
}

// Is makes a VersionError match ErrMalformed.
func (e *VersionError) Is(target error) bool { return target == ErrMalformed }

// peekVersion returns the VersionError of a datagram that starts with the
// magic and a version other than Version, whatever follows (it may be
// truncated), else nil.
func peekVersion(b []byte) error {
	if len(b) > offVersion && string(b[offMagic:offMagic+len(Magic)]) == Magic && b[offVersion] != Version {
		return &VersionError{Version: b[offVersion]}
	}
	return nil
}

// Header is the payload of one hand-off datagram.
//
// The zero Source and Destination (netip.AddrPort{}) mean the connection did
// not come through PROXY protocol, or the PROXY header did not carry that
// address; the worker then uses the connection's own peer and local address.
type Header struct {
	// Name is the public listener the connection arrived on, as named in the
	// configuration ("0.0.0.0:9999", "/run/app.sock"). 1 to MaxNameLen bytes
	// of UTF-8 without control characters.
	Name string
	// Source is the original client address from a PROXY header.
	Source netip.AddrPort
	// Destination is the original destination address from a PROXY header.
	Destination netip.AddrPort
	// Flags carries FlagProxy. Other bits are invalid in version 1.
	Flags Flags
}

// Proxied reports whether the header carries an original client address.
func (h *Header) Proxied() bool { return h.Source.IsValid() }

// AppendBinary appends the encoded header to b and returns the extended
// buffer. It does not allocate when b has MaxHeaderLen spare capacity, so the
// dispatcher can encode into one buffer per goroutine.
//
// IPv4 addresses go on the wire as IPv4; IPv4-mapped IPv6 addresses are
// sent as written (family 6). Source and Destination must pass
// CheckAddrPort (no zone, no unspecified address, no port 0).
func (h *Header) AppendBinary(b []byte) ([]byte, error) {
	if err := h.validate(); err != nil {
		return b, fmt.Errorf("encode hand-off header: %w", err)
	}
	b = append(b, Magic...)
	b = append(b, Version, byte(h.Flags), family(h.Source), family(h.Destination), byte(len(h.Name)))
	b = appendAddrPort(b, h.Source)
	b = appendAddrPort(b, h.Destination)
	return append(b, h.Name...), nil
}

// MarshalBinary returns the encoded header in a new slice.
func (h *Header) MarshalBinary() ([]byte, error) {
	return h.AppendBinary(make([]byte, 0, MaxHeaderLen))
}

// UnmarshalBinary decodes b, which must be exactly one encoded header, into
// h. Every field is checked: magic, version (another version gives a
// *VersionError, whatever the length), unknown flags, family codes,
// lengths (b must have no bytes left over), the name's content and
// addresses (CheckAddrPort: no port 0, no unspecified address).
//
// When the decoded name equals h.Name already, h.Name is kept, so a receiver
// that reuses one Header for every datagram does not allocate for names.
// Errors match ErrMalformed; on error h is left unchanged.
func (h *Header) UnmarshalBinary(b []byte) error {
	if err := peekVersion(b); err != nil {
		return err // another version's header may be of any length
	}
	if len(b) < fixedLen {
		return fmt.Errorf("%w: header is %d bytes, shorter than the fixed %d", ErrMalformed, len(b), fixedLen)
	}
	if string(b[offMagic:offMagic+len(Magic)]) != Magic {
		// string() copies, so b itself does not escape and callers can
		// decode from a stack buffer without allocating.
		return fmt.Errorf("%w: bad magic %q", ErrMalformed, string(b[offMagic:offMagic+len(Magic)]))
	}
	// The version is Version: peekVersion returned any other.
	flags := Flags(b[offFlags])
	if flags&^knownFlags != 0 {
		return fmt.Errorf("%w: unknown flags %#02x", ErrMalformed, byte(flags&^knownFlags))
	}
	rest := b[fixedLen:]
	src, rest, err := parseAddrPort(b[offSrcFam], rest)
	if err != nil {
		return fmt.Errorf("%w: source: %w", ErrMalformed, err)
	}
	dst, rest, err := parseAddrPort(b[offDstFam], rest)
	if err != nil {
		return fmt.Errorf("%w: destination: %w", ErrMalformed, err)
	}
	n := int(b[offNameLen])
	if len(rest) != n {
		return fmt.Errorf("%w: name length %d but %d bytes follow", ErrMalformed, n, len(rest))
	}
	if err := checkName(rest); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if string(rest) != h.Name { // compared without allocating
		h.Name = string(rest)
	}
	h.Source, h.Destination, h.Flags = src, dst, flags
	return nil
}

// Parse decodes one encoded header; see Header.UnmarshalBinary.
func Parse(b []byte) (Header, error) {
	var h Header
	err := h.UnmarshalBinary(b)
	return h, err
}

func (h *Header) validate() error {
	if h.Flags&^knownFlags != 0 {
		return fmt.Errorf("unknown flags %#02x", byte(h.Flags&^knownFlags))
	}
	if err := checkName(h.Name); err != nil {
		return err
	}
	if err := CheckAddrPort(h.Source); err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if err := CheckAddrPort(h.Destination); err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	return nil
}

func checkName[S string | []byte](name S) error {
	if len(name) == 0 {
		return errors.New("empty listener name")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("listener name is %d bytes, longer than %d", len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c == 0x7f {
			return fmt.Errorf("control character %#02x in listener name", c)
		}
	}
	if !utf8.Valid([]byte(name)) {
		return errors.New("listener name is not UTF-8")
	}
	return nil
}

// CheckAddrPort reports whether ap may travel in a header as Source or
// Destination: nil for the zero AddrPort (absent) and for an address and
// port that the format carries and a worker can use as an endpoint. It
// refuses:
//
//   - a port without an address (an invalid Addr with a port);
//   - an address with a zone, which the format cannot carry;
//   - an unspecified address: 0.0.0.0, :: and the IPv4-mapped ::ffff:0.0.0.0,
//     which a receiver that unmaps (as docs/handoff.md advises) reads as
//     0.0.0.0;
//   - port 0.
//
// Multicast, broadcast, loopback and IPv4-mapped addresses are accepted:
// they are well formed, the format carries them unchanged, and whoever
// chose them (a PROXY header's sender) could as well have chosen any other
// address, so refusing them would protect nothing.
//
// AppendBinary and UnmarshalBinary apply exactly this check, and the PROXY
// protocol parser of package sticky applies it at parse time, so that a
// header it accepts can always be handed off.
func CheckAddrPort(ap netip.AddrPort) error {
	if ap == (netip.AddrPort{}) {
		return nil
	}
	a := ap.Addr()
	switch {
	case !a.IsValid():
		return errors.New("port without address")
	case a.Zone() != "":
		return fmt.Errorf("address %s has a zone, which the format cannot carry", a)
	case a.Unmap().IsUnspecified():
		return fmt.Errorf("unspecified address %s", a)
	case ap.Port() == 0:
		return fmt.Errorf("address %s has port 0", a)
	}
	return nil
}

func family(ap netip.AddrPort) byte {
	switch {
	case !ap.IsValid():
		return familyNone
	case ap.Addr().Is4():
		return family4
	default:
		return family6
	}
}

// appendAddrPort writes nothing for the zero AddrPort, else the address
// bytes (4 or 16) and the port, big-endian.
func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	if !ap.IsValid() {
		return b
	}
	a := ap.Addr()
	if a.Is4() {
		v := a.As4()
		b = append(b, v[:]...)
	} else {
		v := a.As16()
		b = append(b, v[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

func parseAddrPort(fam byte, b []byte) (netip.AddrPort, []byte, error) {
	var n int
	switch fam {
	case familyNone:
		return netip.AddrPort{}, b, nil
	case family4:
		n = 4
	case family6:
		n = 16
	default:
		return netip.AddrPort{}, b, fmt.Errorf("unknown address family %d", fam)
	}
	if len(b) < n+2 {
		return netip.AddrPort{}, b, fmt.Errorf("address truncated: %d bytes, want %d", len(b), n+2)
	}
	a, _ := netip.AddrFromSlice(b[:n]) // n is 4 or 16: cannot fail
	ap := netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[n:]))
	if err := CheckAddrPort(ap); err != nil {
		return netip.AddrPort{}, b, err
	}
	return ap, b[n+2:], nil
}
