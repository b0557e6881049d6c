package integration

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/powerhouse/powerhouse/units"
)

// bpfProbeEnv makes the test binary, started as a kernel-mode group's
// supervisor (ExecStart= replaced, every other setting as generated), do
// what the supervisor's steering needs from its unit and nothing else:
// create a REUSEPORT_SOCKARRAY, put each inherited instance socket in it
// at index N-1 by its descriptor name instance-N, load an sk_reuseport
// program that sends every connection to index 0 (instance 1), and attach
// it to the group. It writes "ok" or the failing step to bpfProbeResult
// and then holds its descriptors until stopped.
const bpfProbeEnv = "POWERHOUSE_TEST_BPF_PROBE"

// bpfProbeResult is where the probe reports, inside the box: the group's
// RuntimeDirectory, the one place the supervisor may write.
func bpfProbeResult(group string) string {
	return units.Group{Name: group}.RuntimeDir() + "/bpf-probe"
}

func init() {
	if g := os.Getenv(bpfProbeEnv); g != "" {
		res := "ok"
		if err := bpfProbe(); err != nil {
			res = err.Error()
		}
		os.WriteFile(bpfProbeResult(g), []byte(res), 0o644)
		for {
			time.Sleep(time.Hour)
		}
	}
}

func bpf(cmd int, attr []byte) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr)))
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// insn encodes one eBPF instruction.
func insn(code uint8, dst, src uint8, off int16, imm int32) []byte {
	b := make([]byte, 8)
	b[0], b[1] = code, dst|src<<4
	binary.LittleEndian.PutUint16(b[2:], uint16(off))
	binary.LittleEndian.PutUint32(b[4:], uint32(imm))
	return b
}

func bpfProbe() error {
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	if err != nil || n < 1 || len(names) != n {
		return fmt.Errorf("LISTEN_FDS=%q LISTEN_FDNAMES=%q", os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES"))
	}
	le := binary.LittleEndian
	attr := make([]byte, 128)
	le.PutUint32(attr[0:], unix.BPF_MAP_TYPE_REUSEPORT_SOCKARRAY)
	le.PutUint32(attr[4:], 4)   // key: the slot
	le.PutUint32(attr[8:], 8)   // value: a socket descriptor (u64)
	le.PutUint32(attr[12:], 64) // slots
	mapFD, err := bpf(unix.BPF_MAP_CREATE, attr)
	if err != nil {
		return fmt.Errorf("create REUSEPORT_SOCKARRAY: %w", err)
	}
	for i, name := range names {
		inst, ok := units.InstanceOfFDName(name)
		if !ok {
			return fmt.Errorf("descriptor %d is named %q", 3+i, name)
		}
		key, val := make([]byte, 4), make([]byte, 8)
		le.PutUint32(key, uint32(inst-1))
		le.PutUint64(val, uint64(3+i))
		attr := make([]byte, 128)
		le.PutUint32(attr[0:], uint32(mapFD))
		le.PutUint64(attr[8:], uint64(uintptr(unsafe.Pointer(&key[0]))))
		le.PutUint64(attr[16:], uint64(uintptr(unsafe.Pointer(&val[0]))))
		if _, err := bpf(unix.BPF_MAP_UPDATE_ELEM, attr); err != nil {
			return fmt.Errorf("put %s (fd %d) in the socket array: %w", name, 3+i, err)
		}
	}
	const selectReuseport = 82 // BPF_FUNC_sk_select_reuseport
	var prog []byte
	for _, in := range [][]byte{
		insn(0x18, 2, 1, 0, int32(mapFD)), insn(0, 0, 0, 0, 0), // r2 = the map (ld_imm64, BPF_PSEUDO_MAP_FD)
		insn(0x62, 10, 0, -4, 0), // *(u32 *)(r10 - 4) = 0: the key
		insn(0xbf, 3, 10, 0, 0),  // r3 = r10
		insn(0x07, 3, 0, 0, -4),  // r3 -= 4
		insn(0xb7, 4, 0, 0, 0),   // r4 = 0: flags
		insn(0x85, 0, 0, 0, selectReuseport),
		insn(0xb7, 0, 0, 0, 1), // r0 = SK_PASS
		insn(0x95, 0, 0, 0, 0), // exit
	} {
		prog = append(prog, in...)
	}
	license := []byte("GPL\x00")
	attr = make([]byte, 128)
	le.PutUint32(attr[0:], unix.BPF_PROG_TYPE_SK_REUSEPORT)
	le.PutUint32(attr[4:], uint32(len(prog)/8))
	le.PutUint64(attr[8:], uint64(uintptr(unsafe.Pointer(&prog[0]))))
	le.PutUint64(attr[16:], uint64(uintptr(unsafe.Pointer(&license[0]))))
	progFD, err := bpf(unix.BPF_PROG_LOAD, attr)
	if err != nil {
		return fmt.Errorf("load the sk_reuseport program: %w", err)
	}
	if err := unix.SetsockoptInt(3, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, progFD); err != nil {
		return fmt.Errorf("attach the program (SO_ATTACH_REUSEPORT_EBPF): %w", err)
	}
	return nil
}
