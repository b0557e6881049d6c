// Package activation is the worker side of PowerHouse: it gives a worker
// process its net.Listener however it was started, tells systemd when it
// is ready and stopping, and reads the group's configuration.
//
// A worker's main is typically:
//
//	l, err := activation.Listen()
//	if err != nil {
//		log.Fatal(err)
//	}
//	srv := &http.Server{Handler: handler}
//	if err := activation.Serve(context.Background(), srv, l); err != nil {
//		log.Fatal(err)
//	}
//
// and runs unchanged under PowerHouse, under systemd-socket-activate, or on
// a laptop with POWERHOUSE_LISTEN=127.0.0.1:8080.
//
// # How a worker is started
//
// Listen looks at the sockets systemd passed (LISTEN_FDS, LISTEN_PID,
// LISTEN_FDNAMES, read with go-systemd's activation package):
//
//   - Sticky groups. The instance inherits one AF_UNIX datagram socket,
//     its hand-off socket. The group's dispatcher accepts every connection
//     on the public sockets and sends it there as a file descriptor, with a
//     header naming the public listener and, when the connection came
//     through PROXY protocol, the original client (docs/handoff.md; package
//     handoff). Listen returns a *HandoffListener whose Accept returns each
//     connection as a real *net.TCPConn (or *net.UnixConn), so http.Server,
//     crypto/tls and type assertions work unchanged. When the header gives
//     an original client address, the connection is a *Conn that reports
//     it as RemoteAddr and wraps the socket (Conn.NetConn).
//   - Shared (non-sticky cluster) groups. The instance inherits the group's
//     listening sockets and the kernel spreads connections over all
//     instances. One socket is returned as it is (a *net.TCPListener or
//     *net.UnixListener); several are merged into one net.Listener.
//   - Outside systemd. No socket is inherited: Listen listens on the
//     address the caller gives (ListenConfig.Addr), else on
//     $POWERHOUSE_LISTEN ("127.0.0.1:8080", ":8080", "/path/to.sock"), and
//     fails with a clear error when there is neither.
//
// # Units
//
// For a sticky group "web", instance 2 runs as powerhouse-web@2.service with
// its hand-off socket from powerhouse-web@2.socket. The parts of the
// templates the library relies on (the generator writes the full units):
//
//	# powerhouse-web@.socket
//	[Socket]
//	ListenDatagram=/run/powerhouse/web/%i.sock
//	SocketMode=0600
//	FileDescriptorName=handoff
//	PassCredentials=yes
//
//	# powerhouse-web@.service
//	[Unit]
//	Requires=powerhouse-web@%i.socket
//	After=powerhouse-web@%i.socket
//
//	[Service]
//	Type=notify
//	NotifyAccess=main
//	Environment=POWERHOUSE_GROUP=web POWERHOUSE_INSTANCE=%i POWERHOUSE_CONFIG=/run/powerhouse/web/config.json
//	Environment=POWERHOUSE_SUPERVISOR_UID=0
//	ExecStart=/usr/local/bin/myapp serve
//	Sockets=powerhouse-web@%i.socket
//	Restart=always
//	KillMode=mixed
//	TimeoutStopSec=20s
//	Environment=POWERHOUSE_STOP_TIMEOUT=20s
//	# optional: WatchdogSec=10s (Serve then pings every 5s)
//
// The instance inherits exactly the hand-off socket (LISTEN_FDS=1,
// LISTEN_FDNAMES=handoff). Because systemd holds it, connections sent to an
// instance while it restarts wait in the socket and the next process
// serves them: HandoffListener.Close never drains it. KillMode=mixed sends
// SIGTERM to the worker alone, which Serve turns into a graceful shutdown.
//
// For a shared (non-sticky cluster) group "api", every instance gets the
// group's public sockets (powerhouse@api.socket, one ListenStream= per
// listen address):
//
//	# powerhouse-api@.service
//	[Service]
//	Type=notify
//	NotifyAccess=main
//	Environment=POWERHOUSE_GROUP=api POWERHOUSE_INSTANCE=%i POWERHOUSE_CONFIG=/run/powerhouse/api/config.json
//	ExecStart=/usr/local/bin/myapi
//	Sockets=powerhouse@api.socket
//	Restart=always
//
// systemd does not tell a service its TimeoutStopSec; POWERHOUSE_STOP_TIMEOUT
// (optional, default 30s) does, so that Serve finishes in time.
//
// # Who may hand off
//
// Anyone who can write to a hand-off socket could hand a worker a
// connection. A HandoffListener therefore sets SO_PASSCRED on the socket
// itself (PassCredentials=yes is defence in depth, not a requirement),
// reads the sender's credentials with every datagram (SCM_CREDENTIALS) and
// serves only those sent by the supervisor's uid:
//
//   - $POWERHOUSE_SUPERVISOR_UID when set, as the generated unit does (0 in
//     a system house, the service manager's uid in a user house);
//   - when unset (outside systemd, powerhouse run, tests), this process's
//     effective uid and 0.
//
// Any other datagram is rejected: its descriptors are closed (the client
// sees its connection closed), it is counted (HandoffListener.Rejected,
// Rejected) and logged at most every 10 seconds. A value that is not a
// user id makes NewHandoffListener, and so Listen, fail.
//
// # Running out of descriptors
//
// Receiving a hand-off installs its descriptor in the worker. At the
// RLIMIT_NOFILE limit the kernel would drop the connection instead, so a
// HandoffListener stops receiving while fewer than a margin of descriptors
// are free (1/64 of the soft limit, at least 8, at most 256): connections
// wait in the socket systemd holds (and the dispatcher falls back to
// another instance when the queue is full) until the worker closes some.
// It logs once per burst of pauses; HandoffListener.Paused counts them.
//
// Listen does not care about descriptor names: a unix datagram socket is a
// hand-off socket and a listening stream socket is shared, whatever
// LISTEN_FDNAMES says.
//
// # Lifecycle
//
// Serve runs an http.Server: READY=1 once it accepts, WATCHDOG=1 when the
// unit has WatchdogSec=, and on SIGTERM STOPPING=1 and a drain. An accept
// error (EMFILE, ENOBUFS, EPROTO, EPERM, ...) never ends it: it backs off
// (5 ms doubling to 1 s) and accepts again; only a closed listener stops
// it. Workers that are not HTTP servers can use go-systemd's daemon
// package the same way.
//
// # Draining
//
// A reload hands each instance slot over: the supervisor starts the slot's
// other unit (powerhouse-web.b@2.service beside powerhouse-web@2.service,
// both on the slot's socket), waits for its READY=1, and only then stops
// the old one. So when SIGTERM comes, the new process already takes the
// slot's new connections, and the old one has its whole stop timeout to
// drain. Serve (or Tracker.Shutdown, for a worker that runs its own
// http.Server loop, prepared with Track):
//
//   - stops taking new connections: a listening socket is close()d, never
//     shutdown(), since it is shared with systemd and the slot's new
//     process (in kernel mode and in shared groups); a hand-off listener
//     keeps reading until the dispatcher stopped sending (20 ms quiet,
//     250 ms at most), then stops, leaving what is queued to the socket;
//   - closes the Draining channel of every request context (Draining) and
//     runs ServeConfig.OnDrain: long-polls answer early, WebSockets tell
//     their clients to reconnect;
//   - finishes requests in flight and closes idle keep-alives;
//   - lets long-lived connections, hijacked ones (WebSockets) and
//     long-polls, end on their own, until the drain deadline: 90% of the
//     stop timeout ($POWERHOUSE_STOP_TIMEOUT, default 30s), the rest being
//     kept to exit before systemd's SIGKILL. A second SIGTERM ends it early;
//   - closes what is left and counts it as cut, then reports the counts
//     (DrainResult: drained, cut) to the supervisor, which puts them in the
//     worker.reload event.
//
// A worker that does not use this library gets the same contract from
// systemd: the new process is ready before the old one receives SIGTERM;
// from then on, the old one should stop accepting (close its listening
// socket, do not shut it down: the new process shares it), finish what it
// has, and exit within TimeoutStopSec= (the group's timeout_stop, also in
// $POWERHOUSE_STOP_TIMEOUT), after which systemd kills it. With KillMode=
// mixed only the main process gets SIGTERM.
//
// # Reports to the supervisor
//
// When $POWERHOUSE_REPORT_SOCKET names the group's report socket (the
// generated unit sets it), Serve talks back to the supervisor with
// datagrams of package report (docs/report.md): a Hello before READY=1 and
// every 30 seconds after (the library's release, the hand-off header
// versions it reads, and whether SIGHUP reloads the configuration: it does
// when the package's SIGHUP handler runs, or ServeConfig.ReloadOnSIGHUP
// says the caller handles it), Draining on SIGTERM, the number of
// connections closed, at most every 100 ms and only when it changed, and a
// DrainResult when the drain is over. Sends never block and never fail
// the worker; the first failure is logged. Outside PowerHouse nothing is
// sent.
//
// A hand-off whose header version this library does not know (a
// supervisor of another release) is never served: its connection is
// closed, it is counted as malformed and logged, at most every 10 seconds,
// naming both versions.
//
// # Identity and configuration
//
// IsWorker, Group and Instance read POWERHOUSE_GROUP and
// POWERHOUSE_INSTANCE. Config decodes the group's JSON configuration
// ($POWERHOUSE_CONFIG), and OnReconfigure runs functions after SIGHUP has
// re-read it. Send writes a worker.message event to the journal for the
// supervisor.
//
// # Package state
//
// Listen, Serve, Config and OnReconfigure are conveniences for a process
// that is one worker. Config, OnReconfigure and Serve share one package
// default: the ConfigFile for $POWERHOUSE_CONFIG and the SIGHUP handler that
// reloads it. Callers who want no package state use the types directly:
// ListenConfig, HandoffListener, ServeConfig (which leaves SIGHUP alone)
// and ConfigFile (call Reload from your own signal handling).
//
// # Platforms
//
// The package builds on Unix systems; receiving hand-offs needs Linux.
// It imports neither D-Bus nor TOML, so workers do not pay for the
// supervisor's dependencies (a test checks it).
package activation
