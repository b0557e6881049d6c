package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Options say what the demo installs and runs.
type Options struct {
	// Config is the host path of the configuration to install
	// (testdata/demo.toml).
	Config string
	// Powerhouse is the host path of the powerhouse binary that runs the
	// install inside the box, and that the units then name.
	Powerhouse string
	// Visible are host directories the box must see at their own paths
	// (the repository): bound read-only into it.
	Visible []string
	// Binds are further host directories the box must see, each at a path
	// of its own (the tests' binaries, where the workers' user reaches
	// them): bound read-only into it.
	Binds []Bind
}

// Bind shows the host directory Host at Box inside the box.
type Bind struct{ Host, Box string }

// report prints the tour and keeps the score: every claim is a check.
type report struct {
	out    io.Writer
	failed []string
	screen int
	// muted, when set and true, silences checks and failures: after an
	// interrupt, what fails is the interrupt's doing, not the house's.
	muted func() bool
}

const screens = 6

// title starts the next numbered screen.
func (r *report) title(s string) {
	r.screen++
	r.heading(fmt.Sprintf("%d/%d  %s", r.screen, screens, s))
}

// heading starts a part of the output.
func (r *report) heading(s string) {
	head := "── " + s + " "
	fmt.Fprintf(r.out, "\n%s%s\n\n", head, strings.Repeat("─", max(3, 76-len([]rune(head)))))
}

// printf prints one line of a screen.
func (r *report) printf(format string, args ...any) {
	fmt.Fprintf(r.out, format+"\n", args...)
}

// block prints command output, indented, under the command that made it.
func (r *report) block(cmd, text string) {
	if cmd != "" {
		fmt.Fprintf(r.out, "  $ %s\n", cmd)
	}
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		fmt.Fprintf(r.out, "    %s\n", line)
	}
}

// check prints a claim with ✓ or ✗ and remembers the failures.
func (r *report) check(ok bool, format string, args ...any) bool {
	if r.muted != nil && r.muted() {
		return ok
	}
	msg := fmt.Sprintf(format, args...)
	mark := "✓"
	if !ok {
		mark = "✗"
		r.failed = append(r.failed, msg)
	}
	fmt.Fprintf(r.out, "  %s %s\n", mark, msg)
	return ok
}

// fail records a step that could not be done.
func (r *report) fail(err error) {
	if r.muted != nil && r.muted() {
		return
	}
	r.failed = append(r.failed, err.Error())
	fmt.Fprintf(r.out, "  ✗ %v\n", err)
}

// step runs a long step between a start line and an end line with its
// duration; while it runs, a line every interval says it still does.
func (r *report) step(what string, interval time.Duration, fn func() error) error {
	fmt.Fprintf(r.out, "» %s …\n", what)
	start := time.Now()
	done, stopped := make(chan struct{}), make(chan struct{})
	ticker := time.NewTicker(interval)
	go func() {
		defer close(stopped)
		defer ticker.Stop()
		for {
			select {
			case <-done:
				return
			case <-ticker.C:
				fmt.Fprintf(r.out, "  … %s: %v\n", what, time.Since(start).Round(100*time.Millisecond))
			}
		}
	}()
	err := fn()
	close(done)
	<-stopped // its last line before ours: they share r.out
	d := time.Since(start)
	if err != nil {
		fmt.Fprintf(r.out, "» %s: failed after %v\n", what, seconds(d))
		return err
	}
	fmt.Fprintf(r.out, "» %s: done in %v\n", what, seconds(d))
	return nil
}

// seconds rounds a duration for people.
func seconds(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(10 * time.Millisecond)
}

// sandboxKeys are unit settings that confine a process. The units screen
// folds them into one line: they matter, but they are not what the
// screen is about.
var sandboxKeys = []string{
	"NoNewPrivileges", "Protect", "Private", "Restrict", "LockPersonality",
	"CapabilityBoundingSet", "AmbientCapabilities", "IPAddress", "DevicePolicy",
	"KeyringMode", "UMask", "SystemCallArchitectures", "SystemCallFilter",
	"SystemCallErrorNumber", "MemoryDenyWriteExecute", "ProcSubset",
}

// foldUnit returns a unit file for the screen: without its "generated
// by" comment, with its sandboxing settings folded into one line.
func foldUnit(text string) string {
	var out []string
	var folded []string
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		key, _, isSetting := strings.Cut(line, "=")
		if isSetting && isSandbox(key) {
			folded = append(folded, key)
			continue
		}
		if len(folded) > 0 && strings.HasPrefix(line, "[") {
			out = append(out, foldedLine(folded), "")
			folded = nil
		}
		out = append(out, line)
	}
	if len(folded) > 0 {
		out = append(out, foldedLine(folded))
	}
	return strings.Join(out, "\n")
}

func isSandbox(key string) bool {
	for _, k := range sandboxKeys {
		if strings.HasPrefix(key, k) {
			return true
		}
	}
	return false
}

func foldedLine(keys []string) string {
	uniq := map[string]bool{}
	var names []string
	for _, k := range keys {
		if !uniq[k] {
			uniq[k] = true
			names = append(names, k)
		}
	}
	const show = 4
	s := fmt.Sprintf("# … and %d sandboxing settings (%s", len(keys), strings.Join(names[:min(show, len(names))], ", "))
	if len(names) > show {
		s += ", …"
	}
	return s + ")"
}

// stickyRow is one client address of the stickiness table.
type stickyRow struct {
	addr      string
	instances map[string]int // instance -> answers
	pids      map[string]bool
	asked     int
}

// sameInstance returns the one instance that answered every request of
// the row, or "".
func (s stickyRow) sameInstance() string {
	if len(s.instances) != 1 {
		return ""
	}
	for inst, n := range s.instances {
		if n == s.asked {
			return inst
		}
	}
	return ""
}

// stickyTable renders the rows: address, instance(s), pid(s), verdict.
func stickyTable(rows []stickyRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-12s %-10s %-8s %s\n", "CLIENT", "INSTANCE", "PID", "ANSWERS")
	for _, row := range rows {
		insts := sortedKeys(row.instances)
		pids := sortedKeys(row.pids)
		verdict := fmt.Sprintf("%d of %d by %s", row.instances[insts[0]], row.asked, insts[0])
		if row.sameInstance() == "" {
			verdict = fmt.Sprintf("NOT STICKY: %v", row.instances)
		}
		fmt.Fprintf(&b, "%-12s %-10s %-8s %s\n", row.addr, strings.Join(insts, ","), strings.Join(pids, ","), verdict)
	}
	return strings.TrimRight(b.String(), "\n")
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	if len(out) == 0 {
		out = []string{"-"}
	}
	return out
}

// rel returns p relative to the working directory when it is below it.
func rel(p string) string {
	wd, err := os.Getwd()
	if err != nil {
		return p
	}
	if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}

// listIf returns prefix and the list, or "" for an empty list.
func listIf(prefix string, list []string) string {
	if len(list) == 0 {
		return ""
	}
	return prefix + strings.Join(list, "; ")
}

// errIf returns ": err", or "" for nil.
func errIf(err error) string {
	if err == nil {
		return ""
	}
	return ": " + err.Error()
}

// untilBlank returns text up to its first blank line: systemctl's tables
// without the legend under them.
func untilBlank(text string) string {
	before, _, _ := strings.Cut(strings.TrimLeft(text, "\n"), "\n\n")
	return before
}

// pidList renders instance → PID as "web@1 4242, web@2 4243, ...".
func pidList(pids map[int]uint32) string {
	var parts []string
	for i := 1; i <= len(pids); i++ {
		parts = append(parts, fmt.Sprintf("%s@%d %d", group, i, pids[i]))
	}
	return strings.Join(parts, ", ")
}

// reloadProgress marks each instance restarted (✓) or not yet (·).
func reloadProgress(before, now map[int]uint32) string {
	var parts []string
	for i := 1; i <= len(before); i++ {
		mark := "·"
		if p, ok := now[i]; ok && p != 0 && p != before[i] {
			mark = "✓"
		}
		parts = append(parts, fmt.Sprintf("%s@%d %s", group, i, mark))
	}
	return strings.Join(parts, "  ")
}

// failureSample returns a few failures of the loads, to say why.
func failureSample(loads ...*load) string {
	var s []string
	for _, l := range loads {
		for a, fs := range l.failuresOf() {
			for _, f := range fs {
				if len(s) < 3 {
					s = append(s, a+": "+f)
				}
			}
		}
	}
	return listIf(" — e.g. ", s)
}

// firstOf returns the first failure of the given addresses, if any.
func firstOf(fails map[string][]string, addrs []string) string {
	for _, a := range addrs {
		if len(fails[a]) > 0 {
			return " — e.g. " + a + ": " + fails[a][0]
		}
	}
	return ""
}
