package generator

import "strings"

// Specifiers escapes s for a unit setting that resolves % specifiers but is
// otherwise taken literally (Description=).
func Specifiers(s string) string { return strings.ReplaceAll(s, "%", "%%") }

// PathEscape escapes a path for settings that resolve specifiers.
func PathEscape(s string) string { return Specifiers(s) }

// ExecLine renders argv as the value of ExecStart= and friends, so that
// systemd runs exactly these words: every word that needs it is quoted,
// "%" and "$" are doubled (no specifier or variable expansion), and a lone
// ";" (systemd's command separator) is escaped.
func ExecLine(argv []string) string {
	words := make([]string, len(argv))
	for i, w := range argv {
		words[i] = execWord(w)
	}
	return strings.Join(words, " ")
}

func execWord(w string) string {
	w = strings.ReplaceAll(w, "%", "%%")
	w = strings.ReplaceAll(w, "$", "$$")
	if w == ";" {
		return `\;`
	}
	if w != "" && !strings.ContainsAny(w, " \t\"'\\") {
		return w
	}
	return quote(w)
}

// EnvLine renders assignments for Environment=, each quoted so that spaces,
// quotes and backslashes in values survive. Specifiers are not escaped:
// callers use them on purpose (%i).
func EnvLine(assignments []string) string {
	q := make([]string, len(assignments))
	for i, a := range assignments {
		if strings.ContainsAny(a, " \t\"'\\") {
			q[i] = quote(a)
		} else {
			q[i] = a
		}
	}
	return strings.Join(q, " ")
}

// quote wraps s in double quotes with C-style escapes, as systemd unquotes.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' || s[i] == '"' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}
