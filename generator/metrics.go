package generator

import (
	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

// MetricsFDName is the FileDescriptorName= of the metrics endpoint's
// socket.
const MetricsFDName = "metrics"

// metricsUnits returns the house's metrics endpoint on TCP (the top-level
// metrics key), none when the configuration has none: a socket unit on
// the address, pulled in by powerhouse.target, and the service it
// activates, `powerhouse metrics-endpoint`, which answers GET /metrics
// with the merged exposition of every group's metrics socket
// (units.Group.MetricsPath).
//
// The supervisors run with PrivateNetwork=: they serve their metrics on a
// unix socket under their runtime directory, and this service, which
// needs no network either (systemd binds the address), reads them. Like
// the health endpoint it is house-level, a socket unit of its own.
func (g *gen) metricsUnits() []Unit {
	if g.c.Metrics == nil {
		return nil
	}
	return []Unit{g.metricsSocket(), g.metricsService()}
}

// metricsWants is what powerhouse.target pulls in for the endpoint.
func (g *gen) metricsWants() []string {
	if g.c.Metrics == nil {
		return nil
	}
	return []string{units.MetricsSocket}
}

func (g *gen) metricsSocket() Unit {
	// One service takes every scrape (Accept=no): a scraper comes every
	// few seconds. A unix socket is for the scraper's group only.
	return g.endpointSocket(units.MetricsSocket, "metrics endpoint", *g.c.Metrics, "0660", MetricsFDName, units.MetricsService)
}

func (g *gen) metricsService() Unit {
	var u opts
	u.add("Unit", "Description", Specifiers(g.c.Title)+" metrics endpoint: every group's metrics, merged")
	u.add("Unit", "Documentation", DocumentationURL(g.o.ConfigPath))
	u.add("Unit", "PartOf", units.Target)
	u.add("Unit", "Requires", units.MetricsSocket)
	u.add("Unit", "After", units.MetricsSocket)
	u.add("Service", "Type", "simple")
	u.add("Service", "ExecStart", ExecLine([]string{g.o.Binary, "metrics-endpoint", "--runtime"})+" "+g.o.Scope().UnitRuntimeBase())
	u.add("Service", "Sockets", units.MetricsSocket)
	u.add("Service", "Restart", "on-failure")
	u.add("Service", "LimitNOFILE", "1024")
	u.add("Service", "TasksMax", "64")
	u.add("Service", "MemoryMax", "256M")
	if g.o.User {
		userHardening(&u, config.Service{MemoryDenyWriteExecute: true})
		return Unit{Name: units.MetricsService, Options: u}
	}
	privateTmp := !config.UnderTmp(g.o.Binary)
	if privateTmp {
		// A user of its own, in the group the groups' metrics sockets
		// belong to (0660): it reads them and nothing else.
		u.add("Service", "DynamicUser", "yes")
		u.add("Service", "SupplementaryGroups", config.DefaultUser)
	} else {
		// DynamicUser= implies PrivateTmp=, which would hide a binary
		// under /tmp: the workers' unprivileged user instead.
		u.add("Service", "User", config.DefaultUser)
	}
	endpointSandbox(&u, privateTmp)
	return Unit{Name: units.MetricsService, Options: u}
}
