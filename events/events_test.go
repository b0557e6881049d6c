package events

import (
	"strings"
	"testing"
)

func TestFromJournal(t *testing.T) {
	raw := map[string]any{
		"MESSAGE":              "worker web@2 (pid 42) killed by SIGKILL",
		"MESSAGE_ID":           MessageID(WorkerStop),
		"POWERHOUSE_EVENT":     "worker.stop",
		"POWERHOUSE_GROUP":     "web",
		"POWERHOUSE_INSTANCE":  "2",
		"POWERHOUSE_SIGNAL":    "SIGKILL",
		"POWERHOUSE_PID":       "42",
		"__REALTIME_TIMESTAMP": "1764108000000000",
	}
	e, ok := FromJournal(raw)
	if !ok || e.Type != WorkerStop || e.Group != "web" || e.Instance != 2 || e.Fields["signal"] != "SIGKILL" || e.Fields["pid"] != "42" {
		t.Fatalf("FromJournal = %+v, %v", e, ok)
	}
	if e.Time.Unix() != 1764108000 {
		t.Errorf("time %v", e.Time)
	}
	if got := e.String(); got != "worker.stop web@2 pid=42 signal=SIGKILL" {
		t.Errorf("String() = %q", got)
	}
	if _, ok := FromJournal(map[string]any{"POWERHOUSE_EVENT": "worker.dance"}); ok {
		t.Error("an unknown event type was accepted")
	}
}

func TestParseSkipsOtherLines(t *testing.T) {
	in := `{"POWERHOUSE_EVENT":"worker.start","POWERHOUSE_GROUP":"api","POWERHOUSE_INSTANCE":"1","MESSAGE":"x"}
not json
{"MESSAGE":"unrelated"}
{"POWERHOUSE_EVENT":"master.shutdown","POWERHOUSE_GROUP":"api","POWERHOUSE_INSTANCE":"0","POWERHOUSE_REASON":"stop"}
`
	var got []string
	if err := parse(strings.NewReader(in), func(e Event) error { got = append(got, e.String()); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "|") != "worker.start api@1|master.shutdown api reason=stop" {
		t.Errorf("events: %q", got)
	}
}

func TestMessageIDsDistinct(t *testing.T) {
	seen := map[string]Type{}
	for _, ty := range Types {
		id := MessageID(ty)
		if len(id) != 32 {
			t.Errorf("%s: MESSAGE_ID %q is not 128 bits of hex", ty, id)
		}
		if prev, dup := seen[id]; dup {
			t.Errorf("%s and %s share MESSAGE_ID %s", ty, prev, id)
		}
		seen[id] = ty
	}
}
