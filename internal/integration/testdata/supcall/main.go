// Command supcall calls a group's supervisor over its control socket, as
// the CLI does, for the integration tests (built by TestMain): usage
//
//	supcall CONTROL-SOCKET reload|scale N|reconfigure|status
//
// It prints each progress line, then the result, and exits 1 with the
// supervisor's error. The tests run it where a client of the supervisor
// must be a process of the box: ExecReload=, a client killed mid-reload.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"

	"github.com/powerhouse/powerhouse/supervisor"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: supcall CONTROL-SOCKET reload|scale N|reconfigure|status")
		os.Exit(2)
	}
	c := &supervisor.Client{Path: os.Args[1]}
	ctx := context.Background()
	progress := func(p supervisor.Progress) { fmt.Println(p.Message) }
	var res supervisor.OperationResult
	var err error
	switch os.Args[2] {
	case "reload":
		res, err = c.Reload(ctx, progress)
	case "reconfigure":
		res, err = c.Reconfigure(ctx, progress)
	case "scale":
		n, _ := strconv.Atoi(os.Args[3])
		res, err = c.Scale(ctx, n, progress)
	case "status":
		var gs supervisor.GroupStatus
		if gs, err = c.Status(ctx); err == nil {
			json.NewEncoder(os.Stdout).Encode(gs)
			return
		}
	default:
		err = fmt.Errorf("unknown call %q", os.Args[2])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(res.Message)
}
