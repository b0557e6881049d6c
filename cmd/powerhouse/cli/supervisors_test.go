package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/powerhouse/powerhouse/supervisor"
	"github.com/powerhouse/powerhouse/units"
)

// fakeCall is a call a stand-in supervisor received.
type fakeCall struct {
	Method     string          `json:"method"`
	Parameters json.RawMessage `json:"parameters,omitempty"`
	More       bool            `json:"more,omitempty"`
}

// fakeAnswer is how a stand-in supervisor answers a method: progress
// replies (each after its gate, if any, is closed), then the result or
// an error.
type fakeAnswer struct {
	progress []supervisor.Progress
	gates    []chan struct{} // gates[i], when set, is waited for before progress[i+1]
	result   any
	errName  string
	errMsg   string
}

// fakeSupervisor is a stand-in for a group's supervisor on its control
// socket, until the supervisor's server side exists (package supervisor,
// another branch of issue 12): a real unix stream socket at the group's
// ControlPath under a test runtime directory, speaking the framing of
// supervisor/api.go (NUL-terminated JSON, progress replies with
// "continues"). It records the calls it receives.
type fakeSupervisor struct {
	answers map[string]fakeAnswer
	mu      sync.Mutex
	calls   []fakeCall
}

// startFake serves group's control socket under root with answers.
func startFake(t *testing.T, root, group string, answers map[string]fakeAnswer) *fakeSupervisor {
	t.Helper()
	path := units.Group{Name: group, Root: root}.ControlPath()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSupervisor{answers: answers}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); f.serve(t, c) }()
		}
	}()
	return f
}

func (f *fakeSupervisor) serve(t *testing.T, c net.Conn) {
	b, err := bufio.NewReader(c).ReadBytes(0)
	if err != nil {
		t.Errorf("stand-in supervisor: read the call: %v", err)
		return
	}
	var call fakeCall
	if err := json.Unmarshal(b[:len(b)-1], &call); err != nil {
		t.Errorf("stand-in supervisor: bad call %q: %v", b, err)
		return
	}
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()
	a, ok := f.answers[call.Method]
	if !ok {
		a = fakeAnswer{errName: supervisor.ErrInvalid, errMsg: "unknown method " + call.Method}
	}
	send := func(v any) {
		m, _ := json.Marshal(v)
		c.Write(append(m, 0))
	}
	if call.More {
		for i, p := range a.progress {
			send(map[string]any{"parameters": p, "continues": true})
			if i < len(a.gates) && a.gates[i] != nil {
				<-a.gates[i]
			}
		}
	}
	if a.errName != "" {
		send(map[string]any{"error": a.errName, "parameters": map[string]string{"message": a.errMsg}})
		return
	}
	send(map[string]any{"parameters": a.result})
}

func (f *fakeSupervisor) received() []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeCall(nil), f.calls...)
}

// runIn runs the command line with the groups' runtime directory at root.
func runIn(t *testing.T, root string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = (&env{ctx: context.Background(), stdout: &o, stderr: &e, argv0: "powerhouse", runtimeRoot: root}).run(append([]string{"powerhouse"}, args...))
	return code, o.String(), e.String()
}

// twoGroups is a configuration of two reloadable groups.
const twoGroups = "[[worker]]\nname = \"web\"\nexec = \"/bin/true\"\namount = 2\n[worker.config]\npassword = \"s3cret\"\n\n[[worker]]\nname = \"api\"\nexec = \"/bin/true\"\n"

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "p.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOperationsThroughSupervisor: reload, scale and set are calls to the
// group's supervisor: its progress is printed as it comes, its result
// after, its failure as it gives it (one line, naming the instance) with
// exit status 1; a group whose supervisor does not run is said so (named:
// an error; reload of every group: skipped). scale and set save the
// file first, in both cases.
func TestOperationsThroughSupervisor(t *testing.T) {
	failure := "group web: instance 2 (powerhouse-web@2.service) did not become ready: start job failed (result timeout)"
	for _, tc := range []struct {
		name      string
		args      []string
		answers   map[string]fakeAnswer // for web; api has no supervisor
		wantCode  int
		wantCall  string // method web's supervisor gets; "" for none
		wantParam string
		wantErr   []string // stderr lines, in order
		wantOut   string   // in stdout; "" for nothing
		wantFile  string   // a line the configuration file holds after
	}{
		{
			name: "reload, progress and result",
			args: []string{"reload", "web"},
			answers: map[string]fakeAnswer{supervisor.MethodReload: {
				progress: []supervisor.Progress{{Message: "restarting powerhouse-web@1.service (1/2)", Instance: 1}, {Message: "restarting powerhouse-web@2.service (2/2)", Instance: 2}},
				result:   supervisor.OperationResult{Message: "2 instances restarted", Instances: []int{1, 2}},
			}},
			wantCall: supervisor.MethodReload,
			wantErr:  []string{"reload web: restarting powerhouse-web@1.service (1/2)", "reload web: restarting powerhouse-web@2.service (2/2)", "reload web: 2 instances restarted"},
		},
		{
			name: "reload --user, flag between verb and group",
			args: []string{"reload", "--user", "web"},
			answers: map[string]fakeAnswer{supervisor.MethodReload: {
				result: supervisor.OperationResult{Message: "2 instances restarted"},
			}},
			wantCall: supervisor.MethodReload,
			wantErr:  []string{"reload web: 2 instances restarted"},
		},
		{
			name: "--user before the verb",
			args: []string{"--user", "reload", "web"},
			answers: map[string]fakeAnswer{supervisor.MethodReload: {
				result: supervisor.OperationResult{Message: "2 instances restarted"},
			}},
			wantCall: supervisor.MethodReload,
			wantErr:  []string{"reload web: 2 instances restarted"},
		},
		{
			name: "status web --json, flag after the group",
			args: []string{"status", "web", "--json"},
			answers: map[string]fakeAnswer{supervisor.MethodStatus: {
				result: supervisor.GroupStatus{Group: "web", Type: "cluster", Amount: 2},
			}},
			wantCall: supervisor.MethodStatus,
			wantOut:  `"group": "web"`,
		},
		{
			name: "reload, failure as the supervisor says it",
			args: []string{"reload", "web"},
			answers: map[string]fakeAnswer{supervisor.MethodReload: {
				progress: []supervisor.Progress{{Message: "restarting powerhouse-web@1.service (1/2)", Instance: 1}},
				errName:  supervisor.ErrFailed, errMsg: failure,
			}},
			wantCode: ExitFailure,
			wantCall: supervisor.MethodReload,
			wantErr:  []string{"reload web: restarting powerhouse-web@1.service (1/2)", "powerhouse reload: " + failure},
		},
		{
			name:     "reload, permission denied",
			args:     []string{"reload", "web"},
			answers:  map[string]fakeAnswer{supervisor.MethodReload: {errName: supervisor.ErrDenied, errMsg: "uid 1000 may not reload group web"}},
			wantCode: ExitFailure,
			wantCall: supervisor.MethodReload,
			wantErr:  []string{"powerhouse reload: uid 1000 may not reload group web"},
		},
		{
			name:     "reload, named group not running",
			args:     []string{"reload", "api"},
			wantCode: ExitFailure,
			wantErr:  []string{"powerhouse reload: group api is not running ("},
		},
		{
			name: "reload every group: the one not running is skipped",
			args: []string{"reload"},
			answers: map[string]fakeAnswer{supervisor.MethodReload: {
				result: supervisor.OperationResult{Message: "2 instances restarted"},
			}},
			wantCall: supervisor.MethodReload,
			wantErr:  []string{"reload web: 2 instances restarted", "reload api: not running ("},
		},
		{
			name: "scale, saved then applied",
			args: []string{"scale", "web", "3"},
			answers: map[string]fakeAnswer{supervisor.MethodScale: {
				progress: []supervisor.Progress{{Message: "starting powerhouse-web@3.service", Instance: 3}},
				result:   supervisor.OperationResult{Message: "3 instances running", Instances: []int{3}},
			}},
			wantCall:  supervisor.MethodScale,
			wantParam: `{"amount":3}`,
			wantErr:   []string{"scale web: starting powerhouse-web@3.service", "scale web: 3 instances saved in CONFIG; 3 instances running"},
			wantFile:  "amount = 3",
		},
		{
			name:     "scale, failure",
			args:     []string{"scale", "web", "3"},
			answers:  map[string]fakeAnswer{supervisor.MethodScale: {errName: supervisor.ErrFailed, errMsg: "group web: instance 3 (powerhouse-web@3.service) did not start: exit-code"}},
			wantCode: ExitFailure,
			wantCall: supervisor.MethodScale,
			wantErr:  []string{"powerhouse scale: group web: instance 3 (powerhouse-web@3.service) did not start: exit-code"},
			wantFile: "amount = 3",
		},
		{
			name:     "scale, not running: saved only",
			args:     []string{"scale", "api", "4"},
			wantErr:  []string{"scale api: 4 instances saved in CONFIG; the group is not running ("},
			wantFile: "amount = 4",
		},
		{
			name: "set, saved then reconfigured",
			args: []string{"set", "web", "greeting=hi", "colour=1"},
			answers: map[string]fakeAnswer{supervisor.MethodReconfigure: {
				result: supervisor.OperationResult{Message: "sent SIGHUP to 2 running workers, which re-read it without a restart", Keys: []string{"colour", "greeting"}},
			}},
			wantCall: supervisor.MethodReconfigure,
			wantErr:  []string{"set web: colour, greeting saved in CONFIG; sent SIGHUP to 2 running workers, which re-read it without a restart"},
			wantFile: `greeting = "hi"`,
		},
		{
			name:     "set, failure",
			args:     []string{"set", "web", "greeting=hi"},
			answers:  map[string]fakeAnswer{supervisor.MethodReconfigure: {errName: supervisor.ErrFailed, errMsg: "group web: instance 1 (powerhouse-web@1.service) did not become ready after its restart"}},
			wantCode: ExitFailure,
			wantCall: supervisor.MethodReconfigure,
			wantErr:  []string{"powerhouse set: group web: instance 1 (powerhouse-web@1.service) did not become ready after its restart"},
			wantFile: `greeting = "hi"`,
		},
		{
			name:     "set, not running: saved only",
			args:     []string{"set", "api", "greeting=hi"},
			wantErr:  []string{"set api: greeting saved in CONFIG; the group is not running ("},
			wantFile: `greeting = "hi"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			cfg := writeConfig(t, twoGroups)
			var f *fakeSupervisor
			if tc.answers != nil {
				f = startFake(t, root, "web", tc.answers)
			}
			code, stdout, stderr := runIn(t, root, append(tc.args, "--config", cfg)...)
			if code != tc.wantCode {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.wantCode, stderr)
			}
			if tc.wantOut == "" && stdout != "" || !strings.Contains(stdout, tc.wantOut) {
				t.Errorf("stdout %q, want %q", stdout, tc.wantOut)
			}
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			if stderr == "" {
				lines = nil
			}
			if len(lines) != len(tc.wantErr) {
				t.Errorf("stderr has %d lines, want %d:\n%s", len(lines), len(tc.wantErr), stderr)
			}
			for i, want := range tc.wantErr {
				want = strings.ReplaceAll(want, "CONFIG", cfg)
				if i >= len(lines) || !strings.Contains(lines[i], want) {
					t.Errorf("stderr line %d: want %q in:\n%s", i+1, want, stderr)
				}
			}
			if f != nil {
				calls := f.received()
				wantMore := tc.wantCall != supervisor.MethodStatus
				if tc.wantCall == "" && len(calls) > 0 || tc.wantCall != "" && (len(calls) != 1 || calls[0].Method != tc.wantCall || calls[0].More != wantMore) {
					t.Errorf("supervisor got %+v, want one call of %s (progress asked for: %v)", calls, tc.wantCall, wantMore)
				}
				if tc.wantParam != "" && len(calls) == 1 && string(calls[0].Parameters) != tc.wantParam {
					t.Errorf("parameters %s, want %s", calls[0].Parameters, tc.wantParam)
				}
			}
			b, _ := os.ReadFile(cfg)
			if tc.wantFile != "" && !strings.Contains(string(b), tc.wantFile) {
				t.Errorf("the configuration lacks %q:\n%s", tc.wantFile, b)
			}
			// The supervisor writes the workers' config.json, not the CLI.
			for _, g := range []string{"web", "api"} {
				if _, err := os.Stat(units.Group{Name: g, Root: root}.ConfigPath()); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s's config.json was written by the command: %v", g, err)
				}
			}
		})
	}
}

// syncWriter is a buffer that tells when something was written to it.
type syncWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{}
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case w.written <- struct{}{}:
	default:
	}
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestReloadProgressAsItComes: a progress line is printed when the
// supervisor sends it, while the reload is still going on, not at its
// end: the stand-in holds its next reply until the first line is out.
func TestReloadProgressAsItComes(t *testing.T) {
	root := t.TempDir()
	cfg := writeConfig(t, twoGroups)
	gate := make(chan struct{})
	startFake(t, root, "web", map[string]fakeAnswer{supervisor.MethodReload: {
		progress: []supervisor.Progress{{Message: "instance 1 ready"}, {Message: "instance 2 ready"}},
		gates:    []chan struct{}{gate},
		result:   supervisor.OperationResult{Message: "done"},
	}})
	stderr := &syncWriter{written: make(chan struct{}, 1)}
	done := make(chan int, 1)
	go func() {
		done <- (&env{ctx: context.Background(), stdout: &bytes.Buffer{}, stderr: stderr, runtimeRoot: root}).run([]string{"powerhouse", "reload", "--config", cfg, "web"})
	}()
	deadline := time.After(10 * time.Second)
	for !strings.Contains(stderr.String(), "reload web: instance 1 ready\n") {
		select {
		case <-stderr.written:
		case <-deadline:
			close(gate)
			t.Fatalf("the first progress line was not printed while the reload went on; stderr %q", stderr.String())
		}
	}
	if strings.Contains(stderr.String(), "instance 2") {
		t.Errorf("stderr %q before the second reply was sent", stderr.String())
	}
	close(gate)
	if code := <-done; code != 0 {
		t.Errorf("exit %d: %s", code, stderr.String())
	}
}

// TestStatusFromSupervisor: status asks each group's supervisor and
// prints its answer (the JSON of docs/status.md); a group whose
// supervisor does not answer is shown as systemd sees it, which needs
// the service manager.
func TestStatusFromSupervisor(t *testing.T) {
	root := t.TempDir()
	cfg := writeConfig(t, twoGroups)
	web := supervisor.GroupStatus{
		Group: "web", Type: "cluster", Sticky: true, Amount: 2,
		Supervisor: supervisor.UnitStatus{Unit: "powerhouse@web.service", State: "active", SubState: "running", PID: 42},
		Config:     map[string]any{"greeting": "hi"},
		Dispatch:   &supervisor.DispatchStatus{HandedOff: 7},
		Instances: []supervisor.InstanceStatus{
			{Instance: 1, UnitStatus: supervisor.UnitStatus{Unit: "powerhouse-web@1.service", State: "active", SubState: "running", PID: 43}, HandedOff: 4, InDispatch: true},
			{Instance: 2, UnitStatus: supervisor.UnitStatus{Unit: "powerhouse-web@2.service", State: "active", SubState: "running", PID: 44}, HandedOff: 3},
		},
	}
	f := startFake(t, root, "web", map[string]fakeAnswer{supervisor.MethodStatus: {result: web}})
	code, stdout, stderr := runIn(t, root, "status", "web", "--json", "--config", cfg)
	if code != 0 {
		t.Fatalf("status web --json: exit %d: %s", code, stderr)
	}
	want, _ := json.MarshalIndent([]supervisor.GroupStatus{web}, "", "  ")
	if stdout != string(want)+"\n" {
		t.Errorf("status web --json:\n%s\nwant the supervisor's answer:\n%s", stdout, want)
	}
	if calls := f.received(); len(calls) != 1 || calls[0].Method != supervisor.MethodStatus {
		t.Errorf("supervisor got %+v, want one Status call", calls)
	}
	code, stdout, stderr = runIn(t, root, "status", "--config", cfg, "web")
	for _, w := range []string{"group web (cluster, sticky), 2 instances; supervisor powerhouse@web.service: active (running), pid 42", "dispatch: 7 handed off", "web@1", "web@2", "active (running), out of dispatch"} {
		if code != 0 || !strings.Contains(stdout, w) {
			t.Errorf("status web: exit %d, want %q in:\n%s%s", code, w, stdout, stderr)
		}
	}
	// api has no supervisor: systemd's view, which needs the manager.
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "")
	t.Setenv("HOME", t.TempDir())
	code, _, stderr = runIn(t, root, "status", "--user", "--config", cfg)
	if code != ExitFailure || !strings.Contains(stderr, "--user: no service manager") {
		t.Errorf("status with api not running and no manager: exit %d, stderr %q", code, stderr)
	}
}

// TestConfigFlag reads the configuration from a supervisor's ExecStart=.
func TestConfigFlag(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"/usr/bin/powerhouse", "supervise", "--config", "/etc/powerhouse/powerhouse.toml", "web"}, "/etc/powerhouse/powerhouse.toml"},
		{[]string{"/usr/bin/powerhouse", "supervise", "--config=/srv/h.toml", "--user", "web"}, "/srv/h.toml"},
		{[]string{"/usr/bin/powerhouse", "supervise", "web"}, ""},
		{[]string{"/usr/bin/powerhouse", "supervise", "--config"}, ""},
		{nil, ""},
	} {
		if got := configFlag(tc.argv); got != tc.want {
			t.Errorf("configFlag(%q) = %q, want %q", tc.argv, got, tc.want)
		}
	}
}

// TestScaleTimeout: scale waits for its supervisor's answer at most
// --timeout, then says that the supervisor goes on with the change; the
// amount is saved either way.
func TestScaleTimeout(t *testing.T) {
	root := t.TempDir()
	cfg := writeConfig(t, twoGroups)
	gate := make(chan struct{})
	defer close(gate) // lets the stand-in end before its cleanup waits for it
	startFake(t, root, "web", map[string]fakeAnswer{supervisor.MethodScale: {
		progress: []supervisor.Progress{{Message: "starting powerhouse-web@3.service"}, {Message: "never sent"}},
		gates:    []chan struct{}{gate},
		result:   supervisor.OperationResult{Message: "3 instances running"},
	}})
	code, _, stderr := runIn(t, root, "scale", "web", "3", "--timeout", "300ms", "--config", cfg)
	want := "scale web: 3 instances saved in " + cfg + "; no answer from the supervisor after 300ms: it goes on with the change"
	if code != ExitFailure || !strings.Contains(stderr, "scale web: starting powerhouse-web@3.service\n") || !strings.Contains(stderr, want) {
		t.Errorf("exit %d, stderr %q; want 1 and %q", code, stderr, want)
	}
	if b, _ := os.ReadFile(cfg); !strings.Contains(string(b), "amount = 3") {
		t.Errorf("the amount was not saved:\n%s", b)
	}
}

// TestProgressPrefix: a supervisor's line that names its own operation and
// group is printed as it is; another gets the verb and group in front.
func TestProgressPrefix(t *testing.T) {
	for _, tc := range []struct{ verb, msg, want string }{
		{"reload", "reload web: starting powerhouse-web.b@1.service (1/3)", "reload web: starting powerhouse-web.b@1.service (1/3)\n"},
		{"install", "reload web: 3 instances handed over", "reload web: 3 instances handed over\n"},
		{"scale", "instance 3 stopped", "scale web: instance 3 stopped\n"},
		{"reload", "the new web: side", "reload web: the new web: side\n"},
	} {
		var b strings.Builder
		(&env{stderr: &b}).progress(tc.verb, "web")(supervisor.Progress{Message: tc.msg})
		if b.String() != tc.want {
			t.Errorf("progress(%q, %q) printed %q; want %q", tc.verb, tc.msg, b.String(), tc.want)
		}
	}
}
