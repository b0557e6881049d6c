package integration

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/affinity"
)

// TestIntegrationAffinityKeys: a sticky group with affinity = "query:sid"
// and fallback = "spread", under a real systemd with the hello worker:
// every request comes from ONE source address, yet requests without a key
// reach all 4 instances, 200 distinct keys spread over them and each stays
// on its instance, and a session id minted for instance n (the format
// activation.NewSessionID uses) reaches web@n. The worker answers each
// request, so the dispatcher's peek consumed nothing.
func TestIntegrationAffinityKeys(t *testing.T) {
	h := newHouse(t, `title = "affinity"
[[worker]]
name     = "web"
exec     = "`+filepath.Join(boxBin, "hello")+`"
amount   = 4
sticky   = true
listen   = ["127.0.0.1:19400"]
affinity = "query:sid"
fallback = "spread"
`)
	h.systemctl("start", "powerhouse.target")
	const url = "http://127.0.0.1:19400/"
	c := client("127.0.0.1")
	seen := map[string]bool{}
	waitFor(t, 30*time.Second, "requests without a key from one address to reach 4 instances", func() bool {
		if r, err := get(c, url); err == nil {
			seen[r.Instance] = true
		}
		return len(seen) == 4
	})
	where := map[string]string{}
	per := map[string]int{}
	for round := range 2 {
		for i := range 200 {
			key := fmt.Sprintf("client-%03d", i)
			r, err := get(c, url+"?EIO=4&transport=polling&sid="+key)
			if err != nil {
				t.Fatalf("key %s: %v", key, err)
			}
			if round == 0 {
				where[key] = r.Instance
				per[r.Instance]++
			} else if where[key] != r.Instance {
				t.Errorf("key %s reached %s, then %s", key, where[key], r.Instance)
			}
		}
	}
	for n := 1; n <= 4; n++ {
		if got := per[fmt.Sprintf("web@%d", n)]; got < 30 || got > 70 {
			t.Errorf("web@%d got %d of 200 keys, want about 50: %v", n, got, per)
		}
	}
	t.Logf("keys per instance, all from 127.0.0.1: %v", per)
	for n := 1; n <= 4; n++ {
		id := affinity.NewSessionID(n)
		for range 5 {
			r, err := get(c, url+"?sid="+id)
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("web@%d", n); r.Instance != want {
				t.Fatalf("session id %s reached %s, want %s", id, r.Instance, want)
			}
		}
	}
}
