package supervisor

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzRequest: whatever a local user writes to the control socket, the
// request reader and checker return a call or an error, never panic, and
// a call they accept says the same once encoded again.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		`{"method":"io.powerhouse.Supervisor.Status"}`,
		`{"method":"io.powerhouse.Supervisor.Reload","more":true}`,
		`{"method":"io.powerhouse.Supervisor.Scale","parameters":{"amount":3}}`,
		`{"method":"io.powerhouse.Supervisor.Reconfigure","parameters":{}}`,
		`{"method":"io.powerhouse.Supervisor.Scale","parameters":{"amount":3},"x":1}`,
		`{"method":"`, "\x00", "",
	} {
		f.Add([]byte(s + "\x00"))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := readRequest(bytes.NewReader(data))
		if err != nil {
			return
		}
		c, err := parseCall(req)
		if err != nil {
			if _, ok := err.(*CallError); !ok || err.(*CallError).Name != ErrInvalid {
				t.Fatalf("parseCall error %v is not %s", err, ErrInvalid)
			}
			return
		}
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		again, err := readRequest(bytes.NewReader(append(b, 0)))
		if err != nil {
			t.Fatalf("re-encoded request %s: %v", b, err)
		}
		c2, err := parseCall(again)
		if err != nil || c2 != c {
			t.Fatalf("re-encoded %s: %+v %v, want %+v", b, c2, err, c)
		}
	})
}
