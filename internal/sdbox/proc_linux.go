package sdbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// procStat is what the harness needs from /proc/PID/stat.
type procStat struct {
	State     byte // R, S, D, T, Z, ...
	PPID      int
	StartTime uint64 // field 22, clock ticks since boot: tells a recycled PID apart
}

// parseStat parses the contents of /proc/PID/stat. The command name (field
// 2) is in parentheses and may itself hold spaces and parentheses, so the
// fields are counted from the last ')'.
func parseStat(data []byte) (procStat, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return procStat{}, errors.New("parse stat: no ')'")
	}
	f := bytes.Fields(data[i+1:])
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 22-3+1 {
		return procStat{}, fmt.Errorf("parse stat: %d fields after the name, want at least 20", len(f))
	}
	ppid, err := strconv.Atoi(string(f[4-3]))
	if err != nil {
		return procStat{}, fmt.Errorf("parse stat: ppid: %w", err)
	}
	st, err := strconv.ParseUint(string(f[22-3]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse stat: starttime: %w", err)
	}
	return procStat{State: f[0][0], PPID: ppid, StartTime: st}, nil
}

func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(data)
}

// signalExact sends sig to pid only if pid is still the process that
// started at startTime. It opens a pidfd first and checks the start time
// after: the pidfd pins the process, so a match after opening it proves
// the signal goes to the right one even if the PID was recycled meanwhile.
// A process that is already gone is not an error.
func signalExact(pid int, startTime uint64, sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("signal %d: pidfd_open: %w", pid, err)
	}
	defer unix.Close(fd)
	st, err := readStat(pid)
	if err != nil || st.StartTime != startTime {
		return nil // gone, or a different process now holds the PID
	}
	err = unix.PidfdSendSignal(fd, sig, nil, 0)
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %d: %w", pid, err)
	}
	return nil
}

// nsID identifies a namespace: the device and inode of its /proc/PID/ns/ link.
type nsID struct{ Dev, Ino uint64 }

func pidNamespace(pid int) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/pid", &st); err != nil {
		return nsID{}, fmt.Errorf("pid namespace of %d: %w", pid, err)
	}
	return nsID{Dev: st.Dev, Ino: st.Ino}, nil
}

// allPIDs lists the processes visible in /proc.
func allPIDs() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	pids := make([]int, 0, len(ents))
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// processesIn lists the host PIDs of the live (not zombie) processes whose
// PID namespace is ns.
func processesIn(ns nsID) ([]int, error) {
	pids, err := allPIDs()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var in []int
	for _, pid := range pids {
		if got, err := pidNamespace(pid); err == nil && got == ns {
			if st, err := readStat(pid); err == nil && st.State != 'Z' && st.State != 'X' {
				in = append(in, pid)
			}
		}
	}
	return in, nil
}

// childrenOf lists the children of ppid with their start times.
func childrenOf(ppid int) (map[int]uint64, error) {
	pids, err := allPIDs()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	kids := map[int]uint64{}
	for _, pid := range pids {
		if st, err := readStat(pid); err == nil && st.PPID == ppid {
			kids[pid] = st.StartTime
		}
	}
	return kids, nil
}
