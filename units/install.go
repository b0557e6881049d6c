package units

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

// File is one file an installation owns, by its path on the target system.
type File struct {
	Path string      // absolute, as the target system sees it
	Data []byte      // content; unused for links
	Mode os.FileMode // permissions
	Link string      // non-empty: a symbolic link to this target
}

// Result says what Apply changed.
type Result struct {
	Written   []string // created or rewritten
	Unchanged []string
	Removed   []string // owned by the previous installation, not by this one
}

// Changed reports whether anything was written or removed.
func (r Result) Changed() bool { return len(r.Written)+len(r.Removed) > 0 }

// manifest is the list of files an installation wrote, kept beside the
// configuration, so that an uninstall removes exactly those.
type manifest struct {
	Files []string `json:"files"`
}

// Apply installs files under root ("" or "/" for the running system):
// each is written atomically and only when its content differs, files the
// previous installation owned and this one does not are removed, and the
// manifest at manifestPath records what is owned now.
func Apply(root, manifestPath string, files []File) (Result, error) {
	var r Result
	old, err := readManifest(root, manifestPath)
	if err != nil {
		return r, err
	}
	owned := map[string]bool{}
	for _, f := range files {
		owned[f.Path] = true
		p := filepath.Join(root, f.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return r, fmt.Errorf("install: %w", err)
		}
		var changed bool
		if f.Link != "" {
			changed, err = writeLink(p, f.Link)
		} else {
			changed, err = WriteFile(p, f.Data, f.Mode)
		}
		if err != nil {
			return r, fmt.Errorf("install: %w", err)
		}
		if changed {
			r.Written = append(r.Written, f.Path)
		} else {
			r.Unchanged = append(r.Unchanged, f.Path)
		}
	}
	for _, p := range old.Files {
		if !owned[p] {
			if err := os.Remove(filepath.Join(root, p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return r, fmt.Errorf("install: %w", err)
			}
			r.Removed = append(r.Removed, p)
		}
	}
	m := manifest{}
	for p := range owned {
		m.Files = append(m.Files, p)
	}
	sort.Strings(m.Files)
	b, _ := json.MarshalIndent(m, "", "  ")
	if _, err := WriteFile(filepath.Join(root, manifestPath), append(b, '\n'), 0o644); err != nil {
		return r, fmt.Errorf("install: %w", err)
	}
	return r, nil
}

// Uninstall removes every file the manifest lists, then the manifest, then
// directories that became empty; it never removes anything else.
func Uninstall(root, manifestPath string) ([]string, error) {
	m, err := readManifest(root, manifestPath)
	if err != nil {
		return nil, err
	}
	var removed []string
	dirs := map[string]bool{}
	for _, p := range m.Files {
		if err := os.Remove(filepath.Join(root, p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("uninstall: %w", err)
		}
		removed = append(removed, p)
		dirs[filepath.Dir(p)] = true
	}
	if err := os.Remove(filepath.Join(root, manifestPath)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return removed, fmt.Errorf("uninstall: %w", err)
	}
	dirs[filepath.Dir(manifestPath)] = true
	// Only directories that install creates for itself, and only if empty.
	for d := range dirs {
		switch filepath.Base(d) {
		case "powerhouse", "multi-user.target.wants", "default.target.wants":
			os.Remove(filepath.Join(root, d)) // fails, harmlessly, when not empty
		}
	}
	return removed, nil
}

// Installed reports whether a manifest exists.
func Installed(root, manifestPath string) bool {
	_, err := os.Stat(filepath.Join(root, manifestPath))
	return err == nil
}

func readManifest(root, manifestPath string) (manifest, error) {
	var m manifest
	b, err := os.ReadFile(filepath.Join(root, manifestPath))
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("read install manifest: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("read install manifest %s: %w", manifestPath, err)
	}
	return m, nil
}

func writeLink(path, target string) (bool, error) {
	if cur, err := os.Readlink(path); err == nil && cur == target {
		return false, nil
	}
	tmp := path + ".powerhouse-tmp"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return false, err
	}
	return true, nil
}
