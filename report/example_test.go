package report_test

import (
	"context"
	"errors"
	"log"
	"os"

	"github.com/powerhouse/powerhouse/handoff"
	"github.com/powerhouse/powerhouse/report"
)

// The supervisor's side: bind the group's report socket, read reports,
// and check each worker's Hello against the hand-off version it sends.
func ExampleListen() {
	gid := 990 // the workers' group
	r, err := report.Listen("/run/powerhouse/web/report.sock", 0o660, gid)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	for {
		m, from, err := r.Recv(ctx)
		var de *report.DatagramError
		if errors.As(err, &de) {
			log.Printf("%v", err) // count it; log at a bounded rate
			continue
		}
		if err != nil {
			log.Fatal(err)
		}
		// from.PID -> instance unit (D-Bus GetUnitByPID).
		switch m := m.(type) {
		case report.Hello:
			if err := m.Compatible(handoff.Version); err != nil {
				log.Printf("pid %d: %v", from.PID, err)
			}
			if m.Features.Has(report.FeatureReloadOnSIGHUP) {
				log.Printf("pid %d reloads on SIGHUP", from.PID)
			}
		case report.Draining:
			log.Printf("pid %d is draining", from.PID)
		case report.Closed:
			log.Printf("pid %d closed %d connections", from.PID, m.Count)
		}
	}
}

// The worker's side, which package activation does by itself: say hello
// to the supervisor named by $POWERHOUSE_REPORT_SOCKET, never waiting.
func ExampleClient_Send() {
	path := os.Getenv(report.SocketEnv)
	if path == "" {
		return // not under PowerHouse: nobody to report to
	}
	c, err := report.NewClient(path)
	if err != nil {
		log.Print(err)
		return
	}
	defer c.Close()
	if err := c.Send(report.NewHello(report.FeatureReloadOnSIGHUP)); err != nil {
		log.Print(err) // best effort: the worker serves anyway
	}
}
