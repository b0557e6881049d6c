// Command powerhouse turns a PowerHouse configuration into systemd units,
// supervises worker groups and lets operators control them.
// See the README for the verbs, or run `powerhouse help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/powerhouse/powerhouse/cmd/powerhouse/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
