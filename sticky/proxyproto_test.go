package sticky

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/internal/sockettest"
)

// Shared socket helpers (internal/sockettest).
var (
	tcpPair = sockettest.TCPPair
)

// v2hdr builds a v2 header: signature, ver/cmd, fam/proto, length, body.
func v2hdr(verCmd, fam byte, body ...[]byte) []byte {
	b := append([]byte(v2Sig), verCmd, fam, 0, 0)
	for _, p := range body {
		b = append(b, p...)
	}
	binary.BigEndian.PutUint16(b[14:16], uint16(len(b)-v2Fixed))
	return b
}

func tlv(typ byte, val []byte) []byte {
	return append([]byte{typ, byte(len(val) >> 8), byte(len(val))}, val...)
}

func inet4(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	b := append(s[:], d[:]...)
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(b, sport), dport)
}

func inet6(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	b := append(s[:], d[:]...)
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(b, sport), dport)
}

// withCRC fills in the CRC32C TLV, which must be the last 7 bytes of h.
func withCRC(h []byte) []byte {
	h = bytes.Clone(h)
	clear(h[len(h)-4:])
	binary.BigEndian.PutUint32(h[len(h)-4:], crc32.Checksum(h, crc32.MakeTable(crc32.Castagnoli)))
	return h
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

const payload = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"

type goodCase struct {
	name string
	hdr  []byte
	want ProxyHeader
}

func goodCases() []goodCase {
	v1 := func(s string) []byte { return []byte(s) }
	bigTLV := tlv(0xE0, bytes.Repeat([]byte{'x'}, 600)) // pushes the header past one peek
	return []goodCase{
		{"v1 TCP4", v1("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"),
			ProxyHeader{Version: 1, Source: ap("192.168.0.1:56324"), Dest: ap("192.168.0.11:443")}},
		{"v1 TCP4 longest", v1("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"),
			ProxyHeader{Version: 1, Source: ap("255.255.255.255:65535"), Dest: ap("255.255.255.255:65535")}},
		{"v1 TCP6", v1("PROXY TCP6 2001:db8::1 2001:db8::2 40000 8080\r\n"),
			ProxyHeader{Version: 1, Source: ap("[2001:db8::1]:40000"), Dest: ap("[2001:db8::2]:8080")}},
		{"v1 TCP6 full form upper case", v1("PROXY TCP6 FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe 65535 1\r\n"),
			ProxyHeader{Version: 1, Source: ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"), Dest: ap("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:1")}},
		{"v1 TCP6 IPv4-mapped", v1("PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n"),
			ProxyHeader{Version: 1, Source: ap("[::ffff:10.0.0.1]:1"), Dest: ap("[::1]:2")}},
		{"v1 UNKNOWN short", v1("PROXY UNKNOWN\r\n"), ProxyHeader{Version: 1, Local: true}},
		{"v1 UNKNOWN worst case 107 bytes", v1("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
			ProxyHeader{Version: 1, Local: true}},
		{"v1 UNKNOWN with junk ignored", v1("PROXY UNKNOWN whatever \x01 here\r\n"), ProxyHeader{Version: 1, Local: true}},
		{"v2 PROXY TCP4", v2hdr(0x21, 0x11, inet4("10.1.2.3", "10.9.9.9", 51000, 443)),
			ProxyHeader{Version: 2, Source: ap("10.1.2.3:51000"), Dest: ap("10.9.9.9:443")}},
		{"v2 PROXY TCP6", v2hdr(0x21, 0x21, inet6("2001:db8::7", "2001:db8::8", 1234, 80)),
			ProxyHeader{Version: 2, Source: ap("[2001:db8::7]:1234"), Dest: ap("[2001:db8::8]:80")}},
		{"v2 LOCAL", v2hdr(0x20, 0x00), ProxyHeader{Version: 2, Local: true}},
		{"v2 LOCAL ignores family and block", v2hdr(0x20, 0x11, inet4("1.1.1.1", "2.2.2.2", 1, 2)), ProxyHeader{Version: 2, Local: true}},
		{"v2 LOCAL with undefined family", v2hdr(0x20, 0xff, []byte{1, 2}), ProxyHeader{Version: 2, Local: true}},
		{"v2 PROXY UNSPEC", v2hdr(0x21, 0x00, []byte("ignored")), ProxyHeader{Version: 2, Local: true}},
		{"v2 TCP4 with TLVs", v2hdr(0x21, 0x11, inet4("10.1.2.3", "10.9.9.9", 51000, 443),
			tlv(0x01, []byte("h2")), tlv(0x02, []byte("example.com")), tlv(0x04, nil), tlv(0x05, bytes.Repeat([]byte{7}, 128))),
			ProxyHeader{Version: 2, Source: ap("10.1.2.3:51000"), Dest: ap("10.9.9.9:443")}},
		{"v2 TCP4 with CRC32C", withCRC(v2hdr(0x21, 0x11, inet4("10.1.2.3", "10.9.9.9", 51000, 443),
			tlv(0x02, []byte("example.com")), tlv(tlvCRC32C, make([]byte, 4)))),
			ProxyHeader{Version: 2, Source: ap("10.1.2.3:51000"), Dest: ap("10.9.9.9:443")}},
		{"v2 TCP6 with 600-byte TLV", v2hdr(0x21, 0x21, inet6("2001:db8::7", "2001:db8::8", 1234, 80), bigTLV),
			ProxyHeader{Version: 2, Source: ap("[2001:db8::7]:1234"), Dest: ap("[2001:db8::8]:80")}},
		{"v2 UNIX stream", v2hdr(0x21, 0x31, make([]byte, 216)), ProxyHeader{Version: 2, Local: true}},
		{"v2 UNIX dgram with TLV", v2hdr(0x21, 0x32, make([]byte, 216), tlv(0x04, nil)), ProxyHeader{Version: 2, Local: true}},
		{"v2 UDP4", v2hdr(0x21, 0x12, inet4("1.1.1.1", "2.2.2.2", 53, 53)), ProxyHeader{Version: 2, Local: true}},
		{"v2 UDP6", v2hdr(0x21, 0x22, inet6("::1", "::2", 53, 53)), ProxyHeader{Version: 2, Local: true}},
	}
}

type badCase struct {
	name string
	in   []byte
	want ProxyReason
}

func badCases() []badCase {
	v1 := func(s string) []byte { return []byte(s) }
	tcp4 := inet4("10.1.2.3", "10.9.9.9", 51000, 443)
	crcBad := withCRC(v2hdr(0x21, 0x11, tcp4, tlv(tlvCRC32C, make([]byte, 4))))
	crcBad[20] ^= 1 // flip a bit of the source address after summing
	over := v2hdr(0x21, 0x11, tcp4)
	binary.BigEndian.PutUint16(over[14:16], 0xffff)
	longV2 := v2hdr(0x21, 0x11, tcp4, tlv(0xE0, make([]byte, 1600)))
	return []badCase{
		{"HTTP request", v1(payload), ProxyMalformed},
		{"short garbage", v1("hello"), ProxyMalformed},
		{"TLS client hello", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0, 0, 0}, ProxyMalformed},
		{"lower-case proxy", v1("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), ProxyMalformed},
		{"PROXY without space", v1("PROXY\r\n"), ProxyMalformed},
		{"v1 truncated", v1("PROXY TCP4 192.168.0.1 192.16"), ProxyTruncated},
		{"v2 signature truncated", []byte(v2Sig[:7]), ProxyTruncated},
		{"v2 body truncated", v2hdr(0x21, 0x11, tcp4)[:20], ProxyTruncated},
		{"v2 wrong signature", append([]byte("\r\n\r\n\x00\r\nQUIX\n"), 0x21, 0x11, 0, 12), ProxyMalformed},
		{"v1 too long without CRLF", v1("PROXY UNKNOWN " + strings.Repeat("a", 120)), ProxyTooLong},
		{"v1 CRLF at byte 108", v1("PROXY UNKNOWN " + strings.Repeat("a", 92) + "\r\n"), ProxyTooLong},
		{"v1 port above 65535", v1("PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n"), ProxyMalformed},
		{"v1 port with leading zero", v1("PROXY TCP4 1.2.3.4 5.6.7.8 1234 080\r\n"), ProxyMalformed},
		{"v1 port with sign", v1("PROXY TCP4 1.2.3.4 5.6.7.8 +1234 80\r\n"), ProxyMalformed},
		{"v1 port not a number", v1("PROXY TCP4 1.2.3.4 5.6.7.8 12a4 80\r\n"), ProxyMalformed},
		{"v1 TCP4 with IPv6 address", v1("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), ProxyMalformed},
		{"v1 TCP6 with IPv4 address", v1("PROXY TCP6 1.2.3.4 ::1 1 2\r\n"), ProxyMalformed},
		{"v1 IPv4 leading zero", v1("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"), ProxyMalformed},
		{"v1 IPv4 octet 256", v1("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"), ProxyMalformed},
		{"v1 IPv4 three octets", v1("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), ProxyMalformed},
		{"v1 IPv6 with zone", v1("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"), ProxyMalformed},
		{"v1 double space", v1("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"), ProxyMalformed},
		{"v1 trailing space", v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), ProxyMalformed},
		{"v1 missing port", v1("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), ProxyMalformed},
		{"v1 extra field", v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), ProxyMalformed},
		{"v1 empty protocol", v1("PROXY \r\n"), ProxyMalformed},
		{"v1 CR without LF", v1("PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n"), ProxyMalformed},
		{"v1 LF without CR", v1("PROXY UNKNOWN\n"), ProxyMalformed},
		{"v1 UDP4", v1("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"), ProxyUnsupported},
		{"v1 UNKNOWN glued", v1("PROXY UNKNOWNX\r\n"), ProxyUnsupported},
		{"v2 version 1", v2hdr(0x11, 0x11, tcp4), ProxyUnsupported},
		{"v2 version 3", v2hdr(0x31, 0x11, tcp4), ProxyUnsupported},
		{"v2 command 2", v2hdr(0x22, 0x11, tcp4), ProxyUnsupported},
		{"v2 command 15", v2hdr(0x2f, 0x11, tcp4), ProxyUnsupported},
		{"v2 length 65535 over the limit", over, ProxyTooLong},
		{"v2 length 1615 over the limit", longV2, ProxyTooLong},
		{"v2 family 4", v2hdr(0x21, 0x41, tcp4), ProxyUnsupported},
		{"v2 transport 3", v2hdr(0x21, 0x13, tcp4), ProxyUnsupported},
		{"v2 TCP4 without transport", v2hdr(0x21, 0x10, tcp4), ProxyUnsupported},
		{"v2 TCP4 block too short", v2hdr(0x21, 0x11, tcp4[:8]), ProxyMalformed},
		{"v2 TCP6 with TCP4 block", v2hdr(0x21, 0x21, tcp4), ProxyMalformed},
		{"v2 UNIX block too short", v2hdr(0x21, 0x31, make([]byte, 108)), ProxyMalformed},
		{"v2 TLV overflows header", v2hdr(0x21, 0x11, tcp4, []byte{0x02, 0x00, 0x10, 'a'}), ProxyMalformed},
		{"v2 stray bytes after TLV", v2hdr(0x21, 0x11, tcp4, tlv(0x04, nil), []byte{0x01, 0x00}), ProxyMalformed},
		{"v2 CRC32C mismatch", crcBad, ProxyMalformed},
		{"v2 CRC32C of 2 bytes", v2hdr(0x21, 0x11, tcp4, tlv(tlvCRC32C, []byte{0, 0})), ProxyMalformed},
	}
}

func reasonOf(err error) ProxyReason {
	var pe *ProxyError
	if errors.As(err, &pe) {
		return pe.Reason
	}
	return 0
}

// handsOff checks that h, an accepted header, goes through the hand-off as
// the dispatcher sends it (Dispatcher.proxied builds the hand-off header the
// same way): it encodes, and decodes to the same addresses.
func handsOff(t testing.TB, h ProxyHeader) {
	t.Helper()
	want := handoff.Header{Name: "lb", Flags: handoff.FlagProxy}
	if !h.Local {
		want.Source, want.Destination = h.Source, h.Dest
	}
	b, err := want.MarshalBinary()
	if err != nil {
		t.Fatalf("accepted header %+v cannot be handed off: %v", h, err)
	}
	got, err := handoff.Parse(b)
	if err != nil {
		t.Fatalf("hand-off of %+v does not decode: %v", h, err)
	}
	if got != want {
		t.Fatalf("hand-off decodes as %+v, want %+v", got, want)
	}
}

func TestParseProxyHeader(t *testing.T) {
	for _, tt := range goodCases() {
		t.Run(tt.name, func(t *testing.T) {
			in := append(bytes.Clone(tt.hdr), payload...)
			h, n, err := ParseProxyHeader(in, ProxyOptions{})
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			if h != tt.want {
				t.Errorf("header = %+v, want %+v", h, tt.want)
			}
			if n != len(tt.hdr) {
				t.Errorf("consumed %d bytes, want %d", n, len(tt.hdr))
			}
			handsOff(t, h)
		})
	}
	for _, tt := range badCases() {
		t.Run("bad/"+tt.name, func(t *testing.T) {
			in := bytes.Clone(tt.in)
			h, n, err := ParseProxyHeader(in, ProxyOptions{})
			if err == nil {
				t.Fatalf("parsed %+v (%d bytes), want a %v error", h, n, tt.want)
			}
			if got := reasonOf(err); got != tt.want {
				t.Errorf("reason %v (%v), want %v", got, err, tt.want)
			}
			if n != 0 {
				t.Errorf("reported %d bytes consumed on error", n)
			}
			if !bytes.Equal(in, tt.in) {
				t.Error("input modified")
			}
		})
	}
}

func TestParseProxyHeaderMaxV2Length(t *testing.T) {
	h := v2hdr(0x21, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2), tlv(0xE0, make([]byte, 100)))
	if _, _, err := ParseProxyHeader(h, ProxyOptions{MaxV2Length: 50}); reasonOf(err) != ProxyTooLong {
		t.Errorf("limit 50: %v, want too long", err)
	}
	if _, n, err := ParseProxyHeader(h, ProxyOptions{MaxV2Length: 115}); err != nil || n != len(h) {
		t.Errorf("limit 115: n=%d, %v", n, err)
	}
	big := v2hdr(0x21, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2), tlv(0xE0, make([]byte, 60000)))
	if _, n, err := ParseProxyHeader(big, ProxyOptions{MaxV2Length: 1 << 20}); err != nil || n != len(big) {
		t.Errorf("limit above 65535: n=%d, %v", n, err)
	}
}

// addrCase is a well-formed header whose addresses test the hand-off's
// address rule: refused when its source breaks it, accepted without a
// destination when only its destination does.
type addrCase struct {
	name    string
	hdr     []byte
	want    ProxyHeader // when accepted
	refused bool
}

func addrCases() []addrCase {
	v1 := func(s string) []byte { return []byte(s) }
	v2 := func(fam byte, block []byte) []byte { return v2hdr(0x21, fam, block) }
	tcp4, tcp6 := byte(0x11), byte(0x21)
	refused := func(name string, hdr []byte) addrCase {
		return addrCase{name: "source " + name, hdr: hdr, refused: true}
	}
	noDest := func(name string, hdr []byte, v int, src string) addrCase {
		return addrCase{name: "destination " + name, hdr: hdr, want: ProxyHeader{Version: v, Source: ap(src)}}
	}
	return []addrCase{
		refused("v1 0.0.0.0", v1("PROXY TCP4 0.0.0.0 192.0.2.1 40000 80\r\n")),
		refused("v1 port 0", v1("PROXY TCP4 203.0.113.9 192.0.2.1 0 80\r\n")),
		refused("v1 all zero", v1("PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n")),
		refused("v1 ::", v1("PROXY TCP6 :: 2001:db8::1 40000 80\r\n")),
		refused("v1 ::ffff:0.0.0.0", v1("PROXY TCP6 ::ffff:0.0.0.0 2001:db8::1 40000 80\r\n")),
		refused("v1 IPv6 port 0", v1("PROXY TCP6 2001:db8::5 2001:db8::1 0 80\r\n")),
		refused("v2 0.0.0.0", v2(tcp4, inet4("0.0.0.0", "192.0.2.1", 40000, 80))),
		refused("v2 port 0", v2(tcp4, inet4("203.0.113.9", "192.0.2.1", 0, 80))),
		refused("v2 ::", v2(tcp6, inet6("::", "2001:db8::1", 40000, 80))),
		refused("v2 ::ffff:0.0.0.0", v2(tcp6, inet6("::ffff:0.0.0.0", "2001:db8::1", 40000, 80))),
		refused("v2 IPv6 port 0", v2(tcp6, inet6("2001:db8::5", "2001:db8::1", 0, 80))),
		refused("v2 with TLV", v2hdr(0x21, tcp4, inet4("0.0.0.0", "192.0.2.1", 1, 80), tlv(0x04, nil))),

		noDest("v1 0.0.0.0", v1("PROXY TCP4 203.0.113.9 0.0.0.0 40000 80\r\n"), 1, "203.0.113.9:40000"),
		noDest("v1 port 0", v1("PROXY TCP4 203.0.113.9 192.0.2.1 40000 0\r\n"), 1, "203.0.113.9:40000"),
		noDest("v1 ::", v1("PROXY TCP6 2001:db8::5 :: 40000 80\r\n"), 1, "[2001:db8::5]:40000"),
		noDest("v1 ::ffff:0.0.0.0", v1("PROXY TCP6 2001:db8::5 ::ffff:0.0.0.0 40000 80\r\n"), 1, "[2001:db8::5]:40000"),
		noDest("v1 IPv6 port 0", v1("PROXY TCP6 2001:db8::5 2001:db8::1 40000 0\r\n"), 1, "[2001:db8::5]:40000"),
		noDest("v2 0.0.0.0 port 0", v2(tcp4, inet4("203.0.113.9", "0.0.0.0", 40000, 0)), 2, "203.0.113.9:40000"),
		noDest("v2 port 0", v2(tcp4, inet4("203.0.113.9", "192.0.2.1", 40000, 0)), 2, "203.0.113.9:40000"),
		noDest("v2 ::", v2(tcp6, inet6("2001:db8::5", "::", 40000, 80)), 2, "[2001:db8::5]:40000"),
		noDest("v2 ::ffff:0.0.0.0", v2(tcp6, inet6("2001:db8::5", "::ffff:0.0.0.0", 40000, 80)), 2, "[2001:db8::5]:40000"),
		noDest("v2 IPv6 port 0", v2(tcp6, inet6("2001:db8::5", "2001:db8::1", 40000, 0)), 2, "[2001:db8::5]:40000"),

		// Accepted as sent: well formed, and the hand-off carries them.
		{name: "v1 IPv4-mapped", hdr: v1("PROXY TCP6 ::ffff:203.0.113.9 ::ffff:192.0.2.1 40000 80\r\n"),
			want: ProxyHeader{Version: 1, Source: ap("[::ffff:203.0.113.9]:40000"), Dest: ap("[::ffff:192.0.2.1]:80")}},
		{name: "v2 IPv4-mapped", hdr: v2(tcp6, inet6("::ffff:203.0.113.9", "::ffff:192.0.2.1", 40000, 80)),
			want: ProxyHeader{Version: 2, Source: ap("[::ffff:203.0.113.9]:40000"), Dest: ap("[::ffff:192.0.2.1]:80")}},
		{name: "v2 multicast and loopback", hdr: v2(tcp4, inet4("224.0.0.1", "127.0.0.1", 1, 65535)),
			want: ProxyHeader{Version: 2, Source: ap("224.0.0.1:1"), Dest: ap("127.0.0.1:65535")}},
	}
}

// TestProxyHeaderAddresses: a header whose source address the hand-off
// cannot carry is refused as malformed at parse time, on every read path;
// one whose destination it cannot carry is accepted without it; and every
// accepted header goes through the hand-off encoder and decoder.
func TestProxyHeaderAddresses(t *testing.T) {
	check := func(t *testing.T, tt addrCase, h ProxyHeader, err error) {
		t.Helper()
		if tt.refused {
			if reasonOf(err) != ProxyMalformed || !strings.Contains(err.Error(), "source") {
				t.Fatalf("got %+v, %v; want a malformed-source error", h, err)
			}
			return
		}
		if err != nil || h != tt.want {
			t.Fatalf("got %+v, %v; want %+v", h, err, tt.want)
		}
		handsOff(t, h)
	}
	for _, tt := range addrCases() {
		t.Run("parse/"+tt.name, func(t *testing.T) {
			h, _, err := ParseProxyHeader(append(bytes.Clone(tt.hdr), payload...), ProxyOptions{})
			check(t, tt, h, err)
		})
		t.Run("tcp/"+tt.name, func(t *testing.T) {
			client, server := tcpPair(t)
			if _, err := client.Write(append(bytes.Clone(tt.hdr), payload...)); err != nil {
				t.Fatal(err)
			}
			h, err := ReadProxyHeader(context.Background(), server, ProxyOptions{})
			check(t, tt, h, err)
		})
		t.Run("pipe/"+tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer server.Close()
			go func() {
				client.Write(append(bytes.Clone(tt.hdr), payload...))
				client.Close()
			}()
			h, err := ReadProxyHeader(context.Background(), server, ProxyOptions{})
			check(t, tt, h, err)
		})
	}
}

// TestDispatchProxyUnusableAddresses runs a real dispatcher with one
// instance: a header with an unusable source is refused and counted as a
// PROXY error, not dropped at the hand-off (which used to fail the encoder,
// drop the connection and re-dial the instance); one with an unusable
// destination is handed off without it, with the client's bytes after it.
func TestDispatchProxyUnusableAddresses(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "1.sock")
	wk, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer wk.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // f keeps the socket listening
	d := NewDispatcher(DispatcherOptions{Path: func(int) string { return sock }})
	d.Up.Replace(1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- d.Serve(ctx, []Listener{{Name: "lb", Proxy: true, ProxyFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, File: f}})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	dial := func(data string) net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte(data)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	waitStats := func(what string, ok func(Stats) bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !ok(d.Stats()); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: stats %+v", what, d.Stats())
			}
		}
	}

	for i, hdr := range []string{
		"PROXY TCP4 0.0.0.0 192.0.2.1 40000 80\r\n",
		"PROXY TCP4 203.0.113.9 192.0.2.1 0 80\r\n",
		string(v2hdr(0x21, 0x21, inet6("::", "2001:db8::1", 40000, 80))),
	} {
		c := dial(hdr + "GET")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%q: connection not closed: %v", hdr, err)
		}
		c.Close()
		waitStats("refused "+hdr, func(s Stats) bool { return s.ProxyErrors == uint64(i+1) })
	}
	if s := d.Stats(); s.Dropped != 0 || s.HandedOff != 0 {
		t.Errorf("after refused headers: %+v, want nothing dropped or handed off", s)
	}

	c := dial("PROXY TCP4 203.0.113.9 0.0.0.0 40000 0\r\nGET")
	defer c.Close()
	rc, err := wk.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		h    handoff.Header
		fd   int
		rerr error
	)
	wk.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := rc.Read(func(s uintptr) bool {
		fd, rerr = handoff.Receive(int(s), &h)
		return !errors.Is(rerr, syscall.EAGAIN)
	}); err != nil || rerr != nil {
		t.Fatalf("no hand-off: %v, %v (stats %+v)", err, rerr, d.Stats())
	}
	conn := os.NewFile(uintptr(fd), "conn")
	defer conn.Close()
	want := handoff.Header{Name: "lb", Flags: handoff.FlagProxy, Source: ap("203.0.113.9:40000")}
	if h != want {
		t.Errorf("hand-off header %+v, want %+v", h, want)
	}
	buf := make([]byte, 3)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "GET" {
		t.Errorf("worker read %q, %v; want the client's bytes", buf, err)
	}
	// The dispatcher counts a hand-off after its sendmsg returns, which
	// may be after the worker received it.
	waitStats("handed off", func(s Stats) bool { return s.HandedOff == 1 })
	if s := d.Stats(); s.Dropped != 0 || s.HandedOff != 1 || s.ProxyErrors != 3 {
		t.Errorf("stats %+v, want 1 handed off, 3 PROXY errors, none dropped", s)
	}
}

// twoValidCRCs returns a v2 header with two CRC32C TLVs that both match.
// Each checksum covers the other's field, so the values come from a small
// linear system: CRC32C is affine in the message bits (for a fixed length),
// so with c the sum of the header with both fields zero, L1(b) what field b
// adds to the first checksum and L2(a) what field a adds to the second,
// a = c ^ L1(b) and b = c ^ L2(a), that is (I ^ L1∘L2) a = c ^ L1(c), solved
// over GF(2) by elimination.
func twoValidCRCs(t *testing.T) []byte {
	tab := crc32.MakeTable(crc32.Castagnoli)
	for sport := uint16(1); sport < 100; sport++ {
		h := v2hdr(0x21, 0x11, inet4("10.1.2.3", "10.9.9.9", sport, 443),
			tlv(tlvCRC32C, make([]byte, 4)), tlv(tlvCRC32C, make([]byte, 4)))
		offA, offB := len(h)-11, len(h)-4
		sum := func(a, b uint32) uint32 {
			binary.BigEndian.PutUint32(h[offA:], a)
			binary.BigEndian.PutUint32(h[offB:], b)
			return crc32.Checksum(h, tab)
		}
		c := sum(0, 0)
		l1 := func(b uint32) uint32 { return sum(0, b) ^ c }
		l2 := func(a uint32) uint32 { return sum(a, 0) ^ c }
		// Columns of I ^ L1∘L2, reduced into a basis keyed by top bit;
		// combo records which unknown bits make up each basis vector.
		type vec struct{ v, combo uint32 }
		var basis [32]vec
		for i := range 32 {
			x := vec{v: 1<<i ^ l1(l2(1<<i)), combo: 1 << i}
			for x.v != 0 {
				p := 31 - bits.LeadingZeros32(x.v)
				if basis[p].v == 0 {
					basis[p] = x
					break
				}
				x.v ^= basis[p].v
				x.combo ^= basis[p].combo
			}
		}
		r, a := c^l1(c), uint32(0)
		for p := 31; p >= 0; p-- {
			if r>>p&1 == 1 && basis[p].v != 0 {
				r ^= basis[p].v
				a ^= basis[p].combo
			}
		}
		if r != 0 {
			continue // singular for this header: try another port
		}
		b := c ^ l2(a)
		sum(a, b)
		if sum(0, b) != a || sum(a, 0) != b {
			t.Fatal("solver is wrong")
		}
		binary.BigEndian.PutUint32(h[offA:], a)
		binary.BigEndian.PutUint32(h[offB:], b)
		return h
	}
	t.Fatal("no solvable header")
	return nil
}

// TestParseProxyHeaderOneCRC32C: a second CRC32C TLV is refused even when
// both match. Each is a pass over the whole header, so a header of many
// crafted matching checksums (up to 9362 in 64 KiB) would cost the
// receiver thousands of passes for one header sent.
func TestParseProxyHeaderOneCRC32C(t *testing.T) {
	h := twoValidCRCs(t)
	_, _, err := ParseProxyHeader(h, ProxyOptions{})
	if reasonOf(err) != ProxyMalformed || !strings.Contains(err.Error(), "more than one CRC32C") {
		t.Fatalf("two matching CRC32C TLVs: %v, want malformed", err)
	}
	// A single matching CRC32C TLV stays accepted: "v2 TCP4 with CRC32C"
	// in goodCases.
}

func TestCRC32CMatchesKnownVector(t *testing.T) {
	// RFC 3720 B.4 / the usual check value: CRC-32C("123456789").
	if got := crc32.Checksum([]byte("123456789"), crc32.MakeTable(crc32.Castagnoli)); got != 0xe3069283 {
		t.Fatalf("CRC-32C check value %#x", got)
	}
}

func TestProxyReasonString(t *testing.T) {
	for r, want := range map[ProxyReason]string{
		ProxyMalformed: "malformed", ProxyTooLong: "too_long", ProxyUnsupported: "unsupported",
		ProxyTimeout: "timeout", ProxyTruncated: "truncated", ProxyReadError: "read_error", 99: "ProxyReason(99)",
	} {
		if got := r.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", uint8(r), got, want)
		}
	}
	err := error(&ProxyError{Reason: ProxyTimeout, Detail: "x", Err: os.ErrDeadlineExceeded})
	if !errors.Is(err, os.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "timeout: x") {
		t.Errorf("error %q does not wrap or name its cause", err)
	}
}

// unixPair returns both ends of a unix stream connection (a listener may be
// a unix socket path).
func unixPair(t testing.TB) (client, server *net.UnixConn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.UnixConn), s.(*net.UnixConn)
}

// readRawRemainder reads what is left in the server's socket through a
// duplicate of its descriptor, as a worker that received it would, until the
// client's end of stream.
func readRawRemainder(t *testing.T, sc syscall.Conn) []byte {
	t.Helper()
	var f *os.File
	var err error
	switch c := sc.(type) {
	case *net.TCPConn:
		f, err = c.File()
	case *net.UnixConn:
		f, err = c.File()
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rest, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return rest
}

// TestReadProxyHeaderLeavesPayload writes header and payload in one write
// and checks that exactly the payload is still in the socket afterwards:
// the property that makes handing the raw descriptor to a worker correct.
func TestReadProxyHeaderLeavesPayload(t *testing.T) {
	for _, tt := range goodCases() {
		t.Run("tcp/"+tt.name, func(t *testing.T) {
			client, server := tcpPair(t)
			if _, err := client.Write(append(bytes.Clone(tt.hdr), payload...)); err != nil {
				t.Fatal(err)
			}
			client.CloseWrite()
			h, err := ReadProxyHeader(context.Background(), server, ProxyOptions{})
			if err != nil {
				t.Fatalf("ReadProxyHeader: %v", err)
			}
			if h != tt.want {
				t.Errorf("header = %+v, want %+v", h, tt.want)
			}
			handsOff(t, h)
			if rest := readRawRemainder(t, server); string(rest) != payload {
				t.Errorf("left in the socket: %q, want %q", rest, payload)
			}
		})
		t.Run("pipe/"+tt.name, func(t *testing.T) {
			// net.Pipe cannot peek: this is the exact-read path.
			client, server := net.Pipe()
			defer server.Close()
			go func() {
				client.Write(append(bytes.Clone(tt.hdr), payload...))
				client.Close()
			}()
			h, err := ReadProxyHeader(context.Background(), server, ProxyOptions{})
			if err != nil {
				t.Fatalf("ReadProxyHeader: %v", err)
			}
			if h != tt.want {
				t.Errorf("header = %+v, want %+v", h, tt.want)
			}
			if rest, _ := io.ReadAll(server); string(rest) != payload {
				t.Errorf("left in the pipe: %q, want %q", rest, payload)
			}
		})
	}
	t.Run("unix/v1 TCP4", func(t *testing.T) {
		client, server := unixPair(t)
		client.Write([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\n" + payload))
		client.CloseWrite()
		h, err := ReadProxyHeader(context.Background(), server, ProxyOptions{})
		if err != nil || h.Source != ap("192.0.2.1:1000") {
			t.Fatalf("ReadProxyHeader = %+v, %v", h, err)
		}
		if rest := readRawRemainder(t, server); string(rest) != payload {
			t.Errorf("left in the socket: %q, want %q", rest, payload)
		}
	})
}

// TestReadProxyHeaderBackToBack sends many headers in a row on one
// connection: each call must stop exactly at the end of its header for the
// next one to parse.
func TestReadProxyHeaderBackToBack(t *testing.T) {
	client, server := tcpPair(t)
	cases := goodCases()
	var all []byte
	for _, tt := range cases {
		all = append(all, tt.hdr...)
	}
	go func() {
		client.Write(all)
		client.CloseWrite()
	}()
	for _, tt := range cases {
		h, err := ReadProxyHeader(context.Background(), server, ProxyOptions{})
		if err != nil || h != tt.want {
			t.Fatalf("%s: got %+v, %v; want %+v", tt.name, h, err, tt.want)
		}
	}
	if _, err := ReadProxyHeader(context.Background(), server, ProxyOptions{}); reasonOf(err) != ProxyTruncated {
		t.Errorf("at end of stream: %v, want truncated", err)
	}
}

// TestReadProxyHeaderStream sends 20000 headers back to back while they are
// read, so that the receive buffer fills and headers straddle segments. It
// catches a stall seen with a parser that only peeked at an incomplete
// header: the few bytes left at the tail of a partly read segment kept the
// receive window at zero, and the rest of the header never came.
func TestReadProxyHeaderStream(t *testing.T) {
	client, server := tcpPair(t)
	hdr := []byte("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
	const n = 20000
	go func() {
		batch := bytes.Repeat(hdr, 64)
		for sent := 0; sent < n; sent += 64 {
			if _, err := client.Write(batch[:min(64, n-sent)*len(hdr)]); err != nil {
				return
			}
		}
	}()
	for i := range n {
		if _, err := ReadProxyHeader(context.Background(), server, ProxyOptions{}); err != nil {
			t.Fatalf("header %d: %v", i, err)
		}
	}
}

func TestReadProxyHeaderRefuses(t *testing.T) {
	for _, tt := range badCases() {
		t.Run("tcp/"+tt.name, func(t *testing.T) {
			client, server := tcpPair(t)
			client.Write(tt.in)
			client.CloseWrite()
			start := time.Now()
			_, err := ReadProxyHeader(context.Background(), server, ProxyOptions{Timeout: 10 * time.Second})
			if got := reasonOf(err); got != tt.want {
				t.Errorf("reason %v (%v), want %v", got, err, tt.want)
			}
			// Refusals and end of stream are noticed at once, not at the
			// deadline.
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
		t.Run("pipe/"+tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer server.Close()
			go func() {
				client.Write(tt.in)
				client.Close()
			}()
			want := tt.want
			if len(tt.in) < minHeaderLen {
				// Without a peek the parser first reads the 15 bytes every
				// header has, so a shorter input ends the stream first.
				want = ProxyTruncated
			}
			_, err := ReadProxyHeader(context.Background(), server, ProxyOptions{Timeout: 10 * time.Second})
			if got := reasonOf(err); got != want {
				t.Errorf("reason %v (%v), want %v", got, err, want)
			}
		})
	}
}

// TestReadProxyHeaderSlow: a client sends half a header and stalls. The
// parser must have seen the half (so it really is waiting for more) and must
// give up with a timeout at the deadline.
func TestReadProxyHeaderSlow(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, half := range []string{"PROXY TCP4 192.0.2.1 19", v2Sig[:10], string(v2hdr(0x21, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2))[:20])} {
		t.Run(fmt.Sprintf("tcp %q", half), func(t *testing.T) {
			client, server := tcpPair(t)
			if _, err := client.Write([]byte(half)); err != nil {
				t.Fatal(err)
			}
			seen := make(chan int, 1)
			opts := ProxyOptions{Timeout: timeout, onPeek: func(n int) {
				select {
				case seen <- n: // the first peek is the one to check
				default:
				}
			}}
			start := time.Now()
			_, err := ReadProxyHeader(context.Background(), server, opts)
			elapsed := time.Since(start)
			if reasonOf(err) != ProxyTimeout || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("error %v, want a timeout", err)
			}
			if elapsed < timeout-10*time.Millisecond || elapsed > timeout+2*time.Second {
				t.Errorf("gave up after %v, deadline was %v", elapsed, timeout)
			}
			if len(seen) == 0 || <-seen != len(half) {
				t.Error("parser never peeked the partial header")
			}
		})
	}
	t.Run("pipe", func(t *testing.T) {
		client, server := net.Pipe()
		defer client.Close()
		go client.Write([]byte("PROXY TCP4 192.0.2.1 19"))
		start := time.Now()
		_, err := ReadProxyHeader(context.Background(), server, ProxyOptions{Timeout: timeout})
		if reasonOf(err) != ProxyTimeout || time.Since(start) < timeout-10*time.Millisecond {
			t.Fatalf("after %v: %v, want a timeout", time.Since(start), err)
		}
	})
}

// TestReadProxyHeaderSplit sends a header in two parts, the second only once
// the parser has peeked the first, so the wait-for-more path is taken every
// time, not by luck of scheduling.
func TestReadProxyHeaderSplit(t *testing.T) {
	for _, tt := range goodCases() {
		t.Run(tt.name, func(t *testing.T) {
			client, server := tcpPair(t)
			cut := len(tt.hdr) / 2
			client.Write(tt.hdr[:cut])
			peeked := make(chan struct{})
			var once bool
			// A peek sees at most peekSize bytes of a longer first part.
			opts := ProxyOptions{onPeek: func(n int) {
				if n == min(cut, peekSize) && !once {
					once = true
					close(peeked)
				}
			}}
			go func() {
				select {
				case <-peeked:
				case <-time.After(5 * time.Second):
				}
				client.Write(append(bytes.Clone(tt.hdr[cut:]), payload...))
				client.CloseWrite()
			}()
			h, err := ReadProxyHeader(context.Background(), server, opts)
			if err != nil || h != tt.want {
				t.Fatalf("got %+v, %v; want %+v", h, err, tt.want)
			}
			if !once {
				t.Error("the parser never saw the first part alone")
			}
			if rest := readRawRemainder(t, server); string(rest) != payload {
				t.Errorf("left in the socket: %q, want %q", rest, payload)
			}
		})
	}
}

func TestReadProxyHeaderPeerClosesMidHeader(t *testing.T) {
	client, server := tcpPair(t)
	peeked := make(chan struct{})
	var once bool
	opts := ProxyOptions{Timeout: 10 * time.Second, onPeek: func(int) {
		if !once {
			once = true
			close(peeked)
		}
	}}
	client.Write([]byte("PROXY TCP6 2001:db8::1"))
	go func() {
		<-peeked
		client.CloseWrite()
	}()
	start := time.Now()
	_, err := ReadProxyHeader(context.Background(), server, opts)
	if reasonOf(err) != ProxyTruncated {
		t.Fatalf("error %v, want truncated", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("noticed the close only after %v", d)
	}
}

func TestReadProxyHeaderContext(t *testing.T) {
	t.Run("cancel", func(t *testing.T) {
		client, server := tcpPair(t)
		client.Write([]byte("PROXY TCP4 "))
		ctx, cancel := context.WithCancel(context.Background())
		opts := ProxyOptions{Timeout: 10 * time.Second, onPeek: func(int) { cancel() }}
		start := time.Now()
		_, err := ReadProxyHeader(ctx, server, opts)
		if !errors.Is(err, context.Canceled) || reasonOf(err) != ProxyReadError {
			t.Fatalf("error %v, want cancellation", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("cancellation took %v", d)
		}
	})
	t.Run("deadline before timeout", func(t *testing.T) {
		client, server := tcpPair(t)
		client.Write([]byte("PROXY TCP4 "))
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := ReadProxyHeader(ctx, server, ProxyOptions{Timeout: 10 * time.Second})
		if reasonOf(err) != ProxyTimeout || time.Since(start) > 5*time.Second {
			t.Fatalf("after %v: %v, want a timeout near 200ms", time.Since(start), err)
		}
	})
	t.Run("already cancelled", func(t *testing.T) {
		_, server := tcpPair(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := ReadProxyHeader(ctx, server, ProxyOptions{}); !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want cancellation", err)
		}
	})
}

// TestReadProxyHeaderClearsDeadline: after a header is read the connection
// has no read deadline left, so a caller that keeps serving it is not cut
// off by the header timeout.
func TestReadProxyHeaderClearsDeadline(t *testing.T) {
	for name, pair := range map[string]func(t *testing.T) (net.Conn, net.Conn){
		"tcp": func(t *testing.T) (net.Conn, net.Conn) { c, s := tcpPair(t); return c, s },
		"pipe": func(t *testing.T) (net.Conn, net.Conn) {
			c, s := net.Pipe()
			t.Cleanup(func() { c.Close(); s.Close() })
			return c, s
		},
	} {
		t.Run(name, func(t *testing.T) {
			client, server := pair(t)
			go client.Write([]byte("PROXY UNKNOWN\r\n"))
			const timeout = 50 * time.Millisecond
			ctx, cancel := context.WithCancel(context.Background())
			if _, err := ReadProxyHeader(ctx, server, ProxyOptions{Timeout: timeout}); err != nil {
				t.Fatal(err)
			}
			cancel() // a late cancellation must not touch the deadline either
			// Waiting out the header timeout is the point of this test.
			time.Sleep(2 * timeout)
			go client.Write([]byte("x"))
			var b [1]byte
			if _, err := server.Read(b[:]); err != nil {
				t.Fatalf("read after the header timeout: %v", err)
			}
		})
	}
}

// TestParseAllocations keeps the buffer parse allocation-free except where
// the standard library needs a string: netip.ParseAddr, once per v1 IPv6
// address, and the CRC32C check's zeroed field.
func TestParseAllocations(t *testing.T) {
	for _, tt := range goodCases() {
		want := 0.0
		switch {
		case strings.HasPrefix(tt.name, "v1 TCP6"):
			want = 2
		case strings.Contains(tt.name, "CRC32C"):
			want = 1
		}
		if got := testing.AllocsPerRun(50, func() { ParseProxyHeader(tt.hdr, ProxyOptions{}) }); got > want {
			t.Errorf("%s: %v allocations, want at most %v", tt.name, got, want)
		}
	}
}

// FuzzParseProxy parses arbitrary bytes as a PROXY header and holds every
// accepted header to what the dispatcher needs of it: it is exactly the
// bytes the exact-read path consumes, and it goes through the hand-off
// encoder and decoder unchanged.
func FuzzParseProxy(f *testing.F) {
	for _, tt := range goodCases() {
		f.Add(append(bytes.Clone(tt.hdr), payload...))
	}
	for _, tt := range badCases() {
		f.Add(tt.in)
	}
	for _, tt := range addrCases() {
		f.Add(tt.hdr)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in := bytes.Clone(data)
		h, n, err := ParseProxyHeader(in, ProxyOptions{})
		if !bytes.Equal(in, data) {
			t.Fatal("input modified")
		}
		// The exact-read path, which never reads past a header, agrees: it
		// accepts the same header and leaves exactly the bytes after it.
		r := bytes.NewReader(data)
		rh, rerr := readExact(r, defaultProxyMaxV2Length)
		if err != nil {
			var pe *ProxyError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ProxyError", err)
			}
			switch pe.Reason {
			case ProxyMalformed, ProxyTooLong, ProxyUnsupported, ProxyTruncated:
			default:
				t.Fatalf("buffer parse gave reason %v", pe.Reason)
			}
			if n != 0 || h != (ProxyHeader{}) {
				t.Fatalf("error %v with n=%d, header %+v", err, n, h)
			}
			if rerr == nil {
				t.Fatalf("parse refused (%v) what the exact reader accepts as %+v", err, rh)
			}
			return
		}
		if rerr != nil || rh != h || r.Len() != len(data)-n {
			t.Fatalf("exact reader: %+v, %v, %d bytes left; parse: %+v, %d of %d bytes", rh, rerr, r.Len(), h, n, len(data))
		}
		if n < minHeaderLen || n > len(data) {
			t.Fatalf("consumed %d of %d bytes", n, len(data))
		}
		if h.Version != 1 && h.Version != 2 {
			t.Fatalf("version %d", h.Version)
		}
		// Local means no address at all; otherwise there is a source, and a
		// destination, if kept, of the source's family.
		if h.Local != (h.Source == netip.AddrPort{} && h.Dest == netip.AddrPort{}) {
			t.Fatalf("Local=%v with addresses %v %v", h.Local, h.Source, h.Dest)
		}
		if !h.Local && (!h.Source.IsValid() || h.Dest.IsValid() && h.Source.Addr().Is4() != h.Dest.Addr().Is4()) {
			t.Fatalf("bad addresses %v %v", h.Source, h.Dest)
		}
		handsOff(t, h)
		if h2, n2, err := ParseProxyHeader(data[:n], ProxyOptions{}); err != nil || h2 != h || n2 != n {
			t.Fatalf("header alone parses as %+v, %d, %v", h2, n2, err)
		}
		// Every proper prefix of a valid header must ask for more bytes,
		// never refuse it: the peeking reader relies on this.
		for i := range n {
			if _, _, err := ParseProxyHeader(data[:i], ProxyOptions{}); reasonOf(err) != ProxyTruncated {
				t.Fatalf("prefix of %d bytes: %v, want truncated", i, err)
			}
		}
	})
}

func BenchmarkParseProxyHeader(b *testing.B) {
	for _, tt := range goodCases() {
		switch tt.name {
		case "v1 TCP4", "v1 TCP6", "v1 UNKNOWN short", "v2 PROXY TCP4", "v2 PROXY TCP6", "v2 TCP4 with TLVs", "v2 TCP4 with CRC32C":
		default:
			continue
		}
		in := append(bytes.Clone(tt.hdr), payload...)
		b.Run(strings.ReplaceAll(tt.name, " ", "_"), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := ParseProxyHeader(in, ProxyOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReadProxyHeaderLoopback reads headers sent back to back on one
// loopback TCP connection: the system calls, deadline handling and parse of
// one ReadProxyHeader, without the cost of accepting a connection.
func BenchmarkReadProxyHeaderLoopback(b *testing.B) {
	for _, tt := range goodCases() {
		if tt.name != "v1 TCP4" && tt.name != "v2 PROXY TCP6" {
			continue
		}
		b.Run(strings.ReplaceAll(tt.name, " ", "_"), func(b *testing.B) {
			client, server := tcpPair(b)
			n := b.N
			go func() {
				batch := bytes.Repeat(tt.hdr, 64)
				for sent := 0; sent < n; sent += 64 {
					k := min(64, n-sent)
					if _, err := client.Write(batch[:k*len(tt.hdr)]); err != nil {
						return
					}
				}
			}()
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for range n {
				if _, err := ReadProxyHeader(ctx, server, ProxyOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
