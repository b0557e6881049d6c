package main

import (
	"strings"
	"testing"
	"time"
)

func TestReloadOptionsCheck(t *testing.T) {
	good := reloadOptions{long: 200, sources: 64, period: 100 * time.Millisecond, steady: 3 * time.Second, hold: time.Second}
	tests := []struct {
		name string
		edit func(*reloadOptions)
		want string // "" for valid
	}{
		{"defaults", func(*reloadOptions) {}, ""},
		{"no long-lived connections", func(o *reloadOptions) { o.long = 0 }, ""},
		{"too many long-lived", func(o *reloadOptions) { o.long = 10001 }, "-long"},
		{"no sources", func(o *reloadOptions) { o.sources = 0 }, "-sources"},
		{"more sources than a /24", func(o *reloadOptions) { o.sources = 251 }, "-sources"},
		{"period too short", func(o *reloadOptions) { o.period = time.Millisecond }, "-period"},
		{"steady too short", func(o *reloadOptions) { o.steady = 0 }, "-steady"},
		{"negative hold", func(o *reloadOptions) { o.hold = -time.Second }, "-hold"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good
			tt.edit(&o)
			err := o.check()
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("check() = %v, want an error naming %q", err, tt.want)
			}
		})
	}
}

// TestReloadLine: the line run.sh reads; drain counts are NA unless every
// slot's event carried them.
func TestReloadLine(t *testing.T) {
	r := reloadResult{dispatch: "handoff", slots: 3, long: 200, drained: 210, failed: 0, requests: 3000,
		p99Steady: 1500 * time.Microsecond, p99Reload: 2 * time.Millisecond, reload: time.Second, drains: 2 * time.Second, readyMS: []string{"80", "90", "85"}}
	for _, want := range []string{"reload dispatch=handoff ", " cut=0 ", " event_cut=0 ", " drained=210 ", " p99_steady_ms=1.50 ", " p99_reload_ms=2.00 ", " ready_ms=80,90,85 "} {
		if !strings.Contains(r.line(), want) {
			t.Errorf("%q lacks %q", r.line(), want)
		}
	}
	r.fieldless = 1
	if l := r.line(); !strings.Contains(l, " event_cut=NA drained=NA ") {
		t.Errorf("an event without counts: %q, want NA", l)
	}
}

func TestP99(t *testing.T) {
	var ss []sample
	for i := 1; i <= 200; i++ {
		ss = append(ss, sample{took: time.Duration(i) * time.Millisecond})
	}
	if got := p99(ss); got != 198*time.Millisecond {
		t.Errorf("p99 of 1..200 ms = %v, want 198ms", got)
	}
	if got := p99(nil); got != 0 {
		t.Errorf("p99 of nothing = %v", got)
	}
}
