package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/units"
)

// scaleKernelDropIn makes a kernel-mode group's supervisor drop-in list
// the sockets of instances 1..n (Sockets=), then has systemd reload, before
// the supervisor is asked to scale: the supervisor gets an instance's
// socket only at its own start, and restarts itself to take those of the
// instances the scale starts (docs/ARCHITECTURE.md, "Picking up a
// re-created socket"), which a drop-in listing fewer would not bring. The
// drop-in is rewritten where install put it; units made by the systemd
// generator are made again by the reload from the amount just saved. A
// group in hand-off mode needs nothing.
func scaleKernelDropIn(e *env, cfgPath, group string, n int, user bool) error {
	c, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	w := c.Worker(group)
	if w == nil || !w.KernelDispatch() {
		return nil
	}
	lay, err := newLayout(user, "")
	if err != nil {
		return err
	}
	o := generator.Options{ConfigPath: c.File, User: user}
	u := generator.KernelDropIn(w, o, n)
	p := filepath.Join(lay.unitDir, u.Name)
	if _, err := os.Stat(p); err == nil {
		if _, err := units.WriteFile(p, u.Render(o), units.Public); err != nil {
			return fmt.Errorf("scale %s: %w", group, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("scale %s: %w", group, err)
	}
	m, err := connect(e.ctx, user)
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.DaemonReload(e.ctx); err != nil {
		return fmt.Errorf("scale %s: systemctl daemon-reload: %w", group, err)
	}
	return nil
}
