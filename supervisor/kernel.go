package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/generator"
	"github.com/powerhouse/powerhouse/sticky"
	"github.com/powerhouse/powerhouse/units"
)

// Kernel mode (dispatch = "kernel"): every instance listens on a socket
// of its own, all of one listen address in one SO_REUSEPORT group, and an
// eBPF program attached to the group picks the socket of each new
// connection from the client's address (package steer). The supervisor is
// out of the data path: it gets a copy of every instance's sockets from
// systemd (Sockets= of its unit), loads the program (or adopts it from its
// fd store after a restart), attaches it to each group, fills the socket
// array and keeps the bucket table equal to rendezvous hashing over the
// instances that are up (the same membership rules as hand-off mode:
// Member). docs/ARCHITECTURE.md, "Kernel steering", is the design.

// steering is kernel mode's view of the group's steering (package
// steer's Steering, which kernel_steer.go adapts): a bucket table shared by
// the group's listen addresses and, per address (l, the index in the
// group's listen list), a program and a socket array indexed by instance.
// Tests of the error paths a real kernel cannot be made to produce on
// demand use a fake.
type steering interface {
	// Attach attaches address l's program to the reuseport group of
	// listening socket f (SO_ATTACH_REUSEPORT_EBPF); attaching the program
	// already attached changes nothing for the traffic.
	Attach(l int, f *os.File) error
	// SetSocket puts instance n's listening socket on address l in its
	// slot (a no-op when it is there already).
	SetSocket(l, n int, f *os.File) error
	// ClearSocket empties instance n's slot on address l.
	ClearSocket(l, n int) error
	// SetTable makes the bucket table rendezvous hashing over up.
	SetTable(up *sticky.Set) error
	// Shares counts the buckets of each instance in the table.
	Shares() map[int]int
	// Files are the table's, programs' and arrays' descriptors, named,
	// for the fd store; the loader adopts them back.
	Files() ([]*os.File, error)
	// ProgramIDs are the kernel's ids of the programs, by address
	// (bpftool prog show id N).
	ProgramIDs() []uint32
	Close() error
}

// steerLoader adopts the steering from the descriptors the fd store gave
// back (adopt, nil for none), or loads a new one for the given number of
// listen addresses, with room for instances up to config.MaxAmount.
type steerLoader func(adopt []*os.File, listeners int) (steering, error)

// steerFDPrefix begins the names of the fd store's descriptors: package
// steer's names for them (steer.FileTable, FilePrefixProg,
// FilePrefixSocks). The instance sockets systemd passes are named
// units.InstanceFDName(n) by the socket units' FileDescriptorName=.
const steerFDPrefix = "steer-"

// instanceOfFD returns the instance a socket systemd passed belongs to,
// from its name.
func instanceOfFD(name string) (int, bool) {
	n, ok := units.InstanceOfFDName(name)
	if !ok || n > config.MaxAmount {
		return 0, false
	}
	return n, true
}

// kernel is a kernel-mode group's steering state.
type kernel struct {
	mu sync.Mutex
	// st is the steering; nil while degraded.
	st steering
	// why says why steering is off ("" when it is on): the group is
	// served by plain SO_REUSEPORT, not sticky.
	why string
	// adopted says the steering came from the fd store (a supervisor
	// restart: the programs stayed attached meanwhile).
	adopted bool
	// socks are the supervisor's copies of the instances' sockets, by
	// instance and listen address; since is when each instance's socket
	// unit last became active as the supervisor knows it: a later time
	// means systemd made new sockets, and the copies are stale.
	socks map[int]map[int]*os.File
	since map[int]time.Time
	// table is the set the bucket table was last computed over.
	table *sticky.Set
	// missing: instances up whose sockets the supervisor does not hold
	// (started after it), since when; gaveUp: those a restart did not
	// bring (their socket unit is not in its Sockets=).
	missing map[int]time.Time
	gaveUp  map[int]bool
	// restarting says the supervisor asked systemd to restart it.
	restarting bool
}

// pickupSettle is how long an instance must be up without its socket in
// the supervisor's hands before the supervisor restarts to get it: a
// scale-up of several instances then costs one restart.
const pickupSettle = time.Second

// pickupFile remembers, across the restart it asks for, which instances'
// sockets a restart was to bring, so that one not listed in Sockets=
// (a drop-in not rewritten) does not make the supervisor restart forever.
func (s *Supervisor) pickupFile() string { return s.g.RuntimeDir() + "/kernel-pickup.json" }

// kernelStart takes the instance sockets and the fd store's descriptors
// from files, adopts or loads the programs, attaches them, fills the
// socket arrays and stores the programs in the fd store. A program that
// cannot be loaded leaves the group degraded (plain SO_REUSEPORT, not
// sticky), which it says once in the journal; a descriptor it cannot use
// is named in the journal and closed. It returns no error: the group is
// served whatever happens here.
func (s *Supervisor) kernelStart(files []*os.File) error {
	k := &kernel{socks: map[int]map[int]*os.File{}, since: map[int]time.Time{}, missing: map[int]time.Time{}, gaveUp: map[int]bool{}}
	s.kern = k
	w := s.worker()
	var stored []*os.File
	defer func() {
		// The loader duplicates what it adopts.
		for _, f := range stored {
			f.Close()
		}
	}()
	for _, f := range files {
		if strings.HasPrefix(f.Name(), steerFDPrefix) {
			stored = append(stored, f)
			continue
		}
		// A descriptor the group cannot use (a socket unit left from
		// another configuration) is named and closed: the group serves
		// with the others.
		n, ok := instanceOfFD(f.Name())
		if !ok {
			s.log.Warn("inherited descriptor is neither an instance socket nor the steering's: closed", "name", f.Name(), "want", units.InstanceFDName(1))
			f.Close()
			continue
		}
		a, err := sockName(f)
		if err != nil {
			s.log.Warn("inherited instance socket unreadable: closed", "name", f.Name(), "err", err)
			f.Close()
			continue
		}
		cfg, ok := matchListener(w.Listen, a)
		if !ok {
			s.log.Warn("inherited instance socket matches no listen address of the group: closed (reinstall the units)", "name", f.Name(), "address", a.String())
			f.Close()
			continue
		}
		l := slices.IndexFunc(w.Listen, func(x config.Listener) bool { return x.Name == cfg.Name })
		if k.socks[n] == nil {
			k.socks[n] = map[int]*os.File{}
		}
		if old := k.socks[n][l]; old != nil {
			old.Close()
		}
		k.socks[n][l] = f
	}
	s.pickupCheck(k)
	s.socketsSince(k)
	why := s.loadPrograms(k, w, stored)
	if why != "" {
		k.degrade(why)
		s.detachAll(k, w)
		// The one journal line that says why; STATUS= and status say
		// it as long as it lasts.
		s.log.Warn("kernel steering unavailable: the group is served by plain SO_REUSEPORT, not sticky", "why", why)
		return nil
	}
	s.storePrograms(k)
	if k.adopted {
		s.log.Info("kernel steering adopted from the fd store", "programs", k.programIDs())
	} else {
		s.log.Info("kernel steering loaded", "programs", k.programIDs())
	}
	return nil
}

// loadPrograms adopts the steering (from stored) or loads it, attaches
// each address's program to its reuseport group through any instance
// socket of that address, and fills the socket arrays. It returns why
// steering is off, "" when it is on.
func (s *Supervisor) loadPrograms(k *kernel, w *config.Worker, stored []*os.File) string {
	load := s.loadSteer
	if load == nil {
		return errNoSteer.Error()
	}
	var st steering
	var err error
	if len(stored) > 0 {
		if st, err = load(stored, len(w.Listen)); err != nil {
			// What was stored does not fit (an upgrade changed its
			// layout, the listen addresses changed): it leaves the
			// store, or it would keep the sockets in its arrays, and a
			// new program replaces it where it is attached.
			s.log.Warn("stored steering not adopted; loading it anew", "err", err)
			for _, f := range stored {
				s.o.Notify("FDSTOREREMOVE=1\nFDNAME=" + f.Name())
			}
		} else {
			k.adopted = true
		}
	}
	if st == nil {
		if st, err = load(nil, len(w.Listen)); err != nil {
			return fmt.Sprintf("the eBPF program cannot be loaded: %v", err)
		}
	}
	k.st = st
	for l := range w.Listen {
		ns := slices.Sorted(mapsKeys(k.socks))
		ns = slices.DeleteFunc(ns, func(n int) bool { return k.socks[n][l] == nil })
		if len(ns) == 0 {
			s.log.Warn("no instance socket for a listen address: nothing to attach to until the supervisor restarts with one", "listen", w.Listen[l].Address)
			continue
		}
		// Attached first: a program loaded anew replaces one that a
		// supervisor before this one attached (and could not store),
		// whose array still holds the sockets until it is gone. The
		// table is empty until the first SetTable, so the kernel's hash
		// places connections meanwhile. Attaching the program attached
		// already (adopted) changes nothing.
		if err := st.Attach(l, k.socks[ns[0]][l]); err != nil {
			return fmt.Sprintf("the eBPF program cannot be attached to %s: %v", w.Listen[l].Address, err)
		}
		for _, n := range ns {
			if err := setSocket(st, l, n, k.socks[n][l]); err != nil {
				return fmt.Sprintf("instance %d's socket on %s cannot be put in the socket array: %v", n, w.Listen[l].Address, err)
			}
		}
	}
	return ""
}

// replacedWait bounds the wait for the array of a replaced program to let
// go of its sockets (the kernel frees it after an RCU grace period).
const replacedWait = 2 * time.Second

// setSocket puts a socket in its slot, waiting while it is still in the
// array of a program just replaced (EBUSY).
func setSocket(st steering, l, n int, f *os.File) error {
	deadline := time.Now().Add(replacedWait)
	for {
		err := st.SetSocket(l, n, f)
		if err == nil || !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mapsKeys[V any](m map[int]V) func(func(int) bool) {
	return func(yield func(int) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// degrade turns steering off for why: the programs are closed (an
// attached one stays attached until its group's sockets close, and then
// picks the sockets it still holds; none is attached when loading failed).
func (k *kernel) degrade(why string) {
	if k.st != nil {
		k.st.Close()
	}
	k.st = nil
	k.why = why
}

// detachAll takes any program off each listen address's reuseport group
// (one a supervisor before this one attached, whose table nobody keeps
// now); ENOENT says none was attached.
func (s *Supervisor) detachAll(k *kernel, w *config.Worker) {
	if s.detachSteer == nil {
		return
	}
	for l := range w.Listen {
		for _, socks := range k.socks {
			if f := socks[l]; f != nil {
				if err := s.detachSteer(f); err != nil && !errors.Is(err, unix.ENOENT) {
					s.log.Warn("steering program not detached", "listen", w.Listen[l].Address, "err", err)
				}
				break
			}
		}
	}
}

// programIDs lists the kernel's ids of the programs, for the log and
// status.
func (k *kernel) programIDs() []uint32 {
	if k.st == nil {
		return nil
	}
	return k.st.ProgramIDs()
}

// storePrograms puts the programs' descriptors in the supervisor's fd
// store (FDSTORE=1, FileDescriptorStoreMax= of its unit), so that a
// supervisor restarted or killed adopts them: the programs and tables
// stay attached meanwhile. FDPOLL=0: systemd must not drop them on a
// poll event (a BPF descriptor has none to give).
func (s *Supervisor) storePrograms(k *kernel) {
	if s.o.NotifyFiles == nil || k.adopted {
		return
	}
	fs, err := k.st.Files()
	if err != nil {
		s.log.Warn("steering not stored: a supervisor restart will load it anew", "err", err)
		return
	}
	if limit := generator.KernelFDStoreMax(s.worker()); len(fs) > limit {
		// systemd would keep the first ones only, and a restarted
		// supervisor could not adopt a part.
		s.log.Warn("steering not stored: more descriptors than the unit's FileDescriptorStoreMax=; a supervisor restart will load it anew",
			"descriptors", len(fs), "max", limit)
		for _, f := range fs {
			f.Close()
		}
		return
	}
	for _, f := range fs {
		// A descriptor stored under the name before (steering that was
		// not adopted) goes first.
		s.o.Notify("FDSTOREREMOVE=1\nFDNAME=" + f.Name())
		if err := s.o.NotifyFiles("FDSTORE=1\nFDPOLL=0\nFDNAME="+f.Name(), []*os.File{f}); err != nil {
			s.log.Warn("steering not stored: a supervisor restart will load it anew", "name", f.Name(), "err", err)
		}
		f.Close()
	}
}

// kernelSync makes the bucket tables rendezvous hashing over the
// instances that take connections: members (Member), among 1..amount,
// whose sockets the supervisor holds and put in the arrays. It does
// nothing when the set did not change.
func (s *Supervisor) kernelSync() {
	k := s.kern
	if k == nil {
		return
	}
	s.mu.Lock()
	var ids []int
	for n, st := range s.state {
		if n <= s.amount && Member(st) {
			ids = append(ids, n)
		}
	}
	s.mu.Unlock()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.st == nil {
		return
	}
	var in []int
	for _, n := range ids {
		if len(k.socks[n]) > 0 {
			in = append(in, n)
		}
	}
	set := sticky.NewSet(in...)
	if k.table != nil && slices.Equal(k.table.IDs(), set.IDs()) {
		return
	}
	if err := k.st.SetTable(set); err != nil {
		// The table stays as it was, but for the buckets written: the
		// next change tries again.
		s.log.Error("bucket table not updated", "err", err)
		return
	}
	s.log.Info("bucket table updated", "instances", set.IDs())
	k.table = set
}

// kernelRelease closes the supervisor's copies of instance n's sockets
// and empties its slots: once systemd has closed its own (the socket unit
// stopped), the supervisor's copy is all that keeps a socket nobody
// accepts on in the reuseport group.
func (s *Supervisor) kernelRelease(n int, why string) {
	k := s.kern
	if k == nil {
		return
	}
	k.mu.Lock()
	socks := k.socks[n]
	delete(k.socks, n)
	delete(k.since, n)
	if k.st != nil {
		for l := range socks {
			if err := k.st.ClearSocket(l, n); err != nil {
				s.log.Debug("slot not cleared", "instance", n, "err", err)
			}
		}
	}
	k.mu.Unlock()
	for _, f := range socks {
		f.Close()
	}
	if len(socks) > 0 {
		s.log.Info("instance socket released", "instance", n, "why", why)
	}
	s.kernelSync()
}

// socketsSince records when the socket unit of each instance whose
// sockets the supervisor holds last became active: the sockets systemd
// passed at this start are those.
func (s *Supervisor) socketsSince(k *kernel) {
	ctx, cancel := context.WithTimeout(context.Background(), units.CallTimeout)
	defer cancel()
	for n := range k.socks {
		if t, err := s.o.Manager.Since(ctx, s.g.InstanceSocket(n)); err == nil {
			k.since[n] = t
		}
	}
}

// staleSocket reports whether the socket unit of instance n, active, was
// started again after the supervisor got its sockets (a restart of the
// socket unit that the watch saw only at its end).
func (s *Supervisor) staleSocket(ctx context.Context, n int) bool {
	k := s.kern
	k.mu.Lock()
	was, ok := k.since[n]
	_, held := k.socks[n]
	k.mu.Unlock()
	if !ok || !held {
		return false
	}
	t, err := s.o.Manager.Since(ctx, s.g.InstanceSocket(n))
	return err == nil && t.After(was)
}

// kernelSocketChanged follows the instances' socket units: one that is
// no longer active was closed by systemd (stopped, or restarted: a new
// socket), so the supervisor's copy goes too. It reports whether name is
// one of them.
func (s *Supervisor) kernelSocketChanged(ctx context.Context, name string) bool {
	if s.kern == nil {
		return false
	}
	n, ok := s.socketOf(name)
	if !ok {
		return false
	}
	st, err := s.o.Manager.State(ctx, name)
	if err != nil {
		s.log.Warn("state not read", "unit", name, "err", err)
		return true
	}
	switch st.ActiveState {
	case units.Inactive, units.Failed, units.Deactivating:
		s.kernelRelease(n, "its socket unit is "+string(st.ActiveState))
	case units.Active:
		if s.staleSocket(ctx, n) {
			s.kernelRelease(n, "its socket unit was started again: new sockets")
		}
	}
	return true
}

// socketOf returns n for the socket unit of instance n.
func (s *Supervisor) socketOf(unit string) (int, bool) {
	base, ok := strings.CutSuffix(unit, ".socket")
	if !ok {
		return 0, false
	}
	return s.g.InstanceOf(base + ".service")
}

// kernelPickup asks systemd to restart the supervisor when an instance
// is up whose sockets it does not hold: a socket unit started after the
// supervisor (a scale-up, an instance started again after a stop) made
// a new socket, and systemd passes a service its sockets only when it
// starts. The supervisor is out of the data path, so its restart costs
// no connection: the programs stay attached, and it adopts them from its
// fd store. It waits until no operation runs and the instance has been up
// for pickupSettle, so that a scale-up costs one restart; an instance a
// restart did not bring (its socket unit is not in the Sockets= of the
// supervisor's drop-in) is named in the journal and not waited for again.
func (s *Supervisor) kernelPickup(ctx context.Context, now time.Time) {
	k := s.kern
	if k == nil || !s.isReady() || s.runningOp() != "" {
		return
	}
	s.mu.Lock()
	var up []int
	for n, st := range s.state {
		if n <= s.amount && st.ActiveState == units.Active {
			up = append(up, n)
		}
	}
	s.mu.Unlock()
	k.mu.Lock()
	if k.st == nil || k.restarting {
		k.mu.Unlock()
		return
	}
	var due []int
	seen := map[int]bool{}
	for _, n := range up {
		if len(k.socks[n]) > 0 || k.gaveUp[n] {
			continue
		}
		seen[n] = true
		since, ok := k.missing[n]
		if !ok {
			k.missing[n] = now
			continue
		}
		if now.Sub(since) >= pickupSettle {
			due = append(due, n)
		}
	}
	for n := range k.missing {
		if !seen[n] {
			delete(k.missing, n)
		}
	}
	if len(due) == 0 {
		k.mu.Unlock()
		return
	}
	k.restarting = true
	k.mu.Unlock()
	slices.Sort(due)
	b, _ := json.Marshal(due)
	if _, err := units.WriteFile(s.pickupFile(), b, units.Public); err != nil {
		s.log.Warn("cannot remember the sockets a restart is to bring; not restarting", "err", err)
		return
	}
	self := s.g.SupervisorUnit()
	s.log.Info("restarting the supervisor to take the sockets of instances started after it (it is not in the data path: no connection waits)", "instances", due)
	go func() {
		// A job of systemd's own on the supervisor (a stop of the
		// house) goes first: a restart in mode "replace" would undo it.
		if st, err := s.o.Manager.State(ctx, self); err == nil && st.JobType != units.NoJob {
			s.log.Info("not restarting: systemd has a job on the supervisor", "job", st.JobType)
			return
		}
		// The job stops this process before it ends: the error that
		// comes back then is no news.
		if err := s.o.Manager.Restart(context.WithoutCancel(ctx), self); err != nil && ctx.Err() == nil {
			s.log.Warn("restart to take new instance sockets failed", "err", err)
		}
	}()
}

// pickupCheck reads what the restart that started this supervisor was to
// bring: an instance whose sockets did not come is named, once, and not
// restarted for again.
func (s *Supervisor) pickupCheck(k *kernel) {
	b, err := os.ReadFile(s.pickupFile())
	if err != nil {
		return
	}
	os.Remove(s.pickupFile())
	var want []int
	if json.Unmarshal(b, &want) != nil {
		return
	}
	for _, n := range want {
		if n < 1 || n > config.MaxAmount || len(k.socks[n]) > 0 {
			continue
		}
		k.gaveUp[n] = true
		s.log.Warn("a restart did not bring an instance's socket: it is not in the Sockets= of the supervisor's drop-in (rewrite it with `powerhouse scale`); the instance gets no connection until then",
			"instance", n, "socket", s.g.InstanceSocket(n))
	}
}

// kernelClose closes the supervisor's descriptors at its end. The
// programs stay attached: they belong to the sockets' reuseport groups,
// and the fd store keeps them for the next supervisor.
func (s *Supervisor) kernelClose() {
	k := s.kern
	if k == nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.st != nil {
		k.st.Close()
	}
	for _, socks := range k.socks {
		for _, f := range socks {
			f.Close()
		}
	}
	k.socks = map[int]map[int]*os.File{}
}

// KernelStatus is a kernel-mode group's steering in `powerhouse status
// --json` (docs/status.md).
type KernelStatus struct {
	// Steering is "sticky" (the program picks the instance by client
	// address) or "degraded" (plain SO_REUSEPORT: the kernel spreads
	// connections by its own hash, not sticky).
	Steering string `json:"steering"`
	// Degraded says why steering is off; "" when it is on.
	Degraded string `json:"degraded,omitempty"`
	// ProgramIDs are the kernel's ids of the programs, one per listen
	// address (bpftool prog show id N).
	ProgramIDs []uint32 `json:"program_ids,omitempty"`
	// Adopted says the programs were taken over from the supervisor
	// before (fd store), not loaded by this one.
	Adopted bool `json:"adopted"`
	// Buckets is the number of buckets client addresses map to.
	Buckets int `json:"buckets"`
	// InTable are the instances the bucket table spreads clients over.
	InTable []int `json:"in_table"`
	// Waiting are instances up whose sockets the supervisor does not
	// hold yet (started after it): they get connections once it has
	// restarted to take them.
	Waiting []int `json:"waiting,omitempty"`
}

// kernelStatus returns the steering state and each instance's buckets.
func (s *Supervisor) kernelStatus() (*KernelStatus, map[int]int) {
	k := s.kern
	if k == nil {
		return nil, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	ks := &KernelStatus{Steering: "sticky", Degraded: k.why, Adopted: k.adopted, Buckets: sticky.Buckets, ProgramIDs: k.programIDs()}
	if k.st == nil {
		ks.Steering = "degraded"
		return ks, nil
	}
	ks.InTable = k.table.IDs()
	for n := range k.missing {
		ks.Waiting = append(ks.Waiting, n)
	}
	slices.Sort(ks.Waiting)
	return ks, k.st.Shares()
}

// kernelLine is kernel mode's part of the STATUS= line.
func (s *Supervisor) kernelLine() string {
	k := s.kern
	if k == nil {
		return ""
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.why != "" {
		return " · degraded: kernel steering off (" + k.why + "): plain SO_REUSEPORT, not sticky"
	}
	line := fmt.Sprintf(" · kernel steering over %d instances", k.table.Len())
	if len(k.missing) > 0 {
		line += fmt.Sprintf(", %d waiting for the supervisor to take their sockets", len(k.missing))
	}
	return line
}

// errNoSteer is the loader's error in a build without kernel steering.
var errNoSteer = errors.New("kernel steering is not available on this platform")

// kernelRefresh backs up the socket units' change signals: a held
// socket whose unit is not active (or not loaded) any more is released.
func (s *Supervisor) kernelRefresh(ctx context.Context) error {
	k := s.kern
	if k == nil {
		return nil
	}
	sts, err := s.o.Manager.States(ctx, s.g.InstanceSocketPattern())
	if err != nil {
		return err
	}
	active := map[int]bool{}
	for _, st := range sts {
		if n, ok := s.socketOf(st.Name); ok && st.ActiveState == units.Active && !s.staleSocket(ctx, n) {
			active[n] = true
		}
	}
	k.mu.Lock()
	var gone []int
	for n := range k.socks {
		if !active[n] {
			gone = append(gone, n)
		}
	}
	k.mu.Unlock()
	for _, n := range gone {
		s.kernelRelease(n, "its socket unit is not active, or was started again")
	}
	return nil
}
