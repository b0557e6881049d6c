package sdbox

import (
	"context"
	"errors"
	"fmt"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// Manager connects go-systemd to the box's systemd over its private
// socket, as dbus.NewSystemdConnectionContext does for the host's. The
// connection closes when ctx is done or with Close.
func (b *Box) Manager(ctx context.Context) (*sddbus.Conn, error) {
	c, err := sddbus.NewConnection(func() (*godbus.Conn, error) { return b.dialPrivate(ctx) })
	if err != nil {
		return nil, fmt.Errorf("sdbox manager: %w", err)
	}
	return c, nil
}

// SystemBus connects to the box's system bus (dbus-daemon, started by
// dbus.socket) and says Hello. It fails when D-Bus is not installed. The
// connection closes when ctx is done or with Close.
func (b *Box) SystemBus(ctx context.Context) (*godbus.Conn, error) {
	if !hasBus() {
		return nil, errors.New("sdbox system bus: no dbus-daemon or dbus-broker on this machine (apt-get install dbus)")
	}
	conn, err := b.dialBus(ctx, "/run/dbus/system_bus_socket", true, nil)
	if err != nil {
		return nil, fmt.Errorf("sdbox system bus: %w", err)
	}
	return conn, nil
}
