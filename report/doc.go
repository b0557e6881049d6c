// Package report is the channel on which workers talk back to their
// group's supervisor: the wire format of the datagrams a worker sends, the
// worker's sending end (Client) and the supervisor's receiving end
// (Receiver).
//
// # The channel
//
// Each group has one report socket, an AF_UNIX SOCK_DGRAM socket at
// <runtime dir>/<group>/report.sock that the supervisor binds with Listen
// (mode 0660, group of the workers). A worker finds its path in
// $POWERHOUSE_REPORT_SOCKET (SocketEnv), which the generated worker unit
// sets; package activation sends the reports of an http.Server worker by
// itself. The receiving socket has SO_PASSCRED set, so the kernel attaches
// the sender's process, user and group id to every datagram
// (SCM_CREDENTIALS); the supervisor attributes a datagram to its instance
// by that PID (PID -> unit, over D-Bus), not by anything the datagram
// says. A worker never waits for the supervisor: sends are non-blocking,
// best effort, and a lost report costs nothing but the information.
//
// # The messages
//
// Every datagram is one Message: magic "PHRP", a version byte, a kind byte,
// then the kind's body (docs/report.md gives the layout and hex examples):
//
//   - Hello, when the worker starts serving and then every HelloInterval
//     (a supervisor that restarted learns about running workers): the
//     library's release
//     (Release), the hand-off header versions it understands (package
//     handoff) and what it supports (Features: FeatureReloadOnSIGHUP says
//     the worker re-reads its configuration on SIGHUP, so the supervisor
//     may signal it rather than restart it). Hello.Compatible tells the
//     supervisor whether it can hand connections to that worker, with an
//     error naming both releases when it cannot.
//   - Draining, when the worker began to drain (SIGTERM).
//   - Closed, the number of connections the worker closed since its
//     previous Closed report (sent at most every 100 ms, only when it
//     changed).
//   - DrainResult (version 2), once the drain is over, before the worker
//     exits: how many connections ended on their own during the drain
//     and how many were still open at its deadline and cut.
//
// # Versions
//
// A receiver reads every version up to Version; a datagram of a newer
// version is refused with a *VersionError naming both versions. A sender
// writes the lowest version that carries its message, so that an older
// supervisor keeps understanding what it can. Decode is strict: any field
// out of bounds, any byte left over, an unknown kind is an error matching
// ErrMalformed. The one tolerance is Hello.Features: a bit the receiver
// does not know is kept, not refused, since a capability it does not know
// is one it will not use.
//
// # Platforms
//
// The codec is portable. Listen and NewClient need Linux (SO_PASSCRED,
// SCM_CREDENTIALS); elsewhere they return errors.ErrUnsupported.
package report
