package activation_test

import (
	"testing"

	"github.com/powerhouse/powerhouse/activation"
	"github.com/powerhouse/powerhouse/affinity"
)

func TestNewSessionID(t *testing.T) {
	for _, tc := range []struct {
		name, env string
		want      int
		tagged    bool
	}{
		{name: "instance 3", env: "3", want: 3, tagged: true},
		{name: "unset", env: ""},
		{name: "not a number", env: "web"},
		{name: "out of range", env: "1025"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(activation.EnvInstance, tc.env)
			id := activation.NewSessionID()
			n, ok := affinity.InstanceOfID(id)
			if ok != tc.tagged || n != tc.want {
				t.Fatalf("InstanceOfID(%q) = %d, %v; want %d, %v", id, n, ok, tc.want, tc.tagged)
			}
			if activation.NewSessionID() == id {
				t.Fatal("two ids alike")
			}
		})
	}
}
