package config

import "fmt"

// ReloadSIGHUP is the one ReloadSignal there is: the workers re-read
// their configuration on SIGHUP, as the activation library's do.
const ReloadSIGHUP = "SIGHUP"

// MaxPublicConfig bounds public_config.
const MaxPublicConfig = 256

// reloadSignal reads reload_signal: "" (the default: `powerhouse set`
// restarts the instances one at a time) or "SIGHUP" (the workers handle
// it and re-read their configuration without a restart).
func (p *parser) reloadSignal(at string, v any) string {
	s, ok := v.(string)
	if !ok || (s != "" && s != ReloadSIGHUP) {
		shown := fmt.Sprintf("%q", s)
		if !ok {
			shown = typeName(v)
		}
		p.errf(at, `%s: use "SIGHUP" when the workers re-read their configuration on SIGHUP (Go workers using the activation library do), or leave it out: `+
			"`powerhouse set` then restarts the instances one at a time", shown)
		return ""
	}
	return s
}

// publicConfig reads public_config: the keys of [worker.config] whose
// values may appear in the journal (master.reconfigure events). Every
// other key's value is treated as a secret: events name the key only.
func (p *parser) publicConfig(at string, v any) []string {
	list, ok := v.([]any)
	if !ok {
		p.errf(at, "must be an array of [worker.config] key names, not %s", typeName(v))
		return nil
	}
	if len(list) > MaxPublicConfig {
		p.errf(at, "%d keys, more than %d", len(list), MaxPublicConfig)
		return nil
	}
	var out []string
	seen := map[string]bool{}
	for _, x := range list {
		k, ok := x.(string)
		if !ok {
			p.errf(at, "must hold key names (strings), not %s", typeName(x))
			return nil
		}
		if err := ValidKey(k); err != nil {
			p.errf(at, "%v", err)
			return nil
		}
		if seen[k] {
			p.errf(at, "key %q appears twice", k)
			return nil
		}
		seen[k] = true
		out = append(out, k)
	}
	return out
}

// Public reports whether the value of the group's config key k may be
// shown in logs and events (public_config).
func (w *Worker) Public(k string) bool {
	for _, x := range w.PublicConfig {
		if x == k {
			return true
		}
	}
	return false
}
