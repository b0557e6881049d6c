// Package events defines PowerHouse's events, writes them to journald as
// structured entries and reads them back.
//
// Every event is one journal entry with a fixed MESSAGE_ID per type
// (see powerhouse.catalog), POWERHOUSE_EVENT=<type>, POWERHOUSE_GROUP=,
// POWERHOUSE_INSTANCE= (0 for the group's supervisor) and the details as
// further POWERHOUSE_* fields, so that
//
//	journalctl POWERHOUSE_EVENT=worker.stop POWERHOUSE_GROUP=web
//
// lists what happened. Reading goes through journalctl's JSON output, so
// that no cgo is needed.
package events

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// Type names an event, as the Node.js PowerHouse did.
type Type string

// The events.
const (
	WorkerStart       Type = "worker.start"       // an instance became active
	WorkerStop        Type = "worker.stop"        // an instance left active (exit code or signal)
	WorkerReload      Type = "worker.reload"      // an instance was restarted by a reload
	WorkerShutdown    Type = "worker.shutdown"    // an instance was stopped on request
	WorkerMessage     Type = "worker.message"     // a worker sent a message (activation.Send)
	MasterShutdown    Type = "master.shutdown"    // a supervisor is stopping
	MasterReconfigure Type = "master.reconfigure" // `powerhouse set` changed a group's config
)

// Types lists every event type.
var Types = []Type{WorkerStart, WorkerStop, WorkerReload, WorkerShutdown, WorkerMessage, MasterShutdown, MasterReconfigure}

// MessageID returns the journal MESSAGE_ID of t.
func MessageID(t Type) string { return messageIDs[t] }

var messageIDs = map[Type]string{
	WorkerStart:       "8f0c3b5a2e6d4e1f9a7b6c5d4e3f2a10",
	WorkerStop:        "8f0c3b5a2e6d4e1f9a7b6c5d4e3f2a11",
	WorkerReload:      "8f0c3b5a2e6d4e1f9a7b6c5d4e3f2a12",
	WorkerShutdown:    "8f0c3b5a2e6d4e1f9a7b6c5d4e3f2a13",
	WorkerMessage:     "3d8a5e1c2b7f4a9e8c6d0f1a2b3c4d5e", // activation.MessageIDWorkerMessage
	MasterShutdown:    "8f0c3b5a2e6d4e1f9a7b6c5d4e3f2a15",
	MasterReconfigure: "8f0c3b5a2e6d4e1f9a7b6c5d4e3f2a16",
}

// Event is one event.
type Event struct {
	Type     Type      `json:"event"`
	Time     time.Time `json:"time"`
	Group    string    `json:"group"`
	Instance int       `json:"instance,omitempty"` // 0: the group's supervisor
	// Message is the human-readable line (MESSAGE=).
	Message string `json:"message"`
	// Fields are the details, without the POWERHOUSE_ prefix, lower case:
	// "exit_code", "signal", "reason", "pid", "keys", ... They are written
	// to the journal, which many may read: never a configuration value
	// (master.reconfigure carries the keys changed, and values only of
	// the keys a group's public_config names).
	Fields map[string]string `json:"fields,omitempty"`
}

// Write sends e to journald. It fails when there is no journal (outside
// systemd).
func Write(e Event) error {
	if !journal.Enabled() {
		return errors.New("events: journald is not available")
	}
	vars := map[string]string{
		"MESSAGE_ID":          MessageID(e.Type),
		"POWERHOUSE_EVENT":    string(e.Type),
		"POWERHOUSE_GROUP":    e.Group,
		"POWERHOUSE_INSTANCE": strconv.Itoa(e.Instance),
		"SYSLOG_IDENTIFIER":   "powerhouse",
	}
	for k, v := range e.Fields {
		vars["POWERHOUSE_"+strings.ToUpper(k)] = v
	}
	prio := journal.PriInfo
	if e.Type == WorkerStop && e.Fields["result"] != "" && e.Fields["result"] != "success" {
		prio = journal.PriWarning
	}
	msg := e.Message
	if msg == "" {
		msg = e.String()
	}
	if err := journal.Send(msg, prio, vars); err != nil {
		return fmt.Errorf("events: write %s: %w", e.Type, err)
	}
	return nil
}

// String is a one-line description of e.
func (e Event) String() string {
	who := e.Group
	if e.Instance > 0 {
		who = fmt.Sprintf("%s@%d", e.Group, e.Instance)
	}
	var kv []string
	keys := make([]string, 0, len(e.Fields))
	for k := range e.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		kv = append(kv, k+"="+e.Fields[k])
	}
	s := string(e.Type) + " " + who
	if len(kv) > 0 {
		s += " " + strings.Join(kv, " ")
	}
	return s
}

// ReadOptions select events.
type ReadOptions struct {
	Group  string // "" for every group
	Follow bool   // keep reading new events until ctx ends
	// Journalctl is the journalctl command line prefix. Default
	// ["journalctl"]; tests run it inside a private systemd.
	Journalctl []string
	// Lines limits the past events shown; 0 means all.
	Lines int
}

// Read streams the events in the journal that match o to fn, oldest first.
// With Follow it returns when ctx ends.
func Read(ctx context.Context, o ReadOptions, fn func(Event) error) error {
	cmdline := o.Journalctl
	if len(cmdline) == 0 {
		cmdline = []string{"journalctl"}
	}
	args := append([]string{}, cmdline[1:]...)
	args = append(args, "--output=json", "--no-pager", "--quiet")
	if o.Follow {
		args = append(args, "--follow")
	}
	if o.Lines > 0 {
		args = append(args, "--lines="+strconv.Itoa(o.Lines))
	} else if o.Follow {
		args = append(args, "--lines=all")
	}
	// One match per type, OR-ed by journalctl; the group is AND-ed.
	for i, t := range Types {
		if i > 0 {
			args = append(args, "+")
		}
		args = append(args, "MESSAGE_ID="+MessageID(t))
		if o.Group != "" {
			args = append(args, "POWERHOUSE_GROUP="+o.Group)
		}
	}
	cmd := exec.CommandContext(ctx, cmdline[0], args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("events: %w", err)
	}
	perr := parse(out, fn)
	if perr != nil {
		cmd.Process.Kill()
	}
	werr := cmd.Wait()
	switch {
	case perr != nil:
		return perr
	case ctx.Err() != nil:
		return nil
	case werr != nil:
		return fmt.Errorf("events: journalctl: %v: %s", werr, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func parse(r io.Reader, fn func(Event) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var raw map[string]any
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil {
			continue
		}
		e, ok := FromJournal(raw)
		if !ok {
			continue
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return sc.Err()
}

// FromJournal converts one journal entry (journalctl -o json) to an Event.
func FromJournal(raw map[string]any) (Event, bool) {
	str := func(k string) string {
		if s, ok := raw[k].(string); ok {
			return s
		}
		return "" // binary fields come as arrays: not ours
	}
	t := Type(str("POWERHOUSE_EVENT"))
	if MessageID(t) == "" {
		return Event{}, false
	}
	e := Event{Type: t, Group: str("POWERHOUSE_GROUP"), Message: str("MESSAGE"), Fields: map[string]string{}}
	e.Instance, _ = strconv.Atoi(str("POWERHOUSE_INSTANCE"))
	if us, err := strconv.ParseInt(str("__REALTIME_TIMESTAMP"), 10, 64); err == nil {
		e.Time = time.UnixMicro(us).UTC()
	}
	for k := range raw {
		if f, ok := strings.CutPrefix(k, "POWERHOUSE_"); ok {
			switch f {
			case "EVENT", "GROUP", "INSTANCE":
			default:
				e.Fields[strings.ToLower(f)] = str(k)
			}
		}
	}
	if len(e.Fields) == 0 {
		e.Fields = nil
	}
	return e, true
}
