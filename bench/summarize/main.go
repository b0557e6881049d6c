// Command summarize turns the raw.tsv of a bench/run.sh run into the
// markdown table of docs/BENCHMARKS.md and checks the targets of the sticky
// dispatcher against it.
//
//	summarize -target powerhouse-sticky -peers haproxy-source,socket-proxyd raw.tsv
//
// Method (the shared peer harness's, ../shared/bench/summarize.js): a row's
// ratio in one round is its req/s divided by the mean of its reference's
// measurements taken just before and just after it in that round (the run
// brackets every row with them), which cancels the slow drift of a noisy
// shared machine; the table shows the median of those ratios over the
// rounds and their [min–max]. Absolute columns are medians over rounds.
//
// A row's reference is raw.tsv's "ref" column ("direct" when absent): the
// systemd rows are measured against systemd-reference, the others against
// direct; one table per reference.
//
// -goal ROW:CLOSE:KA[:CPU] (repeatable) checks a row's medians: new-
// connection ratio ≥ CLOSE, keep-alive ratio ≥ KA, and front (dispatcher,
// supervisor) CPU µs per connection ≤ CPU.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// rec is one raw.tsv line: one row measured under one workload in one round.
type rec struct {
	round, seq int
	row, wl    string
	ref        string // the reference row it is measured against
	f          map[string]string
}

func (r rec) num(k string) float64 {
	v, ok := r.f[k]
	if !ok || v == "" || v == "NA" || v == "-" {
		return math.NaN()
	}
	x, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return math.NaN()
	}
	return x
}

func main() {
	target := flag.String("target", "powerhouse-sticky", "row whose targets are checked")
	peers := flag.String("peers", "", "comma-separated rows the target must beat")
	closeMin := flag.Float64("close-min", 0.85, "target: new-connection ratio to direct")
	kaMin := flag.Float64("ka-min", 0.97, "target: keep-alive ratio to direct")
	var goals []goal
	flag.Func("goal", "`ROW:CLOSE:KA[:CPU]`: check ROW's median ratios (new connection ≥ CLOSE, keep-alive ≥ KA) and front CPU µs/conn (≤ CPU); repeatable", func(v string) error {
		g, err := parseGoal(v)
		if err == nil {
			goals = append(goals, g)
		}
		return err
	})
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: summarize [-target ROW] [-peers A,B] raw.tsv")
		os.Exit(2)
	}
	f, err := os.Open(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "summarize:", err)
		os.Exit(1)
	}
	defer f.Close()
	recs, err := read(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "summarize:", err)
		os.Exit(1)
	}
	var ps []string
	if *peers != "" {
		ps = strings.Split(*peers, ",")
	}
	s := &summary{recs: recs}
	s.table(os.Stdout)
	s.targets(os.Stdout, *target, ps, *closeMin, *kaMin)
	for _, g := range goals {
		s.goal(os.Stdout, g)
	}
}

// goal is one -goal.
type goal struct {
	row             string
	closeMin, kaMin float64
	cpuMax          float64 // NaN: not checked
}

func parseGoal(v string) (goal, error) {
	f := strings.Split(v, ":")
	if len(f) < 3 || len(f) > 4 || f[0] == "" {
		return goal{}, fmt.Errorf("-goal %q: want ROW:CLOSE:KA[:CPU]", v)
	}
	g := goal{row: f[0], cpuMax: math.NaN()}
	var err error
	num := func(s string) float64 {
		x, e := strconv.ParseFloat(s, 64)
		if e != nil || x < 0 || math.IsNaN(x) || math.IsInf(x, 0) {
			err = fmt.Errorf("-goal %q: %q is not a non-negative number", v, s)
		}
		return x
	}
	g.closeMin, g.kaMin = num(f[1]), num(f[2])
	if len(f) == 4 {
		g.cpuMax = num(f[3])
	}
	return g, err
}

func read(r io.Reader) ([]rec, error) {
	sc := bufio.NewScanner(r)
	if !sc.Scan() {
		return nil, fmt.Errorf("read raw.tsv: empty")
	}
	hdr := strings.Split(sc.Text(), "\t")
	var recs []rec
	for sc.Scan() {
		vals := strings.Split(sc.Text(), "\t")
		m := map[string]string{}
		for i, h := range hdr {
			if i < len(vals) {
				m[h] = vals[i]
			}
		}
		round, err1 := strconv.Atoi(m["round"])
		seq, err2 := strconv.Atoi(m["seq"])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("read raw.tsv: bad line %q", sc.Text())
		}
		ref := m["ref"]
		if ref == "" || ref == "NA" {
			ref = "direct"
		}
		recs = append(recs, rec{round: round, seq: seq, row: m["row"], wl: m["workload"], ref: ref, f: m})
	}
	return recs, sc.Err()
}

type summary struct{ recs []rec }

func (s *summary) rows() []string {
	var rs []string
	for _, r := range s.recs {
		if !slices.Contains(rs, r.row) {
			rs = append(rs, r.row)
		}
	}
	// references first, the rest in the order they were first measured
	isRef := func(r string) bool { return s.refOf(r) == r }
	slices.SortStableFunc(rs, func(a, b string) int {
		switch {
		case isRef(a) && !isRef(b):
			return -1
		case isRef(b) && !isRef(a):
			return 1
		}
		return 0
	})
	return rs
}

// refs lists the reference rows, direct first.
func (s *summary) refs() []string {
	var out []string
	for _, r := range s.rows() {
		if s.refOf(r) == r {
			out = append(out, r)
		}
	}
	slices.SortStableFunc(out, func(a, b string) int {
		switch {
		case a == "direct" && b != "direct":
			return -1
		case b == "direct" && a != "direct":
			return 1
		}
		return 0
	})
	return out
}

func (s *summary) of(row, wl string) []rec {
	var out []rec
	for _, r := range s.recs {
		if r.row == row && r.wl == wl {
			out = append(out, r)
		}
	}
	return out
}

// ratio is rec's req/s over the mean of the nearest measurements of its
// reference before and after it in the same round and workload.
func (s *summary) ratio(x rec) float64 {
	var before, after *rec
	for i := range s.recs {
		r := &s.recs[i]
		if r.row != x.ref || r.round != x.round || r.wl != x.wl || math.IsNaN(r.num("rps")) {
			continue
		}
		if r.seq < x.seq && (before == nil || r.seq > before.seq) {
			before = r
		}
		if r.seq > x.seq && (after == nil || r.seq < after.seq) {
			after = r
		}
	}
	var sum float64
	n := 0
	for _, r := range []*rec{before, after} {
		if r != nil {
			sum += r.num("rps")
			n++
		}
	}
	if n == 0 {
		return math.NaN()
	}
	return x.num("rps") / (sum / float64(n))
}

func (s *summary) ratios(row, wl string) []float64 {
	var xs []float64
	for _, r := range s.of(row, wl) {
		if v := s.ratio(r); !math.IsNaN(v) {
			xs = append(xs, v)
		}
	}
	return xs
}

func median(xs []float64) float64 {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	m := len(v) / 2
	if len(v)%2 == 1 {
		return v[m]
	}
	return (v[m-1] + v[m]) / 2
}

func col(rs []rec, k string) []float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = r.num(k)
	}
	return xs
}

func f0(x float64) string {
	if math.IsNaN(x) {
		return "n/a"
	}
	return strconv.FormatFloat(math.Round(x), 'f', 0, 64)
}

func f2(x float64) string {
	if math.IsNaN(x) {
		return "n/a"
	}
	return strconv.FormatFloat(x, 'f', 2, 64)
}

func f3(x float64) string {
	if math.IsNaN(x) {
		return "n/a"
	}
	return strconv.FormatFloat(x, 'f', 3, 64)
}

func f1(x float64) string {
	if math.IsNaN(x) {
		return "n/a"
	}
	return strconv.FormatFloat(x, 'f', 1, 64)
}

// refOf is the reference row of row ("direct" when unknown).
func (s *summary) refOf(row string) string {
	for _, r := range s.recs {
		if r.row == row {
			return r.ref
		}
	}
	return "direct"
}

func (s *summary) ratioCell(row, wl string) string {
	if row == s.refOf(row) {
		return "1.00"
	}
	xs := s.ratios(row, wl)
	if len(xs) == 0 {
		return "n/a"
	}
	if len(xs) == 1 {
		return f2(xs[0])
	}
	return fmt.Sprintf("%s [%s–%s]", f2(median(xs)), f2(slices.Min(xs)), f2(slices.Max(xs)))
}

func sum(xs []float64) float64 {
	t := 0.0
	for _, x := range xs {
		if !math.IsNaN(x) {
			t += x
		}
	}
	return t
}

func maxOf(xs []float64) float64 {
	m := math.NaN()
	for _, x := range xs {
		if !math.IsNaN(x) && (math.IsNaN(m) || x > m) {
			m = x
		}
	}
	return m
}

func (s *summary) table(w io.Writer) {
	rounds := map[int]bool{}
	for _, r := range s.recs {
		rounds[r.round] = true
	}
	fmt.Fprintf(w, "Medians of %d round(s). ×ref = median over rounds of (row req/s ÷ mean of its reference's measurements just before and after it), [min–max] over rounds; one table per reference.\n", len(rounds))
	for _, ref := range s.refs() {
		fmt.Fprintf(w, "\nAgainst **%s**:\n\n", ref)
		fmt.Fprintf(w, "| row | workers hit | sticky sources | new-conn req/s | new-conn ×%s | p50 ms | p99 ms | keep-alive req/s | keep-alive ×%s | p50 ms | p99 ms | errors (new/ka) | front CPU µs/conn | workers CPU µs/conn | workers CPU µs/req (ka) |\n", ref, ref)
		fmt.Fprintln(w, "|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
		for _, row := range s.rows() {
			if s.refOf(row) != ref {
				continue
			}
			s.tableRow(w, row)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "\"workers hit\": distinct instances that answered, over all measurements of the row. \"sticky sources\": in the new-connection runs, how many of the client source addresses always reached the same instance (a sticky row must show N/N; the SO_REUSEPORT reference rows spread by 4-tuple, so ~0/N). \"front CPU\": utime+stime (/proc/PID/stat) of the row's front process over the measured window, divided by the connections opened in it, new-connection workload: the dispatcher or proxy (powerhouse run, the systemd-house group's supervisor, the Node primary, HAProxy, systemd-socket-proxyd; for the reference rows the idle reuseport launcher). \"workers CPU\": the same summed over the workers (the hello instances or copies; every process below the lead for the rows outside systemd), per connection in the new-connection workload and per request in the keep-alive one.")
}

func (s *summary) tableRow(w io.Writer, row string) {
	c, k := s.of(row, "close"), s.of(row, "ka")
	failed := 0
	for _, r := range c {
		if math.IsNaN(r.num("rps")) {
			failed++
		}
	}
	name := row
	if failed > 0 {
		name += fmt.Sprintf(" (%d failed)", failed)
	}
	hit := maxOf(append(col(c, "instances"), col(k, "instances")...))
	// sticky sources: of the sources used in the new-connection runs
	// (a new connection each time, so a fresh dispatch decision), how
	// many always reached the same instance; median over rounds.
	var st []string
	for _, r := range c {
		if v := r.f["sticky_sources"]; v != "" && v != "NA" {
			st = append(st, v)
		}
	}
	sticky := "n/a"
	if len(st) > 0 {
		slices.Sort(st)
		sticky = st[len(st)/2]
		if st[0] != st[len(st)-1] {
			sticky = st[0] + "…" + st[len(st)-1]
		}
	}
	fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s/%s | %s | %s | %s |\n",
		name, f0(hit), sticky,
		f0(median(col(c, "rps"))), s.ratioCell(row, "close"), f2(median(col(c, "p50_ms"))), f2(median(col(c, "p99_ms"))),
		f0(median(col(k, "rps"))), s.ratioCell(row, "ka"), f2(median(col(k, "p50_ms"))), f2(median(col(k, "p99_ms"))),
		f0(sum(col(c, "errors"))), f0(sum(col(k, "errors"))), f1(median(col(c, "lead_cpu_us_per_conn"))),
		f1(median(col(c, "workers_cpu_us_per_conn"))), f1(median(col(k, "workers_cpu_us_per_req"))))
}

// goal prints whether g's row met its goals.
func (s *summary) goal(w io.Writer, g goal) {
	if len(s.of(g.row, "close")) == 0 {
		return
	}
	ref := s.refOf(g.row)
	fmt.Fprintf(w, "\nGoals for %s (medians of per-round ratios to %s):\n\n", g.row, ref)
	for _, t := range []struct {
		wl, name string
		min      float64
	}{{"close", "new connection per request", g.closeMin}, {"ka", "keep-alive", g.kaMin}} {
		xs := s.ratios(g.row, t.wl)
		m := median(xs)
		fmt.Fprintf(w, "- %s: %s×%s (rounds: %s), goal ≥ %.2f: %s\n", t.name, f3(m), ref, list(xs), t.min, verdict(m >= t.min))
	}
	if !math.IsNaN(g.cpuMax) {
		xs := col(s.of(g.row, "close"), "lead_cpu_us_per_conn")
		m := median(xs)
		fmt.Fprintf(w, "- front CPU per connection: %s µs (rounds: %s), goal ≤ %s µs: %s\n", f1(m), list1(xs), f1(g.cpuMax), verdict(m <= g.cpuMax))
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func list1(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = f1(x)
	}
	return strings.Join(parts, ", ")
}

func (s *summary) targets(w io.Writer, target string, peers []string, closeMin, kaMin float64) {
	if len(s.of(target, "close")) == 0 {
		return
	}
	fmt.Fprintf(w, "\nTargets for %s (medians of per-round ratios to direct):\n\n", target)
	for _, t := range []struct {
		wl, name string
		min      float64
	}{{"close", "new connection per request", closeMin}, {"ka", "keep-alive", kaMin}} {
		xs := s.ratios(target, t.wl)
		m := median(xs)
		fmt.Fprintf(w, "- %s: %s×direct (rounds: %s), target ≥ %.2f: %s\n", t.name, f3(m), list(xs), t.min, verdict(m >= t.min))
		for _, p := range peers {
			pm := median(s.ratios(p, t.wl))
			if math.IsNaN(pm) {
				continue
			}
			// Per-round comparison too: a median lead can hide a round lost.
			won, n := 0, 0
			for _, a := range s.of(target, t.wl) {
				for _, b := range s.of(p, t.wl) {
					if a.round == b.round {
						ra, rb := s.ratio(a), s.ratio(b)
						if !math.IsNaN(ra) && !math.IsNaN(rb) {
							n++
							if ra > rb {
								won++
							}
						}
					}
				}
			}
			fmt.Fprintf(w, "  - ahead of %s (%s×direct; %s won %d of %d rounds): %s\n", p, f3(pm), target, won, n, verdict(m > pm))
		}
	}
}

func list(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = f3(x)
	}
	return strings.Join(parts, ", ")
}
