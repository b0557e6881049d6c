package steer

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/sticky"
)

// Names of the maps as the program's instructions reference them, and of
// the kernel objects (at most 15 characters).
const (
	tableName = "ph_steer_table"
	socksName = "ph_steer_socks"
	progName  = "ph_steer"
)

// Names of the descriptors [Steering.Files] returns, for systemd's file
// descriptor store (FDNAME=): the bucket table, and per listen address l
// (0, 1, ...) its program and socket array.
const (
	FileTable       = "steer-table"
	FilePrefixProg  = "steer-prog-"
	FilePrefixSocks = "steer-socks-"
)

// MaxListeners bounds the listen addresses of one Steering, and
// MaxInstances the instance numbers (the socket array is indexed by them).
const (
	MaxListeners = 64
	MaxInstances = 4096
)

// Steering is kernel steering for one worker group: a bucket table shared by
// all the group's listen addresses and, per address, a program and a socket
// array. The zero value is not usable; get one from [Load] or [Adopt].
//
// Methods are not safe for concurrent use: one goroutine (the supervisor's
// state loop) owns a Steering.
type Steering struct {
	table     *ebpf.Map
	listeners []listener
	// cur is what the table holds, so SetTable writes only what changed
	// and Shares needs no system call.
	cur [sticky.Buckets]uint32
}

type listener struct {
	prog  *ebpf.Program
	socks *ebpf.Map
}

// Load creates the bucket table and, for each of listeners listen addresses,
// a program and a socket array with room for instance numbers 0 to
// maxInstances-1 (instances are numbered from 1: pass the highest number
// plus one, with room for scaling up). Every bucket starts empty, so until [Steering.SetTable]
// the kernel's own hash places connections. Nothing is attached yet.
//
// Errors name the step that failed and, for the usual causes, why: a
// permission error (errors.Is(err, os.ErrPermission)) means the process
// lacks CAP_BPF and CAP_NET_ADMIN (or lockdown forbids BPF); an
// [ebpf.ErrNotSupported] or EINVAL one means the kernel has no sk_reuseport
// programs (Linux 4.19, or 5.14 for migration). A supervisor logs the error
// as one line and serves with plain SO_REUSEPORT instead.
func Load(listeners, maxInstances int) (*Steering, error) {
	if listeners < 1 || listeners > MaxListeners {
		return nil, fmt.Errorf("steer: %d listen addresses, want 1 to %d", listeners, MaxListeners)
	}
	if maxInstances < 1 || maxInstances > MaxInstances {
		return nil, fmt.Errorf("steer: room for %d instances, want 1 to %d", maxInstances, MaxInstances)
	}
	table, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: tableName, Type: ebpf.Array,
		KeySize: 4, ValueSize: 4, MaxEntries: sticky.Buckets,
	})
	if err != nil {
		return nil, explain("create the bucket table", err)
	}
	s := &Steering{table: table}
	for i := range s.cur {
		s.cur[i] = noInstance
	}
	if err := s.writeAll(); err != nil {
		s.Close()
		return nil, err
	}
	for range listeners {
		socks, err := ebpf.NewMap(&ebpf.MapSpec{
			Name: socksName, Type: ebpf.ReusePortSockArray,
			KeySize: 4, ValueSize: 8, MaxEntries: uint32(maxInstances),
		})
		if err != nil {
			s.Close()
			return nil, explain("create the socket array", err)
		}
		prog, err := loadProgram(table, socks)
		if err != nil {
			socks.Close()
			s.Close()
			return nil, err
		}
		s.listeners = append(s.listeners, listener{prog: prog, socks: socks})
	}
	return s, nil
}

// loadProgram loads the program for one socket array, as
// select-or-migrate where the kernel has it (5.14) and as plain select,
// without reading migrating sockets, otherwise.
func loadProgram(table, socks *ebpf.Map) (*ebpf.Program, error) {
	prog, err := newProgram(table, socks, true)
	if err != nil && (errors.Is(err, unix.EINVAL) || errors.Is(err, ebpf.ErrNotSupported)) {
		if prog2, err2 := newProgram(table, socks, false); err2 == nil {
			return prog2, nil
		}
	}
	if err != nil {
		return nil, explain("load the sk_reuseport program", err)
	}
	return prog, nil
}

func newProgram(table, socks *ebpf.Map, migrating bool) (*ebpf.Program, error) {
	insns := steerCode(migrating)
	for i := range insns {
		switch insns[i].Reference() {
		case tableName:
			if err := insns[i].AssociateMap(table); err != nil {
				return nil, fmt.Errorf("steer: %w", err)
			}
		case socksName:
			if err := insns[i].AssociateMap(socks); err != nil {
				return nil, fmt.Errorf("steer: %w", err)
			}
		}
	}
	spec := &ebpf.ProgramSpec{
		Name: progName, Type: ebpf.SkReuseport,
		AttachType:   ebpf.AttachSkReuseportSelect,
		Instructions: insns, License: "Dual MIT/GPL",
	}
	if migrating {
		spec.AttachType = ebpf.AttachSkReuseportSelectOrMigrate
	}
	return ebpf.NewProgram(spec)
}

// explain wraps err with what failed and the usual reason.
func explain(op string, err error) error {
	switch {
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("steer: %s: %w (needs CAP_BPF and CAP_NET_ADMIN, and no kernel lockdown against BPF)", op, err)
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.EINVAL):
		return fmt.Errorf("steer: %s: %w (the kernel lacks sk_reuseport BPF support; Linux 5.14 or later is needed for migration)", op, err)
	default:
		return fmt.Errorf("steer: %s: %w", op, err)
	}
}

// Listeners returns the number of listen addresses s steers.
func (s *Steering) Listeners() int { return len(s.listeners) }

// MaxInstances returns the size of the socket arrays: instance numbers must
// be below it.
func (s *Steering) MaxInstances() int { return int(s.listeners[0].socks.MaxEntries()) }

func (s *Steering) listener(l int) (listener, error) {
	if l < 0 || l >= len(s.listeners) {
		return listener{}, fmt.Errorf("steer: listen address %d, have %d", l, len(s.listeners))
	}
	return s.listeners[l], nil
}

// Attach attaches the program of listen address l to the SO_REUSEPORT group
// of fd, a listening socket bound to that address (any one socket of the
// group will do: the program belongs to the group). From then on the kernel
// places each new connection of the group by its source address, and the
// program stays attached for as long as a socket of the group exists, also
// after s is closed or its process exits.
func (s *Steering) Attach(l, fd int) error {
	ln, err := s.listener(l)
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, ln.prog.FD()); err != nil {
		op := fmt.Sprintf("attach to the reuseport group of listen address %d (fd %d)", l, fd)
		if errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("steer: %s: %w (not a bound SO_REUSEPORT socket)", op, err)
		}
		return explain(op, err)
	}
	return nil
}

// Detach removes any program from the SO_REUSEPORT group of fd, which goes
// back to the kernel's hash (plain SO_REUSEPORT).
func Detach(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF, 0); err != nil {
		return fmt.Errorf("steer: detach from the reuseport group of fd %d: %w", fd, err)
	}
	return nil
}

// SetSocket makes fd, instance's listening socket on listen address l, the
// socket connections of instance's buckets go to. It is a no-op when the
// slot already holds that socket (a restarted supervisor re-adding the
// sockets it got back), and replaces a socket systemd closed and re-created.
// The kernel empties the slot by itself when the socket is closed for good
// (every copy of its descriptor); the buckets then fall back to the kernel's
// hash until the table moves them (SetTable without the instance).
func (s *Steering) SetSocket(l, instance, fd int) error {
	ln, err := s.listener(l)
	if err != nil {
		return err
	}
	if instance < 0 || instance >= s.MaxInstances() {
		return fmt.Errorf("steer: instance %d out of the socket array's range 0..%d", instance, s.MaxInstances()-1)
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return fmt.Errorf("steer: socket of instance %d (fd %d): %w", instance, fd, err)
	}
	var have uint64
	if err := ln.socks.Lookup(uint32(instance), &have); err == nil && have == cookie {
		return nil
	}
	if err := ln.socks.Update(uint32(instance), uint64(fd), ebpf.UpdateAny); err != nil {
		why := ""
		switch {
		case errors.Is(err, unix.EBUSY):
			why = " (the socket is already in another slot)"
		case errors.Is(err, unix.EINVAL):
			why = " (not a bound SO_REUSEPORT socket)"
		}
		return fmt.Errorf("steer: put the socket of instance %d (fd %d) in listen address %d's array: %w%s", instance, fd, l, err, why)
	}
	return nil
}

// ClearSocket empties instance's slot for listen address l: its buckets fall
// back to the kernel's hash until the table moves them. Clearing an empty
// slot is not an error.
func (s *Steering) ClearSocket(l, instance int) error {
	ln, err := s.listener(l)
	if err != nil {
		return err
	}
	if instance < 0 || instance >= s.MaxInstances() {
		return fmt.Errorf("steer: instance %d out of the socket array's range 0..%d", instance, s.MaxInstances()-1)
	}
	if err := ln.socks.Delete(uint32(instance)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("steer: clear the slot of instance %d on listen address %d: %w", instance, l, err)
	}
	return nil
}

// SetTable gives every bucket to its rendezvous winner among up, the
// instances that are up (up.PickBucket), so the kernel places each client
// where [sticky.Set.Pick] would. It writes only the buckets whose instance
// changed and returns how many it wrote. An empty set leaves every bucket to
// the kernel's hash. Instances of up must be below MaxInstances.
//
// Each bucket changes atomically; while SetTable runs, some buckets may
// still point at their old instance.
func (s *Steering) SetTable(up *sticky.Set) (changed int, err error) {
	for _, id := range up.IDs() {
		if id < 0 || id >= s.MaxInstances() {
			return 0, fmt.Errorf("steer: instance %d out of the socket array's range 0..%d", id, s.MaxInstances()-1)
		}
	}
	for b := range sticky.Buckets {
		want := noInstance
		if id, ok := up.PickBucket(b); ok {
			want = uint32(id)
		}
		if s.cur[b] == want {
			continue
		}
		if err := s.table.Update(uint32(b), want, ebpf.UpdateExist); err != nil {
			return changed, fmt.Errorf("steer: set bucket %d to instance %d: %w", b, want, err)
		}
		s.cur[b] = want
		changed++
	}
	return changed, nil
}

func (s *Steering) writeAll() error {
	for b, v := range s.cur {
		if err := s.table.Update(uint32(b), v, ebpf.UpdateExist); err != nil {
			return fmt.Errorf("steer: set bucket %d: %w", b, err)
		}
	}
	return nil
}

// Shares returns how many of the sticky.Buckets buckets each instance holds,
// as the table says (for powerhouse status). Buckets left to the kernel's
// hash are not counted.
func (s *Steering) Shares() map[int]int {
	shares := map[int]int{}
	for _, v := range s.cur {
		if v != noInstance {
			shares[int(v)]++
		}
	}
	return shares
}

// Files returns duplicates of the descriptors of the table, programs and
// socket arrays, each *os.File named for systemd's file descriptor store
// (sd_notify "FDSTORE=1" with "FDNAME=" the file's Name()). A supervisor
// restarted by systemd gets them back (LISTEN_FDS, LISTEN_FDNAMES) and
// passes them to [Adopt]. The caller owns the files and closes them once
// stored.
func (s *Steering) Files() ([]*os.File, error) {
	var files []*os.File
	add := func(fd int, name string) error {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("steer: duplicate %s: %w", name, err)
		}
		files = append(files, os.NewFile(uintptr(dup), name))
		return nil
	}
	fail := func(err error) ([]*os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, err
	}
	if err := add(s.table.FD(), FileTable); err != nil {
		return fail(err)
	}
	for l, ln := range s.listeners {
		if err := add(ln.prog.FD(), FilePrefixProg+strconv.Itoa(l)); err != nil {
			return fail(err)
		}
		if err := add(ln.socks.FD(), FilePrefixSocks+strconv.Itoa(l)); err != nil {
			return fail(err)
		}
	}
	return files, nil
}

// Adopt rebuilds a Steering from the files [Steering.Files] returned, as a
// restarted supervisor finds them in its file descriptor store. It uses the
// files named FileTable, FilePrefixProg+"N" and FilePrefixSocks+"N" and
// ignores the others, so the whole list of passed descriptors can be given.
// It checks each object's type and shape, and that each program uses its
// socket array and the table, and reads the table back (Shares reports it
// at once). The programs stay attached: Adopt changes nothing in the
// kernel. The descriptors are duplicated: the caller still owns files.
//
// When the group changed while the supervisor was down (other listen
// addresses than [Steering.Listeners], or instance numbers past
// [Steering.MaxInstances]), close the adopted Steering and Load a new one:
// Attach replaces a group's program at once, with no gap in placement.
// Remove the old descriptors from the store (FDSTOREREMOVE=1) before
// storing the new ones.
func Adopt(files []*os.File) (*Steering, error) {
	var tableFile *os.File
	progs, socks := map[int]*os.File{}, map[int]*os.File{}
	for _, f := range files {
		name := f.Name()
		switch {
		case name == FileTable:
			tableFile = f
		case strings.HasPrefix(name, FilePrefixProg):
			if l, err := strconv.Atoi(name[len(FilePrefixProg):]); err == nil && l >= 0 && l < MaxListeners {
				progs[l] = f
			}
		case strings.HasPrefix(name, FilePrefixSocks):
			if l, err := strconv.Atoi(name[len(FilePrefixSocks):]); err == nil && l >= 0 && l < MaxListeners {
				socks[l] = f
			}
		}
	}
	if tableFile == nil || len(progs) == 0 {
		return nil, fmt.Errorf("steer: adopt: no %s and %s0 among %d files", FileTable, FilePrefixProg, len(files))
	}
	s := &Steering{}
	fail := func(err error) (*Steering, error) {
		s.Close()
		return nil, fmt.Errorf("steer: adopt: %w", err)
	}
	var err error
	if s.table, err = adoptMap(tableFile, ebpf.Array, 4, 4); err != nil {
		return fail(err)
	}
	if s.table.MaxEntries() != sticky.Buckets {
		return fail(fmt.Errorf("%s has %d entries, want %d", FileTable, s.table.MaxEntries(), sticky.Buckets))
	}
	tableID, err := mapID(s.table)
	if err != nil {
		return fail(err)
	}
	for l := range len(progs) {
		pf, sf := progs[l], socks[l]
		if pf == nil || sf == nil {
			return fail(fmt.Errorf("listen address %d: program or socket array missing (have %d programs, %d arrays)", l, len(progs), len(socks)))
		}
		var ln listener
		if ln.socks, err = adoptMap(sf, ebpf.ReusePortSockArray, 4, 8); err != nil {
			return fail(err)
		}
		s.listeners = append(s.listeners, ln)
		if ln.socks.MaxEntries() != s.listeners[0].socks.MaxEntries() {
			return fail(fmt.Errorf("%s has %d entries, %s%d has %d", sf.Name(), ln.socks.MaxEntries(), FilePrefixSocks, 0, s.listeners[0].socks.MaxEntries()))
		}
		if err := checkKind(pf, "bpf-prog"); err != nil {
			return fail(err)
		}
		fd, err := unix.FcntlInt(pf.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fail(fmt.Errorf("duplicate %s: %w", pf.Name(), err))
		}
		prog, err := ebpf.NewProgramFromFD(fd)
		if err != nil {
			return fail(fmt.Errorf("%s: %w", pf.Name(), err))
		}
		s.listeners[l].prog = prog
		if prog.Type() != ebpf.SkReuseport {
			return fail(fmt.Errorf("%s is a %v program, want %v", pf.Name(), prog.Type(), ebpf.SkReuseport))
		}
		info, err := prog.Info()
		if err != nil {
			return fail(fmt.Errorf("%s: %w", pf.Name(), err))
		}
		socksID, err := mapID(ln.socks)
		if err != nil {
			return fail(err)
		}
		if ids, ok := info.MapIDs(); ok && (!slices.Contains(ids, tableID) || !slices.Contains(ids, socksID)) {
			return fail(fmt.Errorf("%s does not use %s and %s (its maps: %v)", pf.Name(), FileTable, sf.Name(), ids))
		}
	}
	for b := range s.cur {
		if err := s.table.Lookup(uint32(b), &s.cur[b]); err != nil {
			return fail(fmt.Errorf("read bucket %d: %w", b, err))
		}
	}
	return s, nil
}

// checkKind checks that f is a BPF object of the given kind ("bpf-prog",
// "bpf-map"), as its /proc/self/fd link names it; the object-info calls
// read a map's descriptor as a program's without complaint.
func checkKind(f *os.File, kind string) error {
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return fmt.Errorf("%s: %w", f.Name(), err)
	}
	if link != "anon_inode:"+kind {
		return fmt.Errorf("%s is %s, want a BPF %s", f.Name(), link, strings.TrimPrefix(kind, "bpf-"))
	}
	return nil
}

func adoptMap(f *os.File, typ ebpf.MapType, keySize, valueSize uint32) (*ebpf.Map, error) {
	if err := checkKind(f, "bpf-map"); err != nil {
		return nil, err
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate %s: %w", f.Name(), err)
	}
	m, err := ebpf.NewMapFromFD(fd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	if m.Type() != typ || m.KeySize() != keySize || m.ValueSize() != valueSize {
		m.Close()
		return nil, fmt.Errorf("%s is a %v map with %d-byte keys and %d-byte values, want %v, %d, %d",
			f.Name(), m.Type(), m.KeySize(), m.ValueSize(), typ, keySize, valueSize)
	}
	return m, nil
}

func mapID(m *ebpf.Map) (ebpf.MapID, error) {
	info, err := m.Info()
	if err != nil {
		return 0, err
	}
	id, ok := info.ID()
	if !ok {
		return 0, errors.New("map has no id")
	}
	return id, nil
}

// Close closes s's descriptors. It detaches nothing: attached programs, and
// the maps they use, stay in the kernel while a socket of their group lives
// (or a copy of their descriptors, as in the file descriptor store), and
// keep steering by the last table.
func (s *Steering) Close() error {
	var errs []error
	for _, ln := range s.listeners {
		if ln.prog != nil {
			errs = append(errs, ln.prog.Close())
		}
		if ln.socks != nil {
			errs = append(errs, ln.socks.Close())
		}
	}
	if s.table != nil {
		errs = append(errs, s.table.Close())
	}
	s.listeners, s.table = nil, nil
	return errors.Join(errs...)
}
