package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

// sysctlConf is units.SysctlFile's content. install ships it, never sets
// it: systemd-sysctl applies it at boot (or when the operator runs it).
const sysctlConf = `# Shipped by powerhouse install: a group uses dispatch = "kernel".
# The connections queued on an instance's listening socket when it closes
# move to another instance of its SO_REUSEPORT group (the steering
# program picks which) rather than being reset.
net.ipv4.tcp_migrate_req = 1
`

// kernelGroups lists the groups of c that use kernel mode.
func kernelGroups(c *config.Config) []string {
	var out []string
	for i := range c.Workers {
		if c.Workers[i].KernelDispatch() {
			out = append(out, c.Workers[i].Name)
		}
	}
	return out
}

// kernelProbe says what the system under root ("" or "/": this one) lacks
// for kernel mode, in one line, or "": the checks that can be made before
// the supervisor tries (it finds the rest, and serves plain SO_REUSEPORT,
// not sticky, when it cannot load the program).
//
//   - /proc/sys/net/ipv4/tcp_migrate_req exists from Linux 5.14, which
//     also brought SK_REUSEPORT_SELECT_OR_MIGRATE;
//   - /proc/sys/kernel/unprivileged_bpf_disabled exists when the kernel
//     has the bpf(2) system call at all (CONFIG_BPF_SYSCALL).
//
// A house installed into an image (--root) is for another kernel: not
// checked.
func kernelProbe(root string) string {
	if root != "" && root != "/" {
		return ""
	}
	var missing []string
	if _, err := os.Stat("/proc/sys/kernel/unprivileged_bpf_disabled"); err != nil {
		missing = append(missing, "the bpf(2) system call (CONFIG_BPF_SYSCALL)")
	}
	if _, err := os.Stat(filepath.Join("/proc/sys/net/ipv4/tcp_migrate_req")); err != nil {
		missing = append(missing, "net.ipv4.tcp_migrate_req (Linux 5.14 or later)")
	}
	if len(missing) == 0 {
		return ""
	}
	s := missing[0]
	if len(missing) > 1 {
		s += " and " + missing[1]
	}
	return "this kernel lacks " + s
}

// warnKernelMode prints one line when c uses kernel mode on a system that
// cannot steer: its groups will serve plain SO_REUSEPORT, not sticky.
func warnKernelMode(e *env, verb string, c *config.Config, root string) {
	gs := kernelGroups(c)
	if len(gs) == 0 {
		return
	}
	if why := kernelProbe(root); why != "" {
		fmt.Fprintf(e.stderr, "%s: warning: group %s uses dispatch = \"kernel\", but %s: it will serve without stickiness (plain SO_REUSEPORT) until that is fixed\n", verb, gs[0], why)
	}
}

// sysctlFile is the file install ships for kernel mode (see sysctlConf),
// and false when no group of c uses it.
func sysctlFile(c *config.Config) (units.File, bool) {
	if len(kernelGroups(c)) == 0 {
		return units.File{}, false
	}
	return units.File{Path: units.SysctlFile, Data: []byte(sysctlConf), Perm: units.Public}, true
}
