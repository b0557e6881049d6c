package main

import (
	"math"
	"strings"
	"testing"
)

// raw is a two-round run: round 1 measures direct, a, direct, b, direct;
// round 2 the rows the other way round.
const raw = `round	seq	row	workload	rps	instances	sticky_sources
1	0	direct	close	100	2	0/4
1	1	a	close	90	2	4/4
1	2	direct	close	80	2	0/4
1	3	b	close	40	1	4/4
1	4	direct	close	120	2	0/4
2	0	direct	close	200	2	0/4
2	1	b	close	NA	NA	NA
2	2	direct	close	200	2	0/4
2	3	a	close	150	2	4/4
`

func TestRatios(t *testing.T) {
	recs, err := read(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	s := &summary{recs: recs}
	for _, tc := range []struct {
		name string
		row  string
		want []float64
	}{
		// 90 / mean(100, 80); 150 / 200 (no direct after it: the one before only)
		{"bracketed, then one-sided", "a", []float64{1, 0.75}},
		// 40 / mean(80, 120); the failed round has no ratio
		{"a failed round is skipped", "b", []float64{0.4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := s.ratios(tc.row, "close")
			if len(got) != len(tc.want) {
				t.Fatalf("ratios(%s) = %v, want %v", tc.row, got, tc.want)
			}
			for i := range got {
				if math.Abs(got[i]-tc.want[i]) > 1e-9 {
					t.Fatalf("ratios(%s) = %v, want %v", tc.row, got, tc.want)
				}
			}
		})
	}
	if m := median(s.ratios("a", "close")); math.Abs(m-0.875) > 1e-9 {
		t.Errorf("median = %v, want 0.875", m)
	}
	var b strings.Builder
	s.table(&b)
	if !strings.Contains(b.String(), "| b (1 failed) |") {
		t.Errorf("table does not flag the failed measurement:\n%s", b.String())
	}
	b.Reset()
	s.targets(&b, "a", []string{"b"}, 0.6, 0.9)
	if !strings.Contains(b.String(), "target ≥ 0.60: met") || !strings.Contains(b.String(), "ahead of b (0.400×direct; a won 1 of 1 rounds): met") {
		t.Errorf("targets:\n%s", b.String())
	}
}

// rawRefs has rows measured against two references: a against direct,
// s against sref (the systemd rows' reference), in the same round.
const rawRefs = `round	seq	row	workload	rps	lead_cpu_us_per_conn	ref
1	0	direct	close	100	0	direct
1	1	a	close	90	20	direct
1	2	direct	close	100	0	direct
1	3	sref	close	50	0	sref
1	4	s	close	45	12	sref
1	5	sref	close	40	0	sref
`

func TestRatiosPerReference(t *testing.T) {
	recs, err := read(strings.NewReader(rawRefs))
	if err != nil {
		t.Fatal(err)
	}
	s := &summary{recs: recs}
	for _, tc := range []struct {
		row  string
		want float64
	}{{"a", 0.9}, {"s", 1}} { // 90/100; 45/mean(50, 40), not 45/100
		got := s.ratios(tc.row, "close")
		if len(got) != 1 || math.Abs(got[0]-tc.want) > 1e-9 {
			t.Errorf("ratios(%s) = %v, want [%v]", tc.row, got, tc.want)
		}
	}
	if got := s.refs(); strings.Join(got, ",") != "direct,sref" {
		t.Errorf("refs = %v", got)
	}
	var b strings.Builder
	s.table(&b)
	if !strings.Contains(b.String(), "Against **sref**") || !strings.Contains(b.String(), "| sref | n/a | n/a | 45 | 1.00 |") {
		t.Errorf("table:\n%s", b.String())
	}
	g, err := parseGoal("s:0.95:0.98:10")
	if err != nil {
		t.Fatal(err)
	}
	b.Reset()
	s.goal(&b, g)
	if !strings.Contains(b.String(), "1.000×sref") || !strings.Contains(b.String(), "goal ≤ 10.0 µs: **missed**") {
		t.Errorf("goal:\n%s", b.String())
	}
	for _, bad := range []string{"s", "s:x:1", ":1:1", "s:1:1:1:1", "s:-1:1"} {
		if _, err := parseGoal(bad); err == nil {
			t.Errorf("parseGoal(%q): no error", bad)
		}
	}
}
