package report

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden datagrams in testdata/")

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// spaced is b as the goldens and docs/report.md show it: "50 48 52 50 ...".
func spaced(b []byte) string {
	var s strings.Builder
	for i, c := range b {
		if i > 0 {
			s.WriteByte(' ')
		}
		s.WriteString(hex.EncodeToString([]byte{c}))
	}
	return s.String()
}

// goldens are the datagrams of every version as this release writes them. The files
// under testdata/ are the frozen format: a later release must decode them
// to the same messages (TestGolden), whatever it writes itself.
var goldens = []struct {
	file string
	m    Message
}{
	{"hello.hex", Hello{Release: "v0.3.0", HandoffVersions: []uint8{1}, Features: FeatureReloadOnSIGHUP}},
	{"hello-nofeatures.hex", Hello{Release: "(devel)", HandoffVersions: []uint8{1}}},
	{"hello-unknown-feature.hex", Hello{Release: "v9.0.0", HandoffVersions: []uint8{1, 2, 7}, Features: FeatureReloadOnSIGHUP | 1<<31}},
	{"draining.hex", Draining{}},
	{"closed.hex", Closed{Count: 1}},
	{"closed-large.hex", Closed{Count: 1<<40 + 5}},
	{"drain-result.hex", DrainResult{Drained: 200, Cut: 3}},
	{"drain-result-zero.hex", DrainResult{}},
	{"drain-result-large.hex", DrainResult{Drained: 1<<63 + 1, Cut: 1<<32 + 7}},
}

func TestGolden(t *testing.T) {
	for _, g := range goldens {
		t.Run(g.file, func(t *testing.T) {
			b, err := g.m.AppendBinary(nil)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join("testdata", g.file)
			if *update {
				if err := os.WriteFile(p, []byte(spaced(b)+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			text, err := os.ReadFile(p)
			if err != nil {
				t.Fatalf("%v (run go test ./report -update)", err)
			}
			want := unhex(t, string(text))
			if !bytes.Equal(b, want) {
				t.Errorf("encoding changed:\n got %s\nwant %s\n(a change of layout is a new version: see docs/report.md)", spaced(b), spaced(want))
			}
			got, err := Decode(want)
			if err != nil {
				t.Fatalf("decoding the golden datagram: %v", err)
			}
			if !reflect.DeepEqual(got, g.m) {
				t.Errorf("decoded %#v, want %#v", got, g.m)
			}
		})
	}
}

// docExample is the Hello of docs/report.md.
const docExample = "50 48 52 50 01 01 00 00 00 01 06 01 76 30 2e 33 2e 30 01"

func TestDocExample(t *testing.T) {
	b, err := Hello{Release: "v0.3.0", HandoffVersions: []uint8{1}, Features: FeatureReloadOnSIGHUP}.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := spaced(b); got != docExample {
		t.Fatalf("encoding of the documented example:\n got %s\nwant %s", got, docExample)
	}
	doc, err := os.ReadFile("../docs/report.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{docExample, "50 48 52 50 01 02", "50 48 52 50 01 03 00 00 00 00 00 00 00 2a", docDrainResult} {
		if !strings.Contains(string(doc), s) {
			t.Errorf("docs/report.md does not contain the bytes %q", s)
		}
	}
	c, _ := Closed{Count: 42}.AppendBinary(nil)
	if spaced(c) != "50 48 52 50 01 03 00 00 00 00 00 00 00 2a" {
		t.Errorf("Closed{42} encodes as %s", spaced(c))
	}
	if d, _ := (DrainResult{Drained: 200, Cut: 3}).AppendBinary(nil); spaced(d) != docDrainResult {
		t.Errorf("DrainResult{200, 3} encodes as %s", spaced(d))
	}
}

// docDrainResult is the DrainResult{Drained: 200, Cut: 3} of docs/report.md.
const docDrainResult = "50 48 52 50 02 04 00 00 00 00 00 00 00 c8 00 00 00 00 00 00 00 03"

func TestEncodeRejects(t *testing.T) {
	tests := []struct {
		name string
		m    Message
		want string
	}{
		{name: "empty release", m: Hello{HandoffVersions: []uint8{1}}, want: "empty release"},
		{name: "long release", m: Hello{Release: strings.Repeat("v", MaxReleaseLen+1), HandoffVersions: []uint8{1}}, want: "longer than 128"},
		{name: "space in release", m: Hello{Release: "v1 beta", HandoffVersions: []uint8{1}}, want: "printable ASCII"},
		{name: "non-ASCII release", m: Hello{Release: "vé", HandoffVersions: []uint8{1}}, want: "printable ASCII"},
		{name: "no hand-off version", m: Hello{Release: "v1"}, want: "no hand-off header version"},
		{name: "hand-off version 0", m: Hello{Release: "v1", HandoffVersions: []uint8{0, 1}}, want: "version 0"},
		{name: "unordered versions", m: Hello{Release: "v1", HandoffVersions: []uint8{2, 1}}, want: "increasing order"},
		{name: "duplicate versions", m: Hello{Release: "v1", HandoffVersions: []uint8{1, 1}}, want: "increasing order"},
		{name: "too many versions", m: Hello{Release: "v1", HandoffVersions: make([]uint8, MaxHandoffVersions+1)}, want: "more than 16"},
		{name: "closed 0", m: Closed{}, want: "count 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.m.AppendBinary([]byte("keep"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
			if string(b) != "keep" {
				t.Errorf("buffer changed to %q on error", b)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	hello := "50 48 52 50 01 01 00 00 00 01 06 01 76 30 2e 33 2e 30 01"
	tests := []struct {
		name string
		hex  string
		want string
	}{
		{name: "empty", hex: "", want: "bad magic"},
		{name: "bad magic", hex: "50 48 48 4f 01 01", want: `bad magic "PHHO"`},
		{name: "magic only", hex: "50 48 52 50", want: "no version byte"},
		{name: "version 0", hex: "50 48 52 50 00 02", want: "version 0"},
		{name: "no kind", hex: "50 48 52 50 01", want: "shorter than the 6-byte header"},
		{name: "unknown kind", hex: "50 48 52 50 01 05", want: "unknown message kind 5"},
		{name: "unknown kind v2", hex: "50 48 52 50 02 09", want: "unknown message kind 9"},
		{name: "drain result as version 1", hex: "50 48 52 50 01 04" + strings.Repeat(" 00", 16), want: "drain result in a version-1 datagram; it is a version-2 message"},
		{name: "hello as version 2", hex: strings.Replace(hello, "50 48 52 50 01", "50 48 52 50 02", 1), want: "hello in a version-2 datagram; it is a version-1 message"},
		{name: "closed as version 2", hex: "50 48 52 50 02 03 00 00 00 00 00 00 00 01", want: "closed in a version-2 datagram"},
		{name: "drain result short", hex: "50 48 52 50 02 04" + strings.Repeat(" 00", 15), want: "drain result: 15 bytes after the header, want 16"},
		{name: "drain result long", hex: "50 48 52 50 02 04" + strings.Repeat(" 00", 17), want: "drain result: 17 bytes after the header, want 16"},
		{name: "drain result no body", hex: "50 48 52 50 02 04", want: "drain result: 0 bytes"},
		{name: "kind 0", hex: "50 48 52 50 01 00", want: "unknown message kind 0"},
		{name: "draining with body", hex: "50 48 52 50 01 02 00", want: "1 bytes after the header, want none"},
		{name: "closed short", hex: "50 48 52 50 01 03 00 00 00 00 00 00 01", want: "7 bytes after the header, want 8"},
		{name: "closed long", hex: "50 48 52 50 01 03 00 00 00 00 00 00 00 01 00", want: "9 bytes after the header"},
		{name: "closed 0", hex: "50 48 52 50 01 03 00 00 00 00 00 00 00 00", want: "count 0"},
		{name: "hello short", hex: "50 48 52 50 01 01 00 00 00 01 06", want: "shorter than the fixed 6"},
		{name: "hello trailing byte", hex: hello + " 00", want: "but 8 bytes follow"},
		{name: "hello truncated", hex: strings.TrimSuffix(hello, " 01"), want: "but 6 bytes follow"},
		{name: "hello empty release", hex: "50 48 52 50 01 01 00 00 00 00 00 01 01", want: "empty release"},
		{name: "hello space in release", hex: "50 48 52 50 01 01 00 00 00 00 02 01 76 20 01", want: "byte 0x20 in release"},
		{name: "hello release long", hex: "50 48 52 50 01 01 00 00 00 00 81 01" + strings.Repeat(" 76", 129) + " 01", want: "longer than 128"},
		{name: "hello no versions", hex: "50 48 52 50 01 01 00 00 00 00 01 00 76", want: "no hand-off header version"},
		{name: "hello version 0", hex: "50 48 52 50 01 01 00 00 00 00 01 01 76 00", want: "hand-off header version 0"},
		{name: "hello unordered", hex: "50 48 52 50 01 01 00 00 00 00 01 02 76 02 01", want: "increasing order"},
		{name: "hello 17 versions", hex: "50 48 52 50 01 01 00 00 00 00 01 11 76" + strings.Repeat(" 01", 17), want: "more than 16"},
		{name: "too long", hex: "50 48 52 50 01 02" + strings.Repeat(" 00", MaxDatagramLen), want: "longer than 4096"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Decode(unhex(t, tt.hex))
			if err == nil {
				t.Fatalf("decoded %#v, want an error", m)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not match ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			var ve *VersionError
			if errors.As(err, &ve) {
				t.Errorf("error %v is a VersionError", err)
			}
		})
	}
}

// TestNewerVersion: a datagram of a version this receiver does not know,
// whatever its length and content, is a VersionError naming both
// versions, never a plain layout error.
func TestNewerVersion(t *testing.T) {
	for _, tt := range []struct {
		name string
		b    []byte
	}{
		{name: "v3 hello", b: []byte("PHRP\x03\x01anything")},
		{name: "v3 header only", b: []byte("PHRP\x03")},
		{name: "v255 new kind", b: []byte("PHRP\xff\x09")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.b)
			var ve *VersionError
			if !errors.As(err, &ve) {
				t.Fatalf("error %v, want a *VersionError", err)
			}
			if ve.Version != tt.b[4] {
				t.Errorf("Version = %d, want %d", ve.Version, tt.b[4])
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not match ErrMalformed", err)
			}
			msg := err.Error()
			for _, want := range []string{"version " + strconv.Itoa(int(tt.b[4])), "report versions 1 to 2", Release()} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not name %q", msg, want)
				}
			}
		})
	}
}

// TestCompatible: the supervisor checks a worker's Hello against the
// hand-off header version it sends; the error names both releases and
// both versions.
func TestCompatible(t *testing.T) {
	h := Hello{Release: "v0.3.0", HandoffVersions: []uint8{1}}
	if err := h.Compatible(1); err != nil {
		t.Errorf("Compatible(1) = %v", err)
	}
	if err := (Hello{Release: "v0.5.0", HandoffVersions: []uint8{1, 2}}).Compatible(2); err != nil {
		t.Errorf("a worker of two versions: Compatible(2) = %v", err)
	}
	for _, v := range []int{2, 0, 257} {
		err := h.Compatible(v)
		if !errors.Is(err, ErrIncompatible) {
			t.Fatalf("Compatible(%d) = %v, want ErrIncompatible", v, err)
		}
		want := "worker library v0.3.0 understands hand-off header versions [1]; this supervisor (" + Release() + ") sends version "
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Compatible(%d) = %q, want it to contain %q", v, err, want)
		}
	}
}

func TestNewHello(t *testing.T) {
	h := NewHello(FeatureReloadOnSIGHUP)
	if h.Release != Release() || !reflect.DeepEqual(h.HandoffVersions, []uint8{1}) || h.Features != FeatureReloadOnSIGHUP {
		t.Errorf("NewHello = %#v", h)
	}
	if _, err := h.AppendBinary(nil); err != nil {
		t.Errorf("NewHello does not encode: %v", err)
	}
}

func TestFeaturesString(t *testing.T) {
	for f, want := range map[Features]string{
		0:                            "none",
		FeatureReloadOnSIGHUP:        "reload-on-sighup",
		FeatureReloadOnSIGHUP | 1<<2: "reload-on-sighup|0x4",
		1 << 31:                      "0x80000000",
	} {
		if got := f.String(); got != want {
			t.Errorf("Features(%#x).String() = %q, want %q", uint32(f), got, want)
		}
	}
}

// TestRelease: the release is a valid Hello.Release whatever the build.
func TestRelease(t *testing.T) {
	if err := checkRelease(Release()); err != nil {
		t.Errorf("Release() = %q: %v", Release(), err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, g := range goldens {
		b, err := g.m.AppendBinary(nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("PHRP\x02\x01"))
	f.Add([]byte("PHRP\x03\x04"))
	f.Add([]byte("PHRP\x01\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Add([]byte("PHRP\x01\x01\x00\x00\x00\x00\x01\x02v\x02\x01"))
	f.Add([]byte("PHRP\x01\x03\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not match ErrMalformed", err)
			}
			if m != nil {
				t.Fatalf("message %#v with error %v", m, err)
			}
			return
		}
		// What Decode accepts, the encoder writes byte for byte: one
		// encoding per message, so nothing can hide in the layout.
		out, err := m.AppendBinary(nil)
		if err != nil {
			t.Fatalf("decoded %#v does not encode: %v", m, err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip:\n  in % x\n out % x", b, out)
		}
		if len(b) > maxLen1 {
			t.Fatalf("accepted %d bytes, more than the longest datagram of any version (%d)", len(b), maxLen1)
		}
		// Each kind travels in the version that introduced it, only.
		if b[offVersion] != m.Kind().version() {
			t.Fatalf("accepted %s in a version-%d datagram", m.Kind(), b[offVersion])
		}
	})
}
