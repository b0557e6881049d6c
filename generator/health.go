package generator

import (
	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

// HealthFDName is the FileDescriptorName= of the health endpoint's
// socket, which `powerhouse health` takes from LISTEN_FDNAMES.
const HealthFDName = "health"

// healthUnits returns the house's health endpoint (the top-level health
// key), none when the configuration has none: a socket unit on the
// address, pulled in by powerhouse.target, and the service it activates,
// `powerhouse health`, which answers every HTTP GET with 200, or 503
// while the drain state file (units.Scope.DrainState) exists.
//
// The endpoint is house-level, not a group's: a front load balancer asks
// about the host. It is a socket unit of its own (not a listener of some
// group) so that it answers whatever the groups do, and systemd binds the
// address, so the service needs no network and no privilege: it reads
// one file and writes a few bytes on descriptors it inherits.
func (g *gen) healthUnits() []Unit {
	if g.c.Health == nil {
		return nil
	}
	return []Unit{g.healthSocket(), g.healthService()}
}

// healthWants is what powerhouse.target pulls in for the health endpoint.
func (g *gen) healthWants() []string {
	if g.c.Health == nil {
		return nil
	}
	return []string{units.HealthSocket}
}

func (g *gen) healthSocket() Unit {
	// One service takes every check (Accept=no): a load balancer checks
	// every second or two, and a process per check would cost a fork,
	// an exec and a sandbox each time.
	return g.endpointSocket(units.HealthSocket, "health endpoint", *g.c.Health, "", HealthFDName, units.HealthService)
}

// endpointSocket is the socket unit of a house endpoint (health,
// metrics) on listener l, taken by one service (Accept=no). unixMode is
// the SocketMode= of a unix socket, "" for systemd's default.
func (g *gen) endpointSocket(name, what string, l config.Listener, unixMode, fdName, service string) Unit {
	var u opts
	u.add("Unit", "Description", Specifiers(g.c.Title)+" "+what)
	u.add("Unit", "Documentation", DocumentationURL(g.o.ConfigPath))
	u.add("Unit", "PartOf", units.Target)
	if l.Network == "unix" {
		u.add("Socket", "ListenStream", PathEscape(l.Address))
		if unixMode != "" {
			u.add("Socket", "SocketMode", unixMode)
		}
	} else {
		v6only := ipv6Only([]config.Listener{l})
		for _, a := range tcpStreams(l, v6only) {
			u.add("Socket", "ListenStream", a)
		}
		if v6only {
			u.add("Socket", "BindIPv6Only", "ipv6-only")
		}
	}
	u.add("Socket", "FileDescriptorName", fdName)
	u.add("Socket", "Service", service)
	return Unit{Name: name, Options: u}
}

func (g *gen) healthService() Unit {
	var u opts
	u.add("Unit", "Description", Specifiers(g.c.Title)+" health endpoint: 200, or 503 while the house drains")
	u.add("Unit", "Documentation", DocumentationURL(g.o.ConfigPath))
	u.add("Unit", "PartOf", units.Target)
	u.add("Unit", "Requires", units.HealthSocket)
	u.add("Unit", "After", units.HealthSocket)
	u.add("Service", "Type", "simple")
	// The state file's path, as the unit writes it (%t in user scope).
	u.add("Service", "ExecStart", ExecLine([]string{g.o.Binary, "health", "--state"})+" "+g.o.Scope().UnitDrainState())
	u.add("Service", "Sockets", units.HealthSocket)
	// Bounds: a few connections at a time (the service caps them too),
	// a small Go process.
	u.add("Service", "LimitNOFILE", "256")
	u.add("Service", "TasksMax", "32")
	u.add("Service", "MemoryMax", "64M")
	if g.o.User {
		userHardening(&u, config.Service{MemoryDenyWriteExecute: true}) // Go writes no code at run time
		return Unit{Name: units.HealthService, Options: u}
	}
	privateTmp := !config.UnderTmp(g.o.Binary)
	if privateTmp {
		// A user of its own, made for the run: it owns nothing and
		// reads only the drain state (0644, under /run/powerhouse).
		u.add("Service", "DynamicUser", "yes")
	} else {
		// DynamicUser= implies PrivateTmp=, which would hide a binary
		// under /tmp: the workers' unprivileged user instead.
		u.add("Service", "User", config.DefaultUser)
	}
	endpointSandbox(&u, privateTmp)
	return Unit{Name: units.HealthService, Options: u}
}

// endpointSandbox confines a house endpoint service (health, metrics): it
// gets its socket from systemd, reads a few files or unix sockets under
// the runtime directory, and writes nothing.
func endpointSandbox(u *opts, privateTmp bool) {
	for _, d := range [][2]string{
		{"CapabilityBoundingSet", ""},
		{"AmbientCapabilities", ""},
		{"NoNewPrivileges", "yes"},
		{"PrivateNetwork", "yes"},              // systemd passes the socket: no network of its own
		{"RestrictAddressFamilies", "AF_UNIX"}, // socket(): the groups' unix sockets at most; accept() is not socket()
		{"ProtectSystem", "strict"},            // nothing is written
		{"ProtectHome", "read-only"},           // the binary may live in a home
		{"PrivateTmp", yesNo(privateTmp)},
	} {
		u.add("Service", d[0], d[1])
	}
	sealHost(u)
	for _, d := range [][2]string{
		{"MemoryDenyWriteExecute", "yes"},
		{"RemoveIPC", "yes"},
		{"KeyringMode", "private"},
		{"UMask", "0077"},
		{"SystemCallArchitectures", "native"},
		{"SystemCallFilter", "@system-service"},
		{"SystemCallFilter", "~@privileged @resources @mount @swap @reboot @raw-io @module @obsolete @debug @cpu-emulation"},
		{"SystemCallErrorNumber", "EPERM"},
	} {
		u.add("Service", d[0], d[1])
	}
}
