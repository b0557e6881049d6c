package config

import (
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Service holds the systemd settings a group may set for its workers
// ([worker.service]). Every value is checked; none is written raw.
type Service struct {
	// User= and Group=. Empty: the generator's default, the static system
	// user and group "powerhouse" (DefaultUser) in system scope, the
	// manager's own user in user scope. "root" must be asked for.
	User             string
	Group            string
	Environment      map[string]string // Environment=
	WorkingDirectory string            // WorkingDirectory=
	MemoryMax        string            // MemoryMax=: bytes with K/M/G/T, a percentage, or "infinity"
	CPUQuota         string            // CPUQuota=: a percentage ("150%")
	TimeoutStop      string            // TimeoutStopSec=: "30s", "2min", "500ms", "infinity" (also for a zero span, which systemd reads so)
	TimeoutStart     string            // TimeoutStartSec=: how long a worker may take to become ready
	TasksMax         int               // TasksMax=; 0: systemd's default
	LimitNOFILE      int               // LimitNOFILE=; 0: systemd's default
	// CPUSchedulingPolicy=: "" (systemd's default, "other"), "other",
	// "batch" or "idle". "batch" keeps a woken worker from preempting the
	// task on its CPU — on a busy host, the supervisor in the middle of a
	// burst of hand-offs (docs/BENCHMARKS.md measures it) — at the cost
	// of up to a scheduler slice of wake-up latency under load.
	CPUSchedulingPolicy string
	// Hardening, on by default; relax it here.
	ProtectSystem   string   // ProtectSystem=: "strict", "full" (default), "true", "false"
	ProtectHome     string   // ProtectHome=: "true", "read-only" (default), "tmpfs", "false"
	PrivateTmp      bool     // PrivateTmp=, default true
	NoNewPrivileges bool     // NoNewPrivileges=, default true
	ReadWritePaths  []string // ReadWritePaths=: absolute paths
	// MemoryDenyWriteExecute=, default true; a JIT (Node, the JVM, PyPy,
	// LuaJIT) needs memory that is writable and executable: false.
	MemoryDenyWriteExecute bool
	// ProcSubset=: "pid" (default: /proc shows processes only) or "all"
	// for a worker that reads /proc/cpuinfo, /proc/meminfo or /proc/stat
	// (Node's os.cpus(), some metrics libraries).
	ProcSubset string

	privateTmpSet bool // private_tmp was written in the file
	mdweSet       bool // memory_deny_write_execute was written in the file
	procSubsetSet bool // proc_subset was written in the file
}

// DefaultUser is the static system user and group workers run as in
// system scope unless [worker.service] names another; install creates it
// with systemd-sysusers (see units.Sysusers).
const DefaultUser = "powerhouse"

// UnderTmp reports whether path lies in /tmp or /var/tmp, which
// PrivateTmp= replaces: a program there could not be started with it.
func UnderTmp(path string) bool {
	return strings.HasPrefix(path, "/tmp/") || strings.HasPrefix(path, "/var/tmp/")
}

var serviceKeys = []string{"user", "group", "environment", "working_directory", "memory_max", "cpu_quota",
	"timeout_stop", "timeout_start", "tasks_max", "limit_nofile", "cpu_scheduling_policy", "protect_system", "protect_home", "private_tmp",
	"no_new_privileges", "read_write_paths", "memory_deny_write_execute", "proc_subset"}

var (
	userRE     = regexp.MustCompile(`^([a-z_][a-z0-9_-]{0,30}|[0-9]{1,10})$`)
	envKeyRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	memoryRE   = regexp.MustCompile(`^([0-9]+[KMGT]?|[0-9]{1,3}(\.[0-9]+)?%|infinity)$`)
	quotaRE    = regexp.MustCompile(`^[0-9]{1,5}%$`)
	timespanRE = regexp.MustCompile(`^([0-9]+(us|ms|s|min|h)?|infinity)$`)
)

func defaultService() Service {
	return Service{ProtectSystem: "full", ProtectHome: "read-only", PrivateTmp: true, NoNewPrivileges: true,
		MemoryDenyWriteExecute: true, ProcSubset: "pid"}
}

func (p *parser) service(at string, v any) Service {
	s := defaultService()
	m, ok := v.(map[string]any)
	if !ok {
		p.errf(at, "must be a table ([worker.service]), not %s", typeName(v))
		return s
	}
	p.unknown(at, m, serviceKeys)
	str := func(key string, re *regexp.Regexp, what string) string {
		v, ok := m[key]
		if !ok {
			return ""
		}
		s := p.text(at+"."+key, v)
		if s != "" && re != nil && !re.MatchString(s) {
			p.errf(at+"."+key, "%q is not %s", s, what)
			return ""
		}
		return s
	}
	num := func(key string, max int64) int {
		v, ok := m[key]
		if !ok {
			return 0
		}
		n, isInt := v.(int64)
		if !isInt || n < 1 || n > max {
			p.errf(at+"."+key, "must be an integer from 1 to %d", max)
			return 0
		}
		return int(n)
	}
	s.User = str("user", userRE, "a user name or number")
	s.Group = str("group", userRE, "a group name or number")
	s.WorkingDirectory = str("working_directory", nil, "")
	if d := s.WorkingDirectory; d != "" && (!filepath.IsAbs(d) || filepath.Clean(d) != d) {
		p.errf(at+".working_directory", "%q must be a clean absolute path", d)
		s.WorkingDirectory = ""
	}
	s.MemoryMax = str("memory_max", memoryRE, `a size such as "512M" or "2G", a percentage, or "infinity"`)
	s.CPUQuota = str("cpu_quota", quotaRE, `a percentage such as "150%"`)
	s.TimeoutStop = str("timeout_stop", timespanRE, `a time span such as "30s", "2min" or "infinity"`)
	s.TimeoutStart = str("timeout_start", timespanRE, `a time span such as "30s", "2min" or "infinity"`)
	// systemd reads a zero span as "no timeout": say so, so that nothing
	// downstream (the workers' drain time) takes it for zero seconds.
	s.TimeoutStop, s.TimeoutStart = zeroIsInfinity(s.TimeoutStop), zeroIsInfinity(s.TimeoutStart)
	s.TasksMax = num("tasks_max", 1<<22)
	s.LimitNOFILE = num("limit_nofile", 1<<20)
	if v := str("cpu_scheduling_policy", nil, ""); v != "" {
		if !contains([]string{"other", "batch", "idle"}, v) {
			p.errf(at+".cpu_scheduling_policy", "%q: use \"other\", \"batch\" or \"idle\" (the real-time policies are not for workers)", v)
		} else {
			s.CPUSchedulingPolicy = v
		}
	}
	if v := str("protect_system", nil, ""); v != "" {
		if !contains([]string{"strict", "full", "true", "false"}, v) {
			p.errf(at+".protect_system", "%q: use \"strict\", \"full\", \"true\" or \"false\"", v)
		} else {
			s.ProtectSystem = v
		}
	}
	if v := str("protect_home", nil, ""); v != "" {
		if !contains([]string{"true", "read-only", "tmpfs", "false"}, v) {
			p.errf(at+".protect_home", "%q: use \"true\", \"read-only\", \"tmpfs\" or \"false\"", v)
		} else {
			s.ProtectHome = v
		}
	}
	if v, ok := m["private_tmp"]; ok {
		s.PrivateTmp = p.boolean(at+".private_tmp", v)
		s.privateTmpSet = true
	}
	if v, ok := m["no_new_privileges"]; ok {
		s.NoNewPrivileges = p.boolean(at+".no_new_privileges", v)
	}
	if v, ok := m["memory_deny_write_execute"]; ok {
		s.MemoryDenyWriteExecute = p.boolean(at+".memory_deny_write_execute", v)
		s.mdweSet = true
	}
	if v := str("proc_subset", nil, ""); v != "" {
		s.procSubsetSet = true
		if !contains([]string{"pid", "all"}, v) {
			p.errf(at+".proc_subset", "%q: use \"pid\" or \"all\"", v)
		} else {
			s.ProcSubset = v
		}
	}
	if v, ok := m["environment"]; ok {
		env, isMap := v.(map[string]any)
		if !isMap {
			p.errf(at+".environment", "must be a table of strings, not %s", typeName(v))
		}
		for k, x := range env {
			if !envKeyRE.MatchString(k) {
				p.errf(at+".environment."+k, "%q is not a valid environment variable name", k)
				continue
			}
			if strings.HasPrefix(k, "POWERHOUSE_") || strings.HasPrefix(k, "LISTEN_") || k == "NOTIFY_SOCKET" {
				p.errf(at+".environment."+k, "%s is set by PowerHouse or systemd", k)
				continue
			}
			val, isStr := x.(string)
			if !isStr {
				p.errf(at+".environment."+k, "must be a string, not %s", typeName(x))
				continue
			}
			if bad := badText(val); bad != "" {
				p.errf(at+".environment."+k, "%s", bad)
				continue
			}
			if s.Environment == nil {
				s.Environment = map[string]string{}
			}
			s.Environment[k] = val
		}
	}
	if v, ok := m["read_write_paths"]; ok {
		list, isList := v.([]any)
		if !isList {
			p.errf(at+".read_write_paths", "must be an array of absolute paths")
		}
		for _, x := range list {
			path, _ := x.(string)
			if !filepath.IsAbs(path) || filepath.Clean(path) != path || strings.ContainsAny(path, " \"'\\%$") || badText(path) != "" {
				p.errf(at+".read_write_paths", "%q must be a clean absolute path without spaces, quotes, '\\', '%%' or '$'", path)
				continue
			}
			s.ReadWritePaths = append(s.ReadWritePaths, path)
		}
	}
	return s
}

// zeroIsInfinity returns "infinity" for a validated time span of zero
// ("0", "0s", "00min"), which is what systemd makes of it, and span
// otherwise.
func zeroIsInfinity(span string) string {
	if span != "" && strings.Trim(span, "0usminh") == "" {
		return "infinity"
	}
	return span
}

// EnvironmentList returns the environment as sorted KEY=VALUE strings.
func (s Service) EnvironmentList() []string {
	var out []string
	for k, v := range s.Environment {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}
