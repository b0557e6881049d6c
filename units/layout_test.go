package units

import "testing"

// TestGroupOfSupervisor: the group is read back from a supervisor unit's
// name, and nothing else is taken for one.
func TestGroupOfSupervisor(t *testing.T) {
	for _, tc := range []struct {
		unit, want string
		ok         bool
	}{
		{Group{Name: "web"}.SupervisorUnit(), "web", true},
		{Group{Name: "a-b_c"}.SupervisorUnit(), "a-b_c", true},
		{Group{Name: "web"}.Instance(1), "", false},
		{Group{Name: "web"}.PublicSocket(), "", false},
		{SupervisorTemplate, "", false},
		{Target, "", false},
	} {
		got, ok := GroupOfSupervisor(tc.unit)
		if got != tc.want || ok != tc.ok {
			t.Errorf("GroupOfSupervisor(%q) = %q %v, want %q %v", tc.unit, got, ok, tc.want, tc.ok)
		}
	}
}

// TestHealthNames: the health units belong to no group, not even one
// called "health", and the drain state sits in the scope's runtime base.
func TestHealthNames(t *testing.T) {
	g := Group{Name: "health"}
	for _, u := range []string{HealthSocket, HealthService} {
		if g.Owns(u) {
			t.Errorf("group health owns %s", u)
		}
		if _, ok := GroupOfSupervisor(u); ok {
			t.Errorf("%s is taken for a supervisor", u)
		}
	}
	if got := System.DrainState(); got != "/run/powerhouse/drain.json" {
		t.Errorf("System.DrainState() = %q", got)
	}
	if got := User.UnitDrainState(); got != "%t/powerhouse/drain.json" {
		t.Errorf("User.UnitDrainState() = %q", got)
	}
}
