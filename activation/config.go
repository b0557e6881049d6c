package activation

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
)

// ErrNoConfig is returned (wrapped) by Config and ConfigFile.Decode when no
// configuration file is named: the process was not started by PowerHouse
// (POWERHOUSE_CONFIG is unset). Callers usually fall back to defaults.
var ErrNoConfig = errors.New("no PowerHouse configuration: " + EnvConfig + " is not set")

// ConfigFile is a group's configuration: a JSON file, read on first use and
// re-read only by Reload, so a worker sees one consistent snapshot between
// reconfigurations (PowerHouse writes the file, then sends SIGHUP).
//
// The package-level Config and OnReconfigure use a default ConfigFile for
// $POWERHOUSE_CONFIG; make your own to avoid that shared state.
type ConfigFile struct {
	// Path is the JSON file. Empty: there is no configuration (Decode
	// returns ErrNoConfig).
	Path string

	reload sync.Mutex // serialises Reload, callbacks included
	mu     sync.Mutex // guards the fields below
	data   []byte     // nil until loaded
	fns    []func()
}

// Decode decodes the current snapshot of the configuration into v with
// encoding/json, reading the file first if this is the first use.
func (c *ConfigFile) Decode(v any) error {
	c.mu.Lock()
	data := c.data
	c.mu.Unlock()
	if data == nil {
		if c.Path == "" {
			return fmt.Errorf("activation: config: %w", ErrNoConfig)
		}
		var err error
		if data, err = c.read(); err != nil {
			return err
		}
		c.mu.Lock()
		if c.data == nil { // a concurrent Reload may have won; keep the newer
			c.data = data
		}
		data = c.data
		c.mu.Unlock()
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("activation: config %s: %w", c.Path, err)
	}
	return nil
}

// Reload re-reads the file and, if it is valid JSON, makes it the current
// snapshot and then runs the OnReload functions, in the order they were
// registered, on the calling goroutine. If the file cannot be read or is
// not JSON, the previous snapshot stays, no function runs, and the error is
// returned. With no Path there is nothing to read and the functions run.
func (c *ConfigFile) Reload() error {
	c.reload.Lock()
	defer c.reload.Unlock()
	if c.Path != "" {
		data, err := c.read()
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.data = data
		c.mu.Unlock()
	}
	c.mu.Lock()
	fns := slices.Clone(c.fns)
	c.mu.Unlock()
	for _, f := range fns {
		f()
	}
	return nil
}

// OnReload registers f to run after each successful Reload.
func (c *ConfigFile) OnReload(f func()) {
	c.mu.Lock()
	c.fns = append(c.fns, f)
	c.mu.Unlock()
}

func (c *ConfigFile) read() ([]byte, error) {
	data, err := os.ReadFile(c.Path)
	if err != nil {
		return nil, fmt.Errorf("activation: config: %w", err)
	}
	if !json.Valid(data) {
		return nil, fmt.Errorf("activation: config %s: not valid JSON", c.Path)
	}
	return data, nil
}

// The package-level default behind Config, OnReconfigure and Serve. It is
// the one piece of package state: a worker has one configuration and one
// SIGHUP, and these calls are the convenience for that.
var std struct {
	once  sync.Once
	cfg   *ConfigFile
	hup   sync.Once
	hupOn atomic.Bool // the SIGHUP handler runs: Serve declares reload support
}

func defaultConfig() *ConfigFile {
	std.once.Do(func() { std.cfg = &ConfigFile{Path: os.Getenv(EnvConfig)} })
	return std.cfg
}

// Config decodes the group's configuration ($POWERHOUSE_CONFIG, the JSON of
// the group's [worker.config] table) into v, as encoding/json does. It
// returns the snapshot read at first use or at the last SIGHUP. Outside
// PowerHouse it returns an error matching ErrNoConfig.
func Config(v any) error { return defaultConfig().Decode(v) }

// OnReconfigure registers f to run after SIGHUP has re-read the
// configuration (see ConfigFile.Reload); from then on SIGHUP no longer
// terminates the process. If the file cannot be read, the error is logged
// (standard log package), the previous configuration stays and f does not
// run. Functions run one at a time, on a goroutine of the package.
func OnReconfigure(f func()) {
	defaultConfig().OnReload(f)
	handleSIGHUP()
}

// handleSIGHUP starts, once per process, the goroutine that reloads the
// default configuration on SIGHUP.
func handleSIGHUP() {
	std.hup.Do(func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGHUP)
		std.hupOn.Store(true)
		go func() {
			for range ch {
				if err := defaultConfig().Reload(); err != nil {
					log.Printf("activation: SIGHUP: %v; keeping the previous configuration", err)
				}
			}
		}()
	})
}
