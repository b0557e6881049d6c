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
