package supervisor

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/steer"
	"github.com/powerhouse/powerhouse/sticky"
)

// loadSteer is kernel mode's steering: package steer's, adopted from the
// fd store's descriptors or loaded anew with a slot for every instance
// number (1 to config.MaxAmount).
func loadSteer(adopt []*os.File, listeners int) (steering, error) {
	if adopt != nil {
		st, err := steer.Adopt(adopt)
		if err != nil {
			return nil, err
		}
		if st.Listeners() != listeners || st.MaxInstances() <= config.MaxAmount {
			st.Close()
			return nil, fmt.Errorf("the stored steering has %d listen addresses and %d slots; the group needs %d and %d", st.Listeners(), st.MaxInstances(), listeners, config.MaxAmount+1)
		}
		return steerAdapter{st}, nil
	}
	st, err := steer.Load(listeners, config.MaxAmount+1)
	if err != nil {
		return nil, err
	}
	return steerAdapter{st}, nil
}

// steerAdapter gives steer.Steering the *os.File shapes of the
// supervisor's descriptors.
type steerAdapter struct{ s *steer.Steering }

// withFD runs fn on f's descriptor without f.Fd(), which would put the
// socket in blocking mode: the flag belongs to the open file description
// that the instance serving the socket shares.
func withFD(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func (a steerAdapter) Attach(l int, f *os.File) error {
	return withFD(f, func(fd int) error { return a.s.Attach(l, fd) })
}

func (a steerAdapter) SetSocket(l, n int, f *os.File) error {
	return withFD(f, func(fd int) error { return a.s.SetSocket(l, n, fd) })
}

func (a steerAdapter) ClearSocket(l, n int) error { return a.s.ClearSocket(l, n) }

func (a steerAdapter) SetTable(up *sticky.Set) error {
	_, err := a.s.SetTable(up)
	return err
}

func (a steerAdapter) Shares() map[int]int        { return a.s.Shares() }
func (a steerAdapter) Files() ([]*os.File, error) { return a.s.Files() }
func (a steerAdapter) Close() error               { return a.s.Close() }

// ProgramIDs reads the programs' ids from their descriptors (0 for one
// that cannot be read).
func (a steerAdapter) ProgramIDs() []uint32 {
	files, err := a.s.Files()
	if err != nil {
		return nil
	}
	ids := make([]uint32, a.s.Listeners())
	for _, f := range files {
		rest, ok := strings.CutPrefix(f.Name(), steer.FilePrefixProg)
		l, err := strconv.Atoi(rest)
		if !ok || err != nil || l < 0 || l >= len(ids) {
			f.Close()
			continue
		}
		// NewProgramFromFD owns the descriptor it is given.
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		f.Close()
		if err != nil {
			continue
		}
		p, err := ebpf.NewProgramFromFD(fd)
		if err != nil {
			unix.Close(fd)
			continue
		}
		if info, err := p.Info(); err == nil {
			if id, ok := info.ID(); ok {
				ids[l] = uint32(id)
			}
		}
		p.Close()
	}
	return ids
}
