package supervisor

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
	DispatchMode string          `json:"dispatch_mode,omitempty"`
	Amount       int             `json:"amount"`
	Supervisor   UnitStatus      `json:"supervisor"`
	Config       map[string]any  `json:"config"`
	Dispatch     *DispatchStatus `json:"dispatch,omitempty"`
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

// InstanceStatus is one worker instance.
type InstanceStatus struct {
	Instance int `json:"instance"`
	UnitStatus
	UptimeSeconds float64 `json:"uptime_seconds"` // since it became active; 0 when not active
	Restarts      uint32  `json:"restarts"`       // systemd's NRestarts
	HandedOff     uint64  `json:"handed_off"`     // connections dispatched to it (sticky groups)
	Queued        int     `json:"queued"`         // connections waiting now for room in its hand-off queue (sticky groups)
	InDispatch    bool    `json:"in_dispatch"`    // receives new connections (sticky groups)
	Buckets       int     `json:"buckets"`        // buckets of the steering table it serves (kernel mode)
}
