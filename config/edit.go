package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// SetAmount returns src with the amount of group set to n, changing only
// the lines it must: comments and layout stay. The result is validated.
func SetAmount(file string, src []byte, group string, n int) ([]byte, error) {
	e, err := newEditor(file, src, group)
	if err != nil {
		return nil, err
	}
	if err := e.setKey(e.at, "amount", strconv.Itoa(n)); err != nil {
		return nil, err
	}
	return e.finish(func(w *Worker) error {
		if w.Amount != n {
			return fmt.Errorf("amount is %d after the edit, want %d", w.Amount, n)
		}
		return nil
	})
}

// SetGroupConfig returns src with keys of group's [worker.config] table set
// to values (JSON-like: string, json.Number, float64, bool, []any,
// map[string]any), changing only the lines it must. The result is
// validated.
func SetGroupConfig(file string, src []byte, group string, values map[string]any) ([]byte, error) {
	e, err := newEditor(file, src, group)
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v, err := tomlValue(values[k])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		if err := e.setConfig(k, v); err != nil {
			return nil, err
		}
	}
	return e.finish(func(w *Worker) error {
		for _, k := range keys {
			want, _ := normalize(values[k])
			if !reflect.DeepEqual(normJSON(w.Config[k]), normJSON(want)) {
				return fmt.Errorf("config.%s reads back as %v, want %v", k, w.Config[k], want)
			}
		}
		return nil
	})
}

// ParseValue reads the value of a `key=value` argument: a JSON literal, or
// a bare word taken as a string.
func ParseValue(s string) (any, error) {
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	var v any
	err := d.Decode(&v)
	if err == nil && !d.More() {
		if _, err := d.Token(); err != nil { // nothing after the value
			return normalize(v)
		}
	}
	// The messages never quote the value: it may be a secret, and
	// standard error ends up in logs.
	switch {
	case s == "":
		return nil, errors.New(`empty value: write "" for an empty string`)
	case strings.ContainsAny(s[:1], `{["`):
		if err == nil {
			err = errors.New("more text after the value")
		}
		return nil, fmt.Errorf("a value starting with %c must be JSON, and this is not: %v", s[0], err)
	}
	if bad := badText(s); bad != "" {
		return nil, fmt.Errorf("neither JSON nor a plain word: a plain word %s (give it as a JSON string, \"...\", with \\n for a line break)", bad)
	}
	return s, nil
}

// normalize turns decoded JSON into the values TOML can hold.
func normalize(v any) (any, error) {
	switch t := v.(type) {
	case nil:
		return nil, errors.New("null cannot be written in TOML; remove the key from the file instead")
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i, nil
		}
		f, err := t.Float64()
		if err != nil || math.IsInf(f, 0) {
			return nil, fmt.Errorf("number %s is out of range", t)
		}
		return f, nil
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			n, err := normalize(x)
			if err != nil {
				return nil, err
			}
			out[i] = n
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			n, err := normalize(x)
			if err != nil {
				return nil, err
			}
			out[k] = n
		}
		return out, nil
	case string:
		if bad := badText(t); bad != "" && strings.ContainsAny(t, "\x00") {
			return nil, fmt.Errorf("string %s", bad)
		}
		return t, nil
	}
	return v, nil
}

// normJSON makes values comparable across TOML decoding (int64) and JSON.
func normJSON(v any) any {
	b, _ := json.Marshal(v)
	var out any
	json.Unmarshal(b, &out)
	return out
}

var bareKeyRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// ValidKey reports whether k can be a key of a group's config.
func ValidKey(k string) error {
	if k == "" || len(k) > 128 || badText(k) != "" {
		return fmt.Errorf("key %q: use 1 to 128 printable characters", k)
	}
	return nil
}

func tomlKey(k string) string {
	if bareKeyRE.MatchString(k) {
		return k
	}
	return tomlString(k)
}

func tomlValue(v any) (string, error) {
	v, err := normalize(v)
	if err != nil {
		return "", err
	}
	switch t := v.(type) {
	case string:
		return tomlString(t), nil
	case int64:
		return strconv.FormatInt(t, 10), nil
	case float64:
		s := strconv.FormatFloat(t, 'g', -1, 64)
		if !strings.ContainsAny(s, ".eEn") {
			s += ".0"
		}
		return s, nil
	case bool:
		return strconv.FormatBool(t), nil
	case []any:
		parts := make([]string, len(t))
		for i, x := range t {
			if parts[i], err = tomlValue(x); err != nil {
				return "", err
			}
		}
		return "[" + strings.Join(parts, ", ") + "]", nil
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			s, err := tomlValue(t[k])
			if err != nil {
				return "", err
			}
			parts[i] = tomlKey(k) + " = " + s
		}
		return "{ " + strings.Join(parts, ", ") + " }", nil
	}
	return "", fmt.Errorf("cannot write %T in TOML", v)
}

// tomlString writes a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// editor changes single lines of one [[worker]] table.
type editor struct {
	file  string
	lines []string
	group string
	at    string // "worker[i]"
	loc   *locator
}

func newEditor(file string, src []byte, group string) (*editor, error) {
	c, err := Parse(file, src)
	if err != nil {
		return nil, err
	}
	idx := -1
	for i, w := range c.Workers {
		if w.Name == group {
			idx = i
		}
	}
	if idx < 0 {
		return nil, fmt.Errorf("%s: no group %q", file, group)
	}
	return &editor{file: file, lines: strings.Split(string(src), "\n"), group: group,
		at: "worker[" + strconv.Itoa(idx) + "]", loc: newLocator(src)}, nil
}

func (e *editor) reload() { e.loc = newLocator([]byte(strings.Join(e.lines, "\n"))) }

// singleLine reports whether the value written at line n (1-based) ends on it.
func singleLine(line string) bool {
	_, rest, ok := splitKey(strings.TrimSpace(line))
	return ok && multiStart(rest) == "" && bracketDelta(rest) == 0
}

// setKey sets key (in table path table) to the TOML text value: it
// replaces the key's line, or inserts one after the table's header.
func (e *editor) setKey(table, key, value string) error {
	if n, ok := e.loc.lines[table+"."+key]; ok {
		if !singleLine(e.lines[n-1]) {
			return fmt.Errorf("%s:%d: %s is written over several lines: change it by hand", e.file, n, key)
		}
		indent := e.lines[n-1][:len(e.lines[n-1])-len(strings.TrimLeft(e.lines[n-1], " \t"))]
		e.lines[n-1] = indent + tomlKey(key) + " = " + value
		e.reload()
		return nil
	}
	h, ok := e.loc.lines[table]
	if !ok {
		return fmt.Errorf("%s: table of group %s not found", e.file, e.group)
	}
	e.insert(h, tomlKey(key)+" = "+value)
	return nil
}

// insert puts a line after line n (1-based).
func (e *editor) insert(n int, line string) {
	e.lines = append(e.lines[:n], append([]string{line}, e.lines[n:]...)...)
	e.reload()
}

func (e *editor) setConfig(key, value string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	table := e.at + ".config"
	if n, ok := e.loc.lines[table]; ok {
		if !strings.HasPrefix(strings.TrimSpace(e.lines[n-1]), "[") {
			return fmt.Errorf("%s:%d: the config of group %s is an inline table: change it by hand, or make it a [worker.config] table", e.file, n, e.group)
		}
		return e.setKey(table, key, value)
	}
	// No config table yet: add one at the end of the group's entry, before
	// the next table header (or at the end of the file).
	start := e.loc.lines[e.at]
	end := len(e.lines)
	for i := start; i < len(e.lines); i++ { // lines[start] is the line after the header
		s := strings.TrimSpace(e.lines[i])
		if strings.HasPrefix(s, "[") && !strings.HasPrefix(strings.ReplaceAll(s, " ", ""), "[worker.") {
			end = i
			break
		}
	}
	for end > start && strings.TrimSpace(e.lines[end-1]) == "" {
		end--
	}
	e.lines = append(e.lines[:end], append([]string{"[worker.config]", tomlKey(key) + " = " + value}, e.lines[end:]...)...)
	e.reload()
	return nil
}

func (e *editor) finish(check func(*Worker) error) ([]byte, error) {
	out := []byte(strings.Join(e.lines, "\n"))
	c, err := Parse(e.file, out)
	if err != nil {
		return nil, fmt.Errorf("the edited configuration would not be valid: %w", err)
	}
	w := c.Worker(e.group)
	if w == nil {
		return nil, fmt.Errorf("group %s lost in the edit", e.group)
	}
	if err := check(w); err != nil {
		return nil, fmt.Errorf("%s: edit failed: %w", e.file, err)
	}
	return out, nil
}

// AbsoluteExec returns src with every exec whose program was written as a
// relative path ("../bin/app", resolved against the file's directory)
// rewritten as an array of absolute words, so that the file means the same
// wherever it is copied. Other lines are left as they are.
func AbsoluteExec(file string, src []byte) ([]byte, error) {
	here, err := Parse(file, src)
	if err != nil {
		return nil, err
	}
	// Parsed from the root directory, relative programs resolve
	// differently: that is how they are told apart.
	elsewhere, err := Parse("/.powerhouse-probe/x.toml", src)
	if err != nil {
		return src, nil
	}
	lines := strings.Split(string(src), "\n")
	loc := newLocator(src)
	rewrite := func(at string, argv []string) error {
		n, ok := loc.lines[at]
		if !ok || !singleLine(lines[n-1]) {
			return fmt.Errorf("%s:%d: exec with a relative program must be on one line to be installed; make the path absolute", file, n)
		}
		words := make([]string, len(argv))
		for i, w := range argv {
			words[i] = tomlString(w)
		}
		indent := lines[n-1][:len(lines[n-1])-len(strings.TrimLeft(lines[n-1], " \t"))]
		lines[n-1] = indent + "exec = [" + strings.Join(words, ", ") + "]"
		return nil
	}
	for i := range here.Workers {
		if here.Workers[i].Exec[0] != elsewhere.Workers[i].Exec[0] {
			if err := rewrite("worker["+strconv.Itoa(i)+"].exec", here.Workers[i].Exec); err != nil {
				return nil, err
			}
		}
	}
	if here.Prepare != nil && here.Prepare.Exec[0] != elsewhere.Prepare.Exec[0] {
		if err := rewrite("prepare.exec", here.Prepare.Exec); err != nil {
			return nil, err
		}
	}
	return []byte(strings.Join(lines, "\n")), nil
}
