package units

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
)

// Sysusers is the sysusers.d(5) file that declares the workers' static
// system user and group, config.DefaultUser. The same bytes are what
// `make install` ships.
//
//go:embed sysusers.conf
var Sysusers []byte

// SysusersPath is where `powerhouse install` writes Sysusers: under /etc,
// like everything else install writes (the administrator's directory;
// /usr belongs to the package manager and may be read-only). `make
// install` ships the same file as PREFIX/lib/sysusers.d/powerhouse.conf.
const SysusersPath = "/etc/sysusers.d/powerhouse.conf"

// ApplySysusers creates the user and group SysusersPath declares, with
// systemd-sysusers, in the system under root ("" or "/": the running
// one). Under another root it acts only when root has a user database
// (ROOT/etc/passwd), as an image does; a packaging tree has none and gets
// the user from systemd-sysusers.service at its first boot, so applied is
// then false. systemd-sysusers never changes an existing user.
func ApplySysusers(ctx context.Context, root string) (applied bool, err error) {
	args := []string{SysusersPath}
	if root != "" && root != "/" {
		if _, err := os.Stat(filepath.Join(root, "etc", "passwd")); errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		// systemd-sysusers 252 opens a file named on its command line as
		// given, not inside --root.
		args = []string{"--root", root, filepath.Join(root, SysusersPath)}
	}
	out, err := exec.CommandContext(ctx, "systemd-sysusers", args...).CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("systemd-sysusers %v: %w\n%s", args, err, out)
	}
	return true, nil
}
