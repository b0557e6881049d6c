package supervisor

import (
	"net"
	"testing"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/units"
)

func TestMembership(t *testing.T) {
	for _, tc := range []struct {
		name           string
		st             units.UnitState
		member, stoppd bool
	}{
		{"running", units.UnitState{LoadState: "loaded", ActiveState: "active"}, true, false},
		{"starting", units.UnitState{LoadState: "loaded", ActiveState: "activating", JobType: "start"}, true, false},
		{"auto-restart after a crash", units.UnitState{LoadState: "loaded", ActiveState: "activating", SubState: "auto-restart"}, true, false},
		{"restart, stopping half", units.UnitState{LoadState: "loaded", ActiveState: "deactivating", JobType: "restart"}, true, false},
		{"restart, between", units.UnitState{LoadState: "loaded", ActiveState: "inactive", JobType: "restart"}, true, false},
		{"crash, killing the rest", units.UnitState{LoadState: "loaded", ActiveState: "deactivating", SubState: "stop-sigterm"}, true, false},
		{"operator stop", units.UnitState{LoadState: "loaded", ActiveState: "deactivating", JobType: "stop"}, false, true},
		{"stopped", units.UnitState{LoadState: "loaded", ActiveState: "inactive"}, false, true},
		{"failed", units.UnitState{LoadState: "loaded", ActiveState: "failed"}, false, true},
		{"masked while running", units.UnitState{LoadState: "masked", ActiveState: "active"}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Member(tc.st); got != tc.member {
				t.Errorf("Member = %v, want %v", got, tc.member)
			}
			if got := Stopping(tc.st); got != tc.stoppd {
				t.Errorf("Stopping = %v, want %v", got, tc.stoppd)
			}
		})
	}
}

func TestMatchListener(t *testing.T) {
	ls := []config.Listener{
		{Name: "any", Network: "tcp", Address: ":80"},
		{Name: "v4", Network: "tcp", Address: "127.0.0.1:81"},
		{Name: "v6", Network: "tcp", Address: "[::1]:81"},
		{Name: "sock", Network: "unix", Address: "/run/a.sock"},
	}
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("::"), Port: 80}, "any"},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 81}, "v4"},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 81}, "v6"},
		{&net.UnixAddr{Name: "/run/a.sock"}, "sock"},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.2"), Port: 81}, ""},
	} {
		l, ok := matchListener(ls, tc.addr)
		if l.Name != tc.want || ok != (tc.want != "") {
			t.Errorf("%v: matched %q, want %q", tc.addr, l.Name, tc.want)
		}
	}
}
