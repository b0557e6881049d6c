package units

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// House-wide unit names.
const (
	// Target pulls in and stops the whole house.
	Target = "powerhouse.target"
	// PrepareService runs the [prepare] hook once before any worker.
	PrepareService = "powerhouse-prepare.service"
	// SupervisorTemplate is the supervisor template every group shares.
	SupervisorTemplate = "powerhouse@.service"
	// SysctlFile is the sysctl.d file install ships when a group uses
	// kernel mode: net.ipv4.tcp_migrate_req=1, so that the connections queued
	// on a listener that closes move to another instance rather than being
	// reset.
	SysctlFile = "/etc/sysctl.d/50-powerhouse.conf"
	// SupervisorPattern matches every group's supervisor.
	SupervisorPattern = "powerhouse@*.service"
	// HousePattern matches every unit of the house.
	HousePattern = "powerhouse*"
)

// RuntimeBase is the directory under which every group keeps its runtime
// files: /run/powerhouse for the system manager, $XDG_RUNTIME_DIR/powerhouse
// for a user's.
func (s Scope) RuntimeBase() string {
	if s == User {
		return filepath.Join(userRuntimeDir(), "powerhouse")
	}
	return "/run/powerhouse"
}

// UnitRuntimeBase is RuntimeBase as unit files write it: with the %t
// specifier in user scope, which systemd resolves for each user.
func (s Scope) UnitRuntimeBase() string {
	if s == User {
		return "%t/powerhouse"
	}
	return "/run/powerhouse"
}

// PrepareEnv is the environment file the [prepare] hook writes.
func (s Scope) PrepareEnv() string { return filepath.Join(s.RuntimeBase(), "prepare.env") }

// UnitPrepareEnv is PrepareEnv as unit files write it.
func (s Scope) UnitPrepareEnv() string { return s.UnitRuntimeBase() + "/prepare.env" }

// The house's health endpoint (the top-level health key): a socket the
// front load balancer checks, and the small service behind it
// (`powerhouse health`) that answers 200 or, while the house drains
// (`powerhouse drain`), 503. The names have no "@", so no group's units
// are ever named so.
const (
	HealthSocket  = "powerhouse-health.socket"
	HealthService = "powerhouse-health.service"
)

// The house's metrics endpoint on TCP (the top-level metrics key): a socket
// unit on the address, and the service behind it (`powerhouse
// metrics-endpoint`) that answers GET /metrics with the merged exposition
// of every group's metrics socket (Group.MetricsPath). Like the health
// endpoint's, the names have no "@".
const (
	MetricsSocket  = "powerhouse-metrics.socket"
	MetricsService = "powerhouse-metrics.service"
)

// DrainState is the file `powerhouse drain` writes (and --undo removes)
// while the house drains: when the drain started. The health service
// reads it on every check.
func (s Scope) DrainState() string { return filepath.Join(s.RuntimeBase(), "drain.json") }

// UnitDrainState is DrainState as unit files write it.
func (s Scope) UnitDrainState() string { return s.UnitRuntimeBase() + "/drain.json" }

// Flag is the command-line flag that selects s for systemctl and
// powerhouse alike: "--user", or "" for the system.
func (s Scope) Flag() string {
	if s == User {
		return "--user"
	}
	return ""
}

func (s Scope) String() string {
	if s == User {
		return "user"
	}
	return "system"
}

// userRuntimeDir is $XDG_RUNTIME_DIR, or what pam_systemd makes it when a
// command runs without it (su, sudo -u).
func userRuntimeDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(d) {
		return filepath.Clean(d)
	}
	return "/run/user/" + strconv.Itoa(os.Getuid())
}

// Group names the units and runtime paths of one worker group. It is the
// one place that builds them: the generator, the supervisor, the CLI and
// the tests all ask it, so a name cannot drift between writer and reader.
// Name must be a valid group name (config validates it).
type Group struct {
	Name  string
	Scope Scope
	// Root, when set, replaces the scope's RuntimeBase for the runtime
	// paths a process uses (tests; a house outside systemd). Unit files
	// always get the scope's.
	Root string
}

// SupervisorUnit is the group's supervisor: powerhouse@web.service.
func (g Group) SupervisorUnit() string { return "powerhouse@" + g.Name + ".service" }

// PublicSocket is the socket unit of the group's direct listeners, which
// the supervisor template gets by name: powerhouse@web.socket.
func (g Group) PublicSocket() string { return "powerhouse@" + g.Name + ".socket" }

// ProxySocket is the socket unit of the group's PROXY protocol listeners:
// powerhouse-proxy@web.socket, a concrete unit (its address filter is the
// group's own) whose Service= is the supervisor. "proxy" is a reserved
// group name, so this never names a worker unit.
func (g Group) ProxySocket() string { return "powerhouse-proxy@" + g.Name + ".socket" }

// WorkerTemplate is the group's worker template: powerhouse-web@.service.
func (g Group) WorkerTemplate() string { return g.prefix() + ".service" }

// HandoffTemplate is the template of the instances' hand-off sockets:
// powerhouse-web@.socket.
func (g Group) HandoffTemplate() string { return g.prefix() + ".socket" }

// Instance is the service of instance n: powerhouse-web@3.service.
func (g Group) Instance(n int) string { return g.prefix() + strconv.Itoa(n) + ".service" }

// HandoffSocket is the hand-off socket unit of instance n:
// powerhouse-web@3.socket.
func (g Group) HandoffSocket(n int) string { return g.prefix() + strconv.Itoa(n) + ".socket" }

// UnitHandoffSocket is the hand-off socket unit of the instance a worker
// template is instantiated for: powerhouse-web@%i.socket.
func (g Group) UnitHandoffSocket() string { return g.prefix() + "%i.socket" }

// InstanceSocket is the socket unit of instance n, whatever the group's
// dispatch: its hand-off socket (HandoffSocket) in hand-off mode, its own
// listening socket on the group's addresses in kernel mode
// (dispatch = "kernel"), which activates the instance with plain
// LISTEN_FDS and is one member of the addresses' SO_REUSEPORT group. Both
// are instances of InstanceSocketTemplate, so whoever stops instance n
// stops InstanceSocket(n) after it, in either mode.
func (g Group) InstanceSocket(n int) string { return g.HandoffSocket(n) }

// InstanceSocketTemplate is the template of InstanceSocket:
// powerhouse-web@.socket.
func (g Group) InstanceSocketTemplate() string { return g.HandoffTemplate() }

// UnitInstanceSocket is InstanceSocket as a worker template writes it:
// powerhouse-web@%i.socket.
func (g Group) UnitInstanceSocket() string { return g.UnitHandoffSocket() }

// InstanceSocketPattern matches the socket units of every instance of
// the group: powerhouse-web@*.socket.
func (g Group) InstanceSocketPattern() string { return g.prefix() + "*.socket" }

// InstanceFDPrefix starts the FileDescriptorName= of a kernel-mode
// instance socket: "instance-3" for instance 3. The name has no group in
// it: a supervisor receives its own group's sockets only.
const InstanceFDPrefix = "instance-"

// InstanceFDName is the descriptor name (LISTEN_FDNAMES) of every socket
// of kernel-mode instance n: "instance-3". A socket unit gives all its
// sockets one name, so an instance listening on two addresses passes two
// descriptors called so; which address each is, getsockname(2) says.
func InstanceFDName(n int) string { return InstanceFDPrefix + strconv.Itoa(n) }

// UnitInstanceFDName is InstanceFDName as the socket template writes it,
// with %i for the instance (systemd 252 expands specifiers in
// FileDescriptorName=).
const UnitInstanceFDName = InstanceFDPrefix + "%i"

// InstanceOfFDName returns n for the descriptor name InstanceFDName(n),
// and false for any other name.
func InstanceOfFDName(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, InstanceFDPrefix)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 1 || strconv.Itoa(n) != rest {
		return 0, false
	}
	return n, true
}

// KernelDropIn is the drop-in of the group's supervisor in kernel mode,
// relative to a unit directory: powerhouse@web.service.d/50-kernel.conf.
// It gives the supervisor the instances' sockets (Sockets=) and what it
// needs to steer with BPF; generator.KernelDropIn writes its content.
func (g Group) KernelDropIn() string { return g.SupervisorUnit() + ".d/50-kernel.conf" }

// InstancePattern matches the side-A services of every instance of the
// group (powerhouse-web@*.service); InstancePatterns matches both sides.
func (g Group) InstancePattern() string { return g.prefix() + "*.service" }

// Side is one of the two services an instance of a reloadable group
// alternates between on a handover reload: the new process starts in the
// side that is not running, and the old one drains in its own unit while
// the new one serves. Both sides get the instance's socket (Sockets=), so
// the slot, its hand-off or listening socket and its clients stay the same.
type Side uint8

const (
	// SideA is the contract's instance unit: powerhouse-web@3.service.
	SideA Side = iota
	// SideB is its twin: powerhouse-web.b@3.service. The "." cannot
	// appear in a group name, so no group's units are ever named so.
	SideB
)

// Other is the side an instance hands over to.
func (s Side) Other() Side { return 1 - s }

func (s Side) String() string {
	if s == SideB {
		return "b"
	}
	return "a"
}

// sidePrefix is the template prefix of side s: "powerhouse-web@" or
// "powerhouse-web.b@".
func (g Group) sidePrefix(s Side) string {
	if s == SideB {
		return "powerhouse-" + g.Name + ".b@"
	}
	return g.prefix()
}

// InstanceSide is the service of instance n on side s:
// powerhouse-web@3.service (SideA, the same as Instance) or
// powerhouse-web.b@3.service (SideB).
func (g Group) InstanceSide(n int, s Side) string {
	return g.sidePrefix(s) + strconv.Itoa(n) + ".service"
}

// WorkerTemplateSide is the worker template of side s:
// powerhouse-web@.service or powerhouse-web.b@.service.
func (g Group) WorkerTemplateSide(s Side) string { return g.sidePrefix(s) + ".service" }

// InstancePatterns matches the services of every instance of the group on
// both sides.
func (g Group) InstancePatterns() []string {
	return []string{g.sidePrefix(SideA) + "*.service", g.sidePrefix(SideB) + "*.service"}
}

// SideOf returns n and the side for the service of instance n of this
// group on either side, and false for any other unit name.
func (g Group) SideOf(unit string) (int, Side, bool) {
	for _, s := range []Side{SideA, SideB} {
		rest, ok := strings.CutPrefix(unit, g.sidePrefix(s))
		if !ok {
			continue
		}
		rest, ok = strings.CutSuffix(rest, ".service")
		if !ok {
			return 0, 0, false
		}
		n, err := strconv.Atoi(rest)
		if err != nil || n < 1 || strconv.Itoa(n) != rest {
			return 0, 0, false
		}
		return n, s, true
	}
	return 0, 0, false
}

// InstanceOf returns n for the service of instance n of this group, and
// false for any other unit name.
func (g Group) InstanceOf(unit string) (int, bool) {
	rest, ok := strings.CutPrefix(unit, g.prefix())
	if !ok {
		return 0, false
	}
	rest, ok = strings.CutSuffix(rest, ".service")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 1 || strconv.Itoa(n) != rest {
		return 0, false
	}
	return n, true
}

// GroupOfSupervisor returns the group whose supervisor unit is unit
// (powerhouse@web.service: web), and false for any other unit.
func GroupOfSupervisor(unit string) (string, bool) {
	prefix, suffix, _ := strings.Cut(SupervisorPattern, "*")
	name, ok := strings.CutPrefix(unit, prefix)
	if name, ok2 := strings.CutSuffix(name, suffix); ok && ok2 && name != "" && (Group{Name: name}).SupervisorUnit() == unit {
		return name, true
	}
	return "", false
}

// Owns reports whether unit is one of the group's own units (its sockets,
// its worker templates of both sides, its hand-off template and their
// instances). The supervisor
// template is every group's, so it is none's.
func (g Group) Owns(unit string) bool {
	switch unit {
	case g.SupervisorUnit(), g.PublicSocket(), g.ProxySocket():
		return true
	}
	for _, s := range []Side{SideA, SideB} {
		if rest, ok := strings.CutPrefix(unit, g.sidePrefix(s)); ok && !strings.Contains(rest, "@") {
			return true
		}
	}
	return false
}

func (g Group) prefix() string { return "powerhouse-" + g.Name + "@" }

// RuntimeDir is the group's runtime directory, where the files below live.
// The supervisor unit's RuntimeDirectory= creates it.
func (g Group) RuntimeDir() string {
	if g.Root != "" {
		return filepath.Join(g.Root, g.Name)
	}
	return filepath.Join(g.Scope.RuntimeBase(), g.Name)
}

// UnitRuntimeDir is RuntimeDir as unit files write it (%t in user scope).
func (g Group) UnitRuntimeDir() string { return g.Scope.UnitRuntimeBase() + "/" + g.Name }

// RuntimeDirectory is the RuntimeDirectory= value that creates RuntimeDir
// (relative to /run or $XDG_RUNTIME_DIR), with %i for the group.
const RuntimeDirectory = "powerhouse/%i"

// HandoffPath is where instance n receives connections.
func (g Group) HandoffPath(n int) string {
	return filepath.Join(g.RuntimeDir(), strconv.Itoa(n)+".sock")
}

// UnitHandoffPath is the hand-off socket path in the hand-off template,
// with %i for the instance.
func (g Group) UnitHandoffPath() string { return g.UnitRuntimeDir() + "/%i.sock" }

// ConfigPath is the JSON configuration the group's workers read.
func (g Group) ConfigPath() string { return filepath.Join(g.RuntimeDir(), "config.json") }

// UnitConfigPath is ConfigPath as unit files write it.
func (g Group) UnitConfigPath() string { return g.UnitRuntimeDir() + "/config.json" }

// DispatchStatePath is where a sticky group's supervisor publishes its
// dispatch counters.
func (g Group) DispatchStatePath() string { return filepath.Join(g.RuntimeDir(), "dispatch.json") }

// ControlPath is the supervisor's control socket: the API the CLI and
// ExecReload= call (supervisor.Client).
func (g Group) ControlPath() string { return filepath.Join(g.RuntimeDir(), "control.sock") }

// MetricsPath is the group's metrics socket: HTTP on a unix socket that
// serves the supervisor's metrics in the Prometheus text and OpenMetrics
// formats, mode 0660, group-owned by the workers' group.
func (g Group) MetricsPath() string { return filepath.Join(g.RuntimeDir(), "metrics.sock") }

// ReportPath is the datagram socket on which workers report to their
// supervisor (package report).
func (g Group) ReportPath() string { return filepath.Join(g.RuntimeDir(), "report.sock") }

// UnitReportPath is ReportPath as unit files write it.
func (g Group) UnitReportPath() string { return g.UnitRuntimeDir() + "/report.sock" }

func (g Group) String() string { return fmt.Sprintf("%s (%s)", g.Name, g.Scope) }
