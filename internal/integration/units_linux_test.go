package integration

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/units"
)

// TestIntegrationUnitsLoad installs the units of testdata/demo.toml in a
// real systemd: every unit (and an instance of every template) loads with
// no bad setting, and the socket units (direct and PROXY) start and bind
// their ports.
func TestIntegrationUnitsLoad(t *testing.T) {
	h := newHouse(t, demoConfig(t))
	names := []string{units.Target}
	for _, w := range h.cfg.Workers {
		names = append(names, units.Group{Name: w.Name}.SupervisorUnit(), units.Group{Name: w.Name}.Instance(1), units.Group{Name: w.Name}.Instance(w.Amount))
		names = append(names, generator.GroupSockets(&w)...)
		if w.Sticky {
			names = append(names, units.Group{Name: w.Name}.HandoffSocket(1))
		}
	}
	for _, n := range names {
		if got := h.show(n, "LoadState"); got != "loaded" {
			t.Errorf("%s: LoadState=%s (LoadError=%s)", n, got, h.show(n, "LoadError"))
		}
	}
	// systemd logs unknown or bad settings while loading units.
	if j := h.journal(); strings.Contains(j, "Unknown key") || strings.Contains(j, "bad-setting") ||
		strings.Contains(j, "Failed to parse") || strings.Contains(j, "Ignoring") {
		t.Errorf("systemd complained while loading the units:\n%s", j)
	}
	for _, w := range h.cfg.Workers {
		if len(w.Listen) == 0 {
			continue
		}
		for _, s := range generator.GroupSockets(&w) {
			h.systemctl("start", s)
			if got := h.show(s, "ActiveState"); got != "active" {
				t.Errorf("%s: %s", s, got)
			}
		}
		for _, l := range w.Listen {
			c, err := net.DialTimeout("tcp", l.Address, 2*time.Second)
			if err != nil {
				t.Errorf("%s: %s does not accept: %v", w.Name, l.Address, err)
				continue
			}
			c.Close()
		}
	}
}

// TestIntegrationExecQuoting runs a worker whose command line holds every
// character systemd treats specially: it must receive exactly these words.
func TestIntegrationExecQuoting(t *testing.T) {
	words := []string{"a b", `q"uote`, `back\slash`, "'single'", "50%i", "$HOME", "${HOME}", ";", "x;y", "", "\\;", "%%"}
	cfg := `
[[worker]]
name = "echo"
type = "child"
reloadable = false
amount = 1
exec = ["/bin/sh", "-c", 'for a; do printf "%s\n" "$a"; done > ` + boxOut + `/argv', "sh", ` + tomlList(words) + `]
`
	h := newHouse(t, cfg)
	h.systemctl("start", units.Group{Name: "echo"}.Instance(1))
	var got []byte
	waitFor(t, 10*time.Second, "the worker to write its arguments", func() bool {
		b, err := os.ReadFile(h.box.Path(boxOut + "/argv"))
		got = b
		return err == nil && strings.Count(string(b), "\n") >= len(words)
	})
	want := strings.Join(words, "\n") + "\n"
	if string(got) != want {
		t.Errorf("worker got arguments:\n%q\nwant\n%q", got, want)
	}
}

func tomlList(words []string) string {
	var q []string
	for _, w := range words {
		r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
		q = append(q, `"`+r.Replace(w)+`"`)
	}
	return strings.Join(q, ", ")
}
