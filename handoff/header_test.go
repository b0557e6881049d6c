package handoff

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
)

// docExample is the worked example of docs/handoff.md: listener
// "0.0.0.0:9999", PROXY source 203.0.113.7:51234, destination 192.0.2.10:9999.
const docExample = "50 48 48 4f 01 01 04 04 0c cb 00 71 07 c8 22 c0 00 02 0a 27 0f" +
	" 30 2e 30 2e 30 2e 30 3a 39 39 39 39"

var docHeader = Header{
	Name:        "0.0.0.0:9999",
	Source:      netip.MustParseAddrPort("203.0.113.7:51234"),
	Destination: netip.MustParseAddrPort("192.0.2.10:9999"),
	Flags:       FlagProxy,
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDocExample(t *testing.T) {
	got, err := docHeader.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if want := unhex(t, docExample); !bytes.Equal(got, want) {
		t.Fatalf("encoding of the documented example:\n got % x\nwant % x", got, want)
	}
	// The document must show the same bytes, so that it stays the reference.
	doc, err := os.ReadFile("../docs/handoff.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), docExample) {
		t.Errorf("docs/handoff.md does not contain the example bytes %q", docExample)
	}
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name   string
		h      Header
		length int
	}{
		{name: "plain", h: Header{Name: "0.0.0.0:9999"}, length: fixedLen + 12},
		{name: "unix listener", h: Header{Name: "/run/app.sock"}, length: fixedLen + 13},
		{name: "proxy v4", h: docHeader, length: fixedLen + 12 + 12},
		{name: "proxy v6", h: Header{
			Name:        "[::]:443",
			Source:      netip.MustParseAddrPort("[2001:db8::1]:40000"),
			Destination: netip.MustParseAddrPort("[2001:db8::2]:443"),
			Flags:       FlagProxy,
		}, length: fixedLen + 36 + 8},
		{name: "mixed families", h: Header{
			Name:        "x",
			Source:      netip.MustParseAddrPort("[::ffff:10.0.0.1]:1"),
			Destination: netip.MustParseAddrPort("10.0.0.2:2"),
		}, length: fixedLen + 18 + 6 + 1},
		{name: "proxy local", h: Header{Name: "lb", Flags: FlagProxy}, length: fixedLen + 2},
		{name: "source only", h: Header{Name: "lb", Source: netip.MustParseAddrPort("127.0.0.2:5")}, length: fixedLen + 6 + 2},
		{name: "longest", h: Header{
			Name:        strings.Repeat("é", MaxNameLen/2) + "x",
			Source:      netip.MustParseAddrPort("[2001:db8::1]:1"),
			Destination: netip.MustParseAddrPort("[2001:db8::2]:2"),
		}, length: MaxHeaderLen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.h.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != tt.length {
				t.Errorf("encoded length %d, want %d", len(b), tt.length)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.h {
				t.Errorf("round trip: got %+v, want %+v", got, tt.h)
			}
			if got.Proxied() != tt.h.Source.IsValid() {
				t.Errorf("Proxied() = %v", got.Proxied())
			}
		})
	}
}

func TestEncodeRejects(t *testing.T) {
	tests := []struct {
		name string
		h    Header
	}{
		{name: "empty name", h: Header{}},
		{name: "long name", h: Header{Name: strings.Repeat("a", MaxNameLen+1)}},
		{name: "newline in name", h: Header{Name: "a\nb"}},
		{name: "NUL in name", h: Header{Name: "a\x00"}},
		{name: "not UTF-8", h: Header{Name: "\xff"}},
		{name: "unknown flag", h: Header{Name: "a", Flags: 2}},
		{name: "zone", h: Header{Name: "a", Source: netip.MustParseAddrPort("[fe80::1%eth0]:1")}},
		{name: "port 0", h: Header{Name: "a", Source: netip.MustParseAddrPort("10.0.0.1:0")}},
		{name: "unspecified", h: Header{Name: "a", Destination: netip.MustParseAddrPort("0.0.0.0:80")}},
		{name: "unspecified v6", h: Header{Name: "a", Source: netip.MustParseAddrPort("[::]:80")}},
		{name: "unspecified v4-mapped", h: Header{Name: "a", Source: netip.MustParseAddrPort("[::ffff:0.0.0.0]:80")}},
		{name: "port without address", h: Header{Name: "a", Destination: netip.AddrPortFrom(netip.Addr{}, 80)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.h.AppendBinary([]byte("keep"))
			if err == nil {
				t.Fatalf("encoded % x, want an error", b)
			}
			if string(b) != "keep" {
				t.Errorf("buffer changed on error: %q", b)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	good := unhex(t, docExample)
	with := func(off int, v byte) []byte {
		b := bytes.Clone(good)
		b[off] = v
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want string // in the error text
	}{
		{name: "empty", b: nil, want: "shorter"},
		{name: "short", b: good[:fixedLen-1], want: "shorter"},
		{name: "bad magic", b: with(0, 'X'), want: "magic"},
		{name: "version 0", b: with(offVersion, 0), want: "version 0"},
		{name: "version 2", b: with(offVersion, 2), want: "hand-off header of version 2; this side understands version 1"},
		{name: "version 2, header only", b: []byte("PHHO\x02"), want: "hand-off header of version 2; this side understands version 1"},
		{name: "version 2, longer than v1", b: append([]byte("PHHO\x02"), make([]byte, MaxHeaderLen)...), want: "version 2"},
		{name: "unknown flags", b: with(offFlags, 0x81), want: "flags"},
		{name: "unknown family", b: with(offSrcFam, 5), want: "family 5"},
		{name: "family 6 overruns", b: with(offSrcFam, family6), want: "name length"},
		{name: "truncated address", b: good[:fixedLen+3], want: "truncated"},
		{name: "name cut", b: good[:len(good)-1], want: "name length"},
		{name: "trailing byte", b: append(bytes.Clone(good), 'x'), want: "name length"},
		{name: "empty name", b: unhex(t, "50 48 48 4f 01 00 00 00 00"), want: "empty"},
		{name: "control char", b: unhex(t, "50 48 48 4f 01 00 00 00 01 0a"), want: "control"},
		{name: "bad UTF-8", b: unhex(t, "50 48 48 4f 01 00 00 00 01 ff"), want: "UTF-8"},
		{name: "port 0", b: unhex(t, "50 48 48 4f 01 00 04 00 01 0a 00 00 01 00 00 61"), want: "port 0"},
		{name: "unspecified", b: unhex(t, "50 48 48 4f 01 00 04 00 01 00 00 00 00 00 50 61"), want: "unspecified"},
		{name: "unspecified v6 destination", b: unhex(t, "50 48 48 4f 01 00 00 06 01"+
			" 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 50 61"), want: "unspecified"},
		{name: "unspecified v4-mapped", b: unhex(t, "50 48 48 4f 01 00 06 00 01"+
			" 00 00 00 00 00 00 00 00 00 00 ff ff 00 00 00 00 00 50 61"), want: "unspecified"},
		{name: "v6 port 0", b: unhex(t, "50 48 48 4f 01 00 06 00 01"+
			" 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 00 00 61"), want: "port 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := Header{Name: "before"}
			err := h.UnmarshalBinary(tt.b)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to mention %q", err, tt.want)
			}
			if h != (Header{Name: "before"}) {
				t.Errorf("header changed on error: %+v", h)
			}
			var ve *VersionError
			otherVersion := len(tt.b) > offVersion && string(tt.b[:len(Magic)]) == Magic && tt.b[offVersion] != Version
			if isVersion := errors.As(err, &ve); isVersion != otherVersion {
				t.Errorf("err = %v: VersionError %v, want it only for another version", err, isVersion)
			}
		})
	}
}

// TestCheckAddrPort pins the address rule that the encoder, the decoder and
// the PROXY protocol parser of package sticky share.
func TestCheckAddrPort(t *testing.T) {
	tests := []struct {
		ap   netip.AddrPort
		want string // in the error text; "" for accepted
	}{
		{ap: netip.AddrPort{}},
		{ap: netip.MustParseAddrPort("192.0.2.1:1")},
		{ap: netip.MustParseAddrPort("[2001:db8::1]:65535")},
		{ap: netip.MustParseAddrPort("[::ffff:192.0.2.1]:80")},
		{ap: netip.MustParseAddrPort("127.0.0.1:80")},
		{ap: netip.MustParseAddrPort("[::1]:80")},
		{ap: netip.MustParseAddrPort("255.255.255.255:80")},
		{ap: netip.MustParseAddrPort("224.0.0.1:80")},
		{ap: netip.MustParseAddrPort("[ff02::1]:80")},
		{ap: netip.MustParseAddrPort("[::0.0.0.1]:80")},
		{ap: netip.MustParseAddrPort("0.0.0.0:80"), want: "unspecified"},
		{ap: netip.MustParseAddrPort("[::]:80"), want: "unspecified"},
		{ap: netip.MustParseAddrPort("[::ffff:0.0.0.0]:80"), want: "unspecified"},
		{ap: netip.MustParseAddrPort("0.0.0.0:0"), want: "unspecified"},
		{ap: netip.MustParseAddrPort("192.0.2.1:0"), want: "port 0"},
		{ap: netip.MustParseAddrPort("[2001:db8::1]:0"), want: "port 0"},
		{ap: netip.MustParseAddrPort("[fe80::1%eth0]:80"), want: "zone"},
		{ap: netip.AddrPortFrom(netip.Addr{}, 80), want: "without address"},
	}
	for _, tt := range tests {
		t.Run(tt.ap.String(), func(t *testing.T) {
			err := CheckAddrPort(tt.ap)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
			// The encoder and the decoder agree with it.
			h := Header{Name: "a", Source: tt.ap, Flags: FlagProxy}
			b, err := h.MarshalBinary()
			if (err == nil) != (tt.want == "") {
				t.Fatalf("MarshalBinary: %v", err)
			}
			if err != nil {
				return
			}
			if got, err := Parse(b); err != nil || got != h {
				t.Fatalf("Parse = %+v, %v; want %+v", got, err, h)
			}
		})
	}
}

func TestNoAllocs(t *testing.T) {
	buf := make([]byte, 0, MaxHeaderLen)
	if n := testing.AllocsPerRun(100, func() {
		if _, err := docHeader.AppendBinary(buf[:0]); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("AppendBinary: %v allocations, want 0", n)
	}
	b, _ := docHeader.MarshalBinary()
	var h Header
	if err := h.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() {
		if err := h.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("UnmarshalBinary with an unchanged name: %v allocations, want 0", n)
	}
}

func FuzzParse(f *testing.F) {
	seeds := []string{
		docExample,
		"50 48 48 4f 01 00 00 00 01 61",    // plain, one-byte name
		"50 48 48 4f 01 01 00 00 02 6c 62", // PROXY LOCAL
		// IPv6 source, IPv4 destination, name "é".
		"50 48 48 4f 01 01 06 04 02 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 9c 40" +
			" c0 00 02 0a 01 bb c3 a9",
		// IPv4-mapped source ::ffff:10.0.0.1 port 1, no destination.
		"50 48 48 4f 01 01 06 00 01 00 00 00 00 00 00 00 00 00 00 ff ff 0a 00 00 01 00 01 61",
		// Refused: port 0, unspecified (v4, v6, v4-mapped), unknown flag,
		// family 5, a control character, bad UTF-8, version 2.
		"50 48 48 4f 01 00 04 00 01 0a 00 00 01 00 00 61",
		"50 48 48 4f 01 00 04 00 01 00 00 00 00 00 50 61",
		"50 48 48 4f 01 00 00 06 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 50 61",
		"50 48 48 4f 01 00 06 00 01 00 00 00 00 00 00 00 00 00 00 ff ff 00 00 00 00 00 50 61",
		"50 48 48 4f 01 02 00 00 01 61",
		"50 48 48 4f 01 00 05 00 01 61",
		"50 48 48 4f 01 00 00 00 01 0a",
		"50 48 48 4f 01 00 00 00 02 c3 28",
		"50 48 48 4f 02 00 00 00 01 61",
	}
	for _, s := range seeds {
		f.Add(unhex(f, s))
	}
	long, err := (&Header{
		Name:        strings.Repeat("é", MaxNameLen/2) + "x",
		Source:      netip.MustParseAddrPort("[2001:db8::1]:1"),
		Destination: netip.MustParseAddrPort("[2001:db8::2]:2"),
		Flags:       FlagProxy,
	}).MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(long)
	f.Add([]byte("PHHO\x01\x00\x06\x00\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not match ErrMalformed", err)
			}
			if h != (Header{}) {
				t.Fatalf("error %v with a header %+v", err, h)
			}
			return
		}
		if len(b) > MaxHeaderLen {
			t.Fatalf("accepted %d bytes, above MaxHeaderLen", len(b))
		}
		for _, ap := range []netip.AddrPort{h.Source, h.Destination} {
			if err := CheckAddrPort(ap); err != nil {
				t.Fatalf("decoded an address CheckAddrPort refuses: %v", err)
			}
		}
		// Whatever parses must encode back to the same bytes: one header,
		// one encoding, so nothing ambiguous can slip through.
		again, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("parsed %+v but cannot encode it: %v", h, err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n got % x\nwant % x", again, b)
		}
		// And decode to the same header: decode, encode, decode is stable,
		// also through a Header reused with another name, as receivers do.
		h2 := Header{Name: "previous"}
		if err := h2.UnmarshalBinary(again); err != nil || h2 != h {
			t.Fatalf("second decode: %+v, %v; want %+v", h2, err, h)
		}
	})
}

func BenchmarkAppendBinary(b *testing.B) {
	buf := make([]byte, 0, MaxHeaderLen)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = docHeader.AppendBinary(buf[:0])
	}
}

func BenchmarkUnmarshalBinary(b *testing.B) {
	enc, _ := docHeader.MarshalBinary()
	var h Header
	b.ReportAllocs()
	for b.Loop() {
		_ = h.UnmarshalBinary(enc)
	}
}
