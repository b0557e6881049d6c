package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

// module is the repository's module path, by which the demo recognises
// the repository it runs in.
const module = "github.com/powerhouse/powerhouse"

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // a step failed or a check did not hold
	exitCannot  = 2 // the demo cannot run here (not root, not Linux, ...)
	exitSignals = 130
)

func main() {
	os.Exit(mainExit(os.Args[1:], os.Stdout, os.Stderr))
}

func mainExit(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("powerhouse-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	repo := fs.String("repo", "", "the repository `DIR` (default: the one holding the working directory)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: powerhouse-demo [-repo DIR]\n\n"+
			"Boots a private systemd (needs root), installs testdata/demo.toml in it\n"+
			"with bin/powerhouse, shows the house at work, and tears it all down.\n"+
			"`make demo` builds bin/ and runs it.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitCannot
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return exitCannot
	}
	root := *repo
	if root == "" {
		wd, err := os.Getwd()
		if err == nil {
			root, err = findRepo(wd)
		}
		if err != nil {
			fmt.Fprintf(stderr, "demo: %v\n", err)
			return exitCannot
		}
	}
	root, err := filepath.Abs(root)
	if err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return exitCannot
	}
	o := Options{
		Config:     filepath.Join(root, "testdata", "demo.toml"),
		Powerhouse: filepath.Join(root, "bin", "powerhouse"),
		Visible:    []string{root},
	}
	for _, p := range []string{o.Config, o.Powerhouse, filepath.Join(root, "bin", "hello")} {
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(stderr, "demo: %v\nRun `make demo` (it builds bin/powerhouse and bin/hello first) from the repository.\n", err)
			return exitCannot
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A second Ctrl-C during the tear-down kills the demo the default way;
	// the box dies with it (sdbox sets PR_SET_PDEATHSIG on its init).
	go func() { <-ctx.Done(); stop() }()
	code := Run(ctx, o, stdout)
	if code == exitFailed && ctx.Err() != nil {
		return exitSignals
	}
	return code
}

// findRepo returns the directory at or above dir whose go.mod declares
// this module.
func findRepo(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && isModule(b) {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("%s is not inside the PowerHouse repository (no go.mod of %s above it); use -repo DIR", dir, module)
		}
	}
}

// isModule tells whether a go.mod declares this module.
func isModule(gomod []byte) bool {
	for _, line := range bytes.Split(gomod, []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) == 2 && string(f[0]) == "module" && string(f[1]) == module {
			return true
		}
	}
	return false
}
