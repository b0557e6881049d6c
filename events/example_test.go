package events_test

import (
	"context"
	"fmt"

	"github.com/powerhouse/powerhouse/events"
)

// Follow the stopped workers of group web, as `powerhouse events -f web` does.
func ExampleRead() {
	ctx := context.Background()
	err := events.Read(ctx, events.ReadOptions{Group: "web", Follow: true}, func(e events.Event) error {
		if e.Type == events.WorkerStop {
			fmt.Println(e.Instance, e.Fields["exit_code"], e.Fields["signal"])
		}
		return nil
	})
	if err != nil {
		fmt.Println(err)
	}
}
