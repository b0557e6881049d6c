// Command reuseport runs N copies of a socket-activated server, each with
// its own listening socket on the same address, bound with SO_REUSEPORT, so
// the kernel spreads new connections over them by 4-tuple hash. It is the
// benchmark's "direct" row (bench/rows/direct.sh): examples/hello gets its
// socket as systemd would pass it (LISTEN_FDS=1), which it supports, so the
// reference runs the very worker the PowerHouse row runs, with nothing in
// front of it.
//
//	reuseport -listen 127.0.0.1:8080 -n 2 -- bin/hello
//
// Each copy gets POWERHOUSE_GROUP=direct and POWERHOUSE_INSTANCE=1..N (so
// hello answers instance=direct@i). SIGTERM or SIGINT is passed on to the
// copies; when one exits, the others are stopped and reuseport exits.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

func main() {
	addr := flag.String("listen", "", "address `host:port` every copy listens on")
	n := flag.Int("n", 2, "number of copies")
	flag.Parse()
	if *addr == "" || flag.NArg() == 0 || *n < 1 {
		fmt.Fprintln(os.Stderr, "usage: reuseport -listen HOST:PORT [-n N] -- COMMAND [ARG...]")
		os.Exit(2)
	}
	if err := run(*addr, *n, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "reuseport:", err)
		os.Exit(1)
	}
}

func listen(addr string) (*os.File, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return f, nil
}

func run(addr string, n int, argv []string) error {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	exited := make(chan error, n)
	var procs []*exec.Cmd
	waited := 0 // exits already received
	defer func() {
		for _, p := range procs {
			p.Process.Signal(syscall.SIGTERM) // an error for one that exited: fine
		}
		for ; waited < len(procs); waited++ {
			<-exited
		}
	}()
	for i := 1; i <= n; i++ {
		f, err := listen(addr)
		if err != nil {
			return err
		}
		// LISTEN_PID must be the child's own PID, known only after fork: a
		// shell sets it and execs the command, keeping its PID (as
		// `powerhouse run` does).
		cmd := exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`}, argv...)...)
		cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES=http",
			"POWERHOUSE_GROUP=direct", "POWERHOUSE_INSTANCE="+strconv.Itoa(i))
		cmd.ExtraFiles = []*os.File{f}
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		err = cmd.Start()
		f.Close()
		if err != nil {
			return fmt.Errorf("start %s: %w", argv[0], err)
		}
		procs = append(procs, cmd)
		go func() { exited <- cmd.Wait() }()
	}
	select {
	case <-sigs:
		return nil
	case err := <-exited:
		waited++
		return fmt.Errorf("a copy exited: %v", err)
	}
}
