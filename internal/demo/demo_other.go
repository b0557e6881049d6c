//go:build !linux

package main

import (
	"context"
	"fmt"
	"io"
)

// group is the sticky group the screens are about.
const group = "web"

// Run explains that the demo needs Linux: it boots a private systemd.
func Run(ctx context.Context, o Options, out io.Writer) int {
	fmt.Fprintln(out, "make demo boots a private systemd in Linux namespaces: it runs on Linux only (as root).")
	return exitCannot
}
