package supervisor

import (
	"time"

	"github.com/powerhouse/powerhouse/units"
)

// GroupStatus is one group in `powerhouse status --json` and the result of
// MethodStatus. The field names are stable (docs/status.md); new fields
// may be added.
type GroupStatus struct {
	Group  string `json:"group"`
	Type   string `json:"type"`
	Sticky bool   `json:"sticky"`
	// DispatchMode is a sticky group's dispatch setting, "handoff" or
	// "kernel" (config.Dispatch); "" for other groups, or when the
	// configuration cannot be read. The CLI fills it from the configuration.
	DispatchMode string     `json:"dispatch_mode,omitempty"`
	Amount       int        `json:"amount"`
	Supervisor   UnitStatus `json:"supervisor"`
	// Headline is the supervisor's STATUS= line ("4/4 up · 1.2k conn/s ·
	// 0 misses"); absent when the supervisor does not answer.
	Headline string          `json:"headline,omitempty"`
	Config   map[string]any  `json:"config"`
	Dispatch *DispatchStatus `json:"dispatch,omitempty"`
	// Kernel is a kernel-mode group's steering, as its supervisor sees
	// it (absent when the supervisor does not answer).
	Kernel    *KernelStatus    `json:"kernel,omitempty"`
	Instances []InstanceStatus `json:"instances"`
	// DispatchKnown says that the supervisor has published its dispatch
	// set, so InDispatch means what it says.
	DispatchKnown bool `json:"-"`
}

// UnitStatus is a unit's state as systemd reports it.
type UnitStatus struct {
	Unit     string `json:"unit"`
	State    string `json:"state"`     // ActiveState
	SubState string `json:"sub_state"` // SubState
	PID      uint32 `json:"pid"`       // MainPID, 0 when not running
}

// DispatchStatus are a sticky group's counters since its supervisor started.
type DispatchStatus = DispatchCounters

// InstanceStatus is one worker instance: one slot, served by one of its
// two services (powerhouse-web@2.service or, after a reload,
// powerhouse-web.b@2.service), named in Unit with its state and PID,
// while the process it replaced may still drain (Draining).
type InstanceStatus struct {
	Instance int `json:"instance"`
	UnitStatus
	UptimeSeconds float64 `json:"uptime_seconds"` // since it became active; 0 when not active
	Restarts      uint32  `json:"restarts"`       // systemd's NRestarts
	HandedOff     uint64  `json:"handed_off"`     // connections dispatched to it (sticky groups)
	Queued        int     `json:"queued"`         // connections waiting now for room in its hand-off queue (sticky groups)
	InDispatch    bool    `json:"in_dispatch"`    // receives new connections (sticky groups)
	Buckets       int     `json:"buckets"`        // buckets of the steering table it serves (kernel mode)
	// Draining is the slot's old process while it drains after a
	// reload handed the slot over (its unit's stop job); absent when
	// none does.
	Draining *DrainingStatus `json:"draining,omitempty"`
}

// DrainingStatus is an instance's old process while it drains.
type DrainingStatus struct {
	Unit string `json:"unit"`
	PID  uint32 `json:"pid"`
	// Since is when the supervisor saw its drain begin; absent when
	// unknown (systemd's view, without the supervisor).
	Since time.Time `json:"since,omitzero"`
}

// SlotSides returns, of the states of a slot's services (its two sides,
// or the one systemd has loaded), the one that speaks for the slot: the
// one serving, else one coming up, else one busy, else one at rest
// (failed first); and the other when it is on its way down (a drain),
// nil otherwise. sts must not be empty.
func SlotSides(sts []units.UnitState) (units.UnitState, *units.UnitState) {
	best := 0
	for i := range sts {
		if sideRank(sts[i]) > sideRank(sts[best]) {
			best = i
		}
	}
	for i := range sts {
		if i != best && (sts[i].ActiveState == units.Deactivating || sts[i].JobType == units.JobStop && !sts[i].ActiveState.AtRest()) {
			return sts[best], &sts[i]
		}
	}
	return sts[best], nil
}
