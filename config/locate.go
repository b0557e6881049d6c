package config

import (
	"strconv"
	"strings"
)

// locator maps key paths of a TOML document to the line they are written on.
//
// The TOML decoder keeps key positions private, and keys of different
// [[worker]] tables share one name there, so errors could not name the
// right line. This scanner understands just enough TOML to find where each
// key starts: table headers, arrays of tables (indexed), key/value lines and
// multi-line strings and arrays, which it skips. A path it cannot find falls
// back to the line of the enclosing table.
type locator struct {
	lines map[string]int
}

func newLocator(src []byte) *locator {
	l := &locator{lines: map[string]int{}}
	counts := map[string]int{} // array-of-tables name -> entries seen
	table := ""                // current table path, with indices
	inMulti := ""              // closing delimiter of a multi-line string
	depth := 0                 // open brackets/braces of a multi-line value
	lines := strings.Split(string(src), "\n")
	for i, line := range lines {
		n := i + 1
		if inMulti != "" {
			if strings.Contains(line, inMulti) {
				inMulti = ""
			}
			continue
		}
		if depth > 0 {
			depth += bracketDelta(line)
			continue
		}
		s := strings.TrimSpace(line)
		switch {
		case s == "" || s[0] == '#':
		case strings.HasPrefix(s, "[["):
			name := headerName(s[2:], "]]")
			// An array of tables inside the latest entry of another:
			// [[worker.listen]] is worker[N].listen[M].
			if dot := strings.IndexByte(name, '.'); dot > 0 {
				if c, ok := counts[name[:dot]]; ok {
					name = name[:dot] + "[" + strconv.Itoa(c-1) + "]" + name[dot:]
				}
			}
			idx := counts[name]
			counts[name] = idx + 1
			table = name + "[" + strconv.Itoa(idx) + "]"
			l.set(table, n)
		case s[0] == '[':
			name := headerName(s[1:], "]")
			// A sub-table of the latest array entry: [worker.config].
			if dot := strings.IndexByte(name, '.'); dot > 0 {
				if c, ok := counts[name[:dot]]; ok {
					name = name[:dot] + "[" + strconv.Itoa(c-1) + "]" + name[dot:]
				}
			}
			table = name
			l.set(table, n)
		default:
			key, rest, ok := splitKey(s)
			if !ok {
				continue
			}
			full := key
			if table != "" {
				full = table + "." + key
			}
			l.set(full, n)
			if strings.HasPrefix(rest, "[") {
				l.elements(full, lines[i:], len(line)-len(strings.TrimLeft(line, " \t"))+len(s)-len(rest), n)
			}
			if m := multiStart(rest); m != "" {
				inMulti = m
			} else {
				depth = bracketDelta(rest)
				if depth < 0 {
					depth = 0
				}
			}
		}
	}
	return l
}

// elements records the line where each element of the array value of key
// starts (key[0], key[1], ...), so that a problem with one listener of a
// list written over several lines is reported on its own line. lines[0]
// holds the value from column col; n is its line number.
func (l *locator) elements(key string, lines []string, col, n int) {
	depth, idx := 0, 0
	inQuote := byte(0)
	expect := false // the next value at depth 1 starts an element
	for li, line := range lines {
		start := 0
		if li == 0 {
			start = col
		}
		for i := start; i < len(line); i++ {
			c := line[i]
			switch {
			case inQuote != 0:
				if c == '\\' && inQuote == '"' {
					i++
				} else if c == inQuote {
					inQuote = 0
				}
				continue
			case c == ' ' || c == '\t' || c == '\r':
				continue
			case c == '#':
				i = len(line)
				continue
			}
			if depth == 1 && expect && c != ']' && c != ',' {
				l.set(key+"["+strconv.Itoa(idx)+"]", n+li)
				idx++
				expect = false
			}
			switch c {
			case '"', '\'':
				inQuote = c
			case '[', '{':
				depth++
				if depth == 1 {
					expect = true
				}
			case ']', '}':
				depth--
				if depth == 0 {
					return
				}
			case ',':
				if depth == 1 {
					expect = true
				}
			}
		}
		if inQuote != 0 {
			return // a multi-line string: give up, lines fall back to key
		}
	}
}

func (l *locator) set(p string, n int) {
	if _, ok := l.lines[p]; !ok {
		l.lines[p] = n
	}
}

// line returns the line of p, or of its nearest enclosing table, or 0.
func (l *locator) line(p string) int {
	for p != "" {
		if n, ok := l.lines[p]; ok {
			return n
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

func headerName(s, end string) string {
	if i := strings.Index(s, end); i >= 0 {
		s = s[:i]
	}
	parts := strings.Split(s, ".")
	for i, p := range parts {
		parts[i] = unquoteKey(strings.TrimSpace(p))
	}
	return strings.Join(parts, ".")
}

func unquoteKey(k string) string {
	if len(k) >= 2 && (k[0] == '"' || k[0] == '\'') && k[len(k)-1] == k[0] {
		if u, err := strconv.Unquote(`"` + k[1:len(k)-1] + `"`); err == nil {
			return u
		}
		return k[1 : len(k)-1]
	}
	return k
}

// splitKey splits `key = value` (the key may be dotted or quoted).
func splitKey(s string) (key, rest string, ok bool) {
	inQuote := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuote != 0:
			if c == inQuote {
				inQuote = 0
			}
		case c == '"' || c == '\'':
			inQuote = c
		case c == '=':
			return headerName(s[:i], "\x00"), strings.TrimSpace(s[i+1:]), true
		}
	}
	return "", "", false
}

func multiStart(v string) string {
	for _, d := range []string{`"""`, `'''`} {
		if strings.HasPrefix(v, d) && !strings.Contains(v[3:], d) {
			return d
		}
	}
	return ""
}

// bracketDelta counts unclosed [ and { outside strings and comments.
func bracketDelta(s string) int {
	d := 0
	inQuote := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuote != 0:
			if c == '\\' && inQuote == '"' {
				i++
			} else if c == inQuote {
				inQuote = 0
			}
		case c == '"' || c == '\'':
			inQuote = c
		case c == '#':
			return d
		case c == '[' || c == '{':
			d++
		case c == ']' || c == '}':
			d--
		}
	}
	return d
}

// tooDeep returns the first line of src where values, tables and dotted
// keys nest more than MaxNesting levels, or 0. It runs before the TOML
// decoder, whose time grows with the square of the nesting, so it scans
// only as much TOML as that needs: strings (all four kinds) and comments
// are skipped; "[" and "{" open a level, "]" and "}" close one; each "."
// in a key adds one until the key's "=" (or the header's "]"). Dots in a
// float count until the next "," or line: more, never less, than the
// decoder's depth, and harmless at this limit.
func tooDeep(src []byte) int {
	depth, dots, line := 0, 0, 1
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch c {
		case '\n':
			line++
			dots = 0
		case '#':
			for i+1 < len(src) && src[i+1] != '\n' {
				i++
			}
		case '"', '\'':
			delim := string([]byte{c, c, c})
			if strings.HasPrefix(string(src[i:min(i+3, len(src))]), delim) {
				// Multi-line string: up to the closing delimiter, which
				// may be followed by up to two more quotes of its own.
				j := i + 3
				for j < len(src) && !(strings.HasPrefix(string(src[j:min(j+3, len(src))]), delim)) {
					if src[j] == '\\' && c == '"' {
						j++
					} else if src[j] == '\n' {
						line++
					}
					j++
				}
				j += 3
				for k := 0; k < 2 && j < len(src) && src[j] == c; k++ {
					j++
				}
				i = j - 1
				continue
			}
			for i++; i < len(src) && src[i] != c && src[i] != '\n'; i++ {
				if src[i] == '\\' && c == '"' {
					i++
				}
			}
			if i < len(src) && src[i] == '\n' {
				line++
				dots = 0
			}
		case '[', '{':
			depth++
			dots = 0
		case ']', '}':
			depth--
			dots = 0
		case '=', ',':
			dots = 0
		case '.':
			dots++
		}
		if depth+dots > MaxNesting {
			return line
		}
	}
	return 0
}
