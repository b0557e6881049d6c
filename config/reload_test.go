package config

import (
	"reflect"
	"strings"
	"testing"
)

func TestReloadSignalAndPublicConfig(t *testing.T) {
	for _, tc := range []struct {
		name       string
		keys       string // TOML lines in the [[worker]] table
		wantSignal string
		wantPublic []string
		wantErr    string // "" for none
	}{
		{name: "defaults"},
		{name: "SIGHUP", keys: `reload_signal = "SIGHUP"`, wantSignal: "SIGHUP"},
		{name: "empty is the default", keys: `reload_signal = ""`},
		{name: "other signal", keys: `reload_signal = "SIGUSR1"`, wantErr: `:4: worker.reload_signal: "SIGUSR1": use "SIGHUP"`},
		{name: "lower case", keys: `reload_signal = "sighup"`, wantErr: `"sighup": use "SIGHUP"`},
		{name: "not a string", keys: `reload_signal = 1`, wantErr: `an integer: use "SIGHUP"`},
		{name: "public keys", keys: `public_config = ["port", "mode"]`, wantPublic: []string{"port", "mode"}},
		{name: "public not a list", keys: `public_config = "port"`, wantErr: "worker.public_config: must be an array"},
		{name: "public not strings", keys: `public_config = [1]`, wantErr: "must hold key names"},
		{name: "public twice", keys: `public_config = ["a", "a"]`, wantErr: `key "a" appears twice`},
		{name: "public empty key", keys: `public_config = [""]`, wantErr: `key ""`},
		{name: "public too many", keys: `public_config = [` + strings.Repeat(`"k",`, MaxPublicConfig+1) + `]`, wantErr: "more than 256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "[[worker]]\nname = \"web\"\nexec = \"/bin/true\"\n" + tc.keys + "\n"
			c, err := Parse("/etc/p.toml", []byte(src))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			w := c.Worker("web")
			if w.ReloadSignal != tc.wantSignal || !reflect.DeepEqual(w.PublicConfig, tc.wantPublic) {
				t.Errorf("reload_signal %q public_config %q, want %q %q", w.ReloadSignal, w.PublicConfig, tc.wantSignal, tc.wantPublic)
			}
			for _, k := range tc.wantPublic {
				if !w.Public(k) {
					t.Errorf("Public(%q) = false", k)
				}
			}
			if w.Public("secret") {
				t.Error("Public(secret) = true")
			}
		})
	}
}
