package activation

import (
	"context"
	"errors"
	"fmt"

	"github.com/coreos/go-systemd/v22/journal"
)

// MessageIDWorkerMessage is the journald MESSAGE_ID of worker.message
// events, the entries Send writes:
//
//	journalctl MESSAGE_ID=3d8a5e1c2b7f4a9e8c6d0f1a2b3c4d5e
const MessageIDWorkerMessage = "3d8a5e1c2b7f4a9e8c6d0f1a2b3c4d5e"

// Send sends msg to the group's supervisor: the seed's worker.message
// event. It writes one structured journald entry (priority info) with the
// fields
//
//	MESSAGE=<msg>
//	MESSAGE_ID=3d8a5e1c2b7f4a9e8c6d0f1a2b3c4d5e
//	POWERHOUSE_EVENT=worker.message
//	POWERHOUSE_GROUP=<group>
//	POWERHOUSE_INSTANCE=<instance>
//
// which `journalctl POWERHOUSE_EVENT=worker.message` and `powerhouse events`
// show. Without a journal (not under systemd, or no
// /run/systemd/journal/socket) it returns an error and sends nothing.
func Send(ctx context.Context, msg string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("activation: send: %w", err)
	}
	if !journal.Enabled() {
		return errors.New("activation: send: no systemd journal to write to (/run/systemd/journal/socket): not running under systemd")
	}
	err := journal.Send(msg, journal.PriInfo, map[string]string{
		"MESSAGE_ID":          MessageIDWorkerMessage,
		"POWERHOUSE_EVENT":    "worker.message",
		"POWERHOUSE_GROUP":    Group(),
		"POWERHOUSE_INSTANCE": Instance(),
	})
	if err != nil {
		return fmt.Errorf("activation: send: %w", err)
	}
	return nil
}
