// Command powerhouse turns a PowerHouse configuration into systemd units,
// supervises worker groups and lets operators control them.
// See the README for the verbs, or run `powerhouse help`.
package main

import (
	"os"

	"github.com/powerhouse/powerhouse/cmd/powerhouse/cli"
)

func main() { os.Exit(cli.Main()) }
