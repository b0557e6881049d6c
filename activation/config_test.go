package activation_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/powerhouse/powerhouse/activation"
)

type greeting struct {
	Greeting string `json:"greeting"`
	Port     int    `json:"port"`
}

func TestConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "web.json")
	writeFile(t, path, `{"greeting": "a", "port": 9999, "extra": true}`)
	c := &activation.ConfigFile{Path: path}
	var calls []string
	c.OnReload(func() { calls = append(calls, "first") })
	c.OnReload(func() { calls = append(calls, "second") })

	var v greeting
	if err := c.Decode(&v); err != nil {
		t.Fatal(err)
	}
	if v != (greeting{"a", 9999}) {
		t.Errorf("Decode: %+v", v)
	}

	writeFile(t, path, `{"greeting": "b"}`)
	v = greeting{}
	if err := c.Decode(&v); err != nil || v.Greeting != "a" {
		t.Errorf("before Reload: %+v, %v; want the first snapshot", v, err)
	}
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(calls, ",") != "first,second" {
		t.Errorf("callbacks: %v", calls)
	}
	v = greeting{}
	if err := c.Decode(&v); err != nil || v.Greeting != "b" {
		t.Errorf("after Reload: %+v, %v", v, err)
	}

	calls = nil
	writeFile(t, path, `{"greeting": `)
	if err := c.Reload(); err == nil || !strings.Contains(err.Error(), "JSON") {
		t.Errorf("Reload of bad JSON: %v", err)
	}
	os.Remove(path)
	if err := c.Reload(); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Reload of a missing file: %v", err)
	}
	if calls != nil {
		t.Errorf("callbacks ran after failed reloads: %v", calls)
	}
	v = greeting{}
	if err := c.Decode(&v); err != nil || v.Greeting != "b" {
		t.Errorf("after failed reloads: %+v, %v; want the last good snapshot", v, err)
	}
}

func TestConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name   string
		path   string
		noConf bool
	}{
		{name: "no path", path: "", noConf: true},
		{name: "missing file", path: filepath.Join(dir, "missing.json")},
		{name: "not JSON", path: func() string {
			p := filepath.Join(dir, "bad.json")
			os.WriteFile(p, []byte("port = 1"), 0o600)
			return p
		}()},
		{name: "wrong type", path: func() string {
			p := filepath.Join(dir, "type.json")
			os.WriteFile(p, []byte(`{"port": "x"}`), 0o600)
			return p
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v greeting
			err := (&activation.ConfigFile{Path: tt.path}).Decode(&v)
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, activation.ErrNoConfig) != tt.noConf {
				t.Errorf("errors.Is(%v, ErrNoConfig) = %v", err, !tt.noConf)
			}
		})
	}
}

func TestReloadWithoutPath(t *testing.T) {
	ran := false
	c := &activation.ConfigFile{}
	c.OnReload(func() { ran = true })
	if err := c.Reload(); err != nil || !ran {
		t.Errorf("Reload without a file: %v, callback ran: %v", err, ran)
	}
}

func TestIdentity(t *testing.T) {
	tests := []struct {
		name            string
		group, instance string
		worker          bool
	}{
		{name: "worker", group: "web", instance: "3", worker: true},
		{name: "outside", group: "", instance: "", worker: false},
		{name: "half", group: "web", instance: "", worker: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(activation.EnvGroup, tt.group)
			t.Setenv(activation.EnvInstance, tt.instance)
			if activation.IsWorker() != tt.worker || activation.Group() != tt.group || activation.Instance() != tt.instance {
				t.Errorf("IsWorker, Group, Instance = %v, %q, %q", activation.IsWorker(), activation.Group(), activation.Instance())
			}
		})
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	// Write and rename, as a careful writer of the configuration does, so
	// the worker never reads half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
