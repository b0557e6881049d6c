// Package sticky provides the sticky dispatcher of a worker group: choosing
// the worker instance for a client address by rendezvous hashing, reading
// PROXY protocol headers, and handing each accepted connection to its
// instance.
//
// # Rendezvous hashing
//
// Every instance that is up scores every client address; the highest score
// wins ([Set.Pick]), and the scores in decreasing order give the fallback
// order ([Set.Order]) a dispatcher walks when an instance's hand-off queue is
// full. When an instance leaves the set, only the clients it served move,
// each to its next choice; when one joins, only the clients it now wins
// move, about 1/(n+1) of them. This is why the set holds only instances that
// are up: a restarting instance stays in the set (its hand-off socket queues
// in the kernel meanwhile), and a failed or stopped one is removed.
//
// Keys are IP addresses, hashed to one of [Buckets] buckets ([Bucket]);
// instances score the bucket, not the address, so that a table of the
// winner of each bucket ([Set.PickBucket]) places clients exactly as Pick
// does: kernel steering (package steer) loads that table into a BPF map.
// IPv4 addresses and their IPv4-mapped IPv6 form hash the same, so a
// dual-stack listener does not split a client; zones are ignored. Instances
// are the numbers systemd gives them (the %i of
// powerhouse-<group>@<n>.service), so a dispatcher can keep per-instance
// state in a slice indexed by id. Each instance's seed is precomputed; a
// lookup is three 64-bit mixes for the address and its bucket and one per
// instance, with no allocation and no lock. [Set] is immutable and safe for
// concurrent use; [Instances] publishes a new Set atomically when
// membership changes.
//
// The hash has no secret key, on purpose: scores are the same in every
// process, on every run and every host, so a restarted or upgraded
// dispatcher sends each client where the previous one did. A client that
// can choose many source addresses can therefore choose its instance too;
// this is stickiness, not isolation.
//
// # Hand-off and back-pressure
//
// [Dispatcher] accepts with accept4(2) and hands each connection to its
// instance with one non-blocking sendmsg(2) (MSG_DONTWAIT) on a unix
// datagram socket connected to that instance's hand-off socket. The send
// takes no lock: the socket's descriptor is reference-counted, so an
// instance whose socket is re-created or stopped (and so re-dialled or
// dropped) never makes a concurrent send write to a closed or reused
// descriptor. The accept loop waits for nothing but room (below).
//
// When an instance's kernel queue is full (a slow or stopped worker), the
// connection waits in the dispatcher, in a queue per instance bounded by
// DispatcherOptions.MaxQueued, while a goroutine of that instance polls
// its socket for room and hands waiting connections over in order. A
// connection that waited DispatcherOptions.QueueWait, or found the bound
// reached while its instance is stalled, goes on to the next instance in
// its rendezvous order that has room (a sticky miss); an instance serves
// its own clients before those that fall back to it, so one stalled
// instance delays no other instance's clients. A connection that finds no
// other instance with room keeps its place and tries again after another
// QueueWait, until DispatcherOptions.MaxWait has passed since it was
// accepted; only then is it closed (Stats.Dropped).
//
// Backpressure: a connection that no instance can take or queue within
// the bounds (MaxQueued, and DispatcherOptions.MaxQueuedTotal in all) is
// held by its accept loop, which accepts nothing more until a drainer
// makes room (Stats.AcceptPauses): under a connection storm the excess
// waits in the listening socket's backlog, as before a server that is
// behind, instead of being accepted and closed. A paused loop's beat
// (Dispatcher.Beats) is even: it is alive. When Serve ends, the
// connections still waiting go to any instance with room, for at most
// QueueWait, before the rest are closed.
//
// Send errors are classified: EAGAIN is a full queue; errors that mean the
// instance's socket is gone (ECONNREFUSED, ENOTCONN, EPIPE, ...) re-dial it
// once and then try the next instance; any other error (a header that
// cannot be encoded, EMSGSIZE, ENOBUFS, ...) belongs to that connection
// alone: it is closed and counted (Stats.SendErrors), and the instance
// keeps its socket. Accept errors never end the accept loop, except a
// descriptor that is not a listening socket: a connection's own error
// (ECONNABORTED, EPROTO, ...) is skipped at once, others (EMFILE, ENFILE,
// ENOBUFS, ENOMEM, EPERM, ...) back off from 5 ms to 1 s. Warnings are
// logged at most once a second, with a count of those suppressed.
//
// # Affinity keys
//
// A dispatcher whose DispatcherOptions.Affinity names a key (package
// affinity: "query:sid", "cookie:NAME", "header:NAME",
// "header:X-Forwarded-For") routes each connection by a key in its first
// HTTP/1.x request instead of its client address, so that clients behind
// one NAT or proxy spread out and a client whose address changes keeps its
// instance. Its listeners take a path of their own; source affinity keeps
// the path above, unchanged.
//
// An accepted descriptor stays blocking and out of Go's netpoller: its
// file status flags are shared with the worker that receives it, and
// registering it would make it non-blocking under the worker's feet. The
// accept loop peeks once (recv with MSG_PEEK|MSG_DONTWAIT, into 1 KiB);
// when the head is not complete yet, one goroutine per dispatcher waits for
// it on an epoll instance of its own (edge-triggered: an incomplete head
// wakes it again only when more arrives), peeking up to affinity.MaxHead
// (8 KiB) each time. Nothing is ever read: the worker receives every byte
// the client sent. A connection whose head gives no key within
// AffinityOptions.PeekTimeout (1 s), within 8 KiB, or is not HTTP/1.x at
// all (TLS, another protocol), goes by the fallback and is counted in
// Stats.PeekRejects by reason; one that closes before sending a byte is
// closed. At most AffinityOptions.MaxPeeking (4,096) connections wait for
// their head; past it a new one goes by the fallback at once (PeekBusy).
// On a PROXY listener the header is read first, as above, and the request
// after it is peeked through the connection's poller (PROXY connections
// are in it already); the PROXY source is the client for the fallback and
// for X-Forwarded-For's trust.
//
// Routing: a key that is a session id minted by affinity.NewSessionID
// goes to the instance it names while that instance is up
// (Stats.TagRouted); another key to the rendezvous winner of its bucket
// ([KeyBucket]; an X-Forwarded-For client by its address's bucket, as
// source affinity would place it) (Stats.KeyRouted); a connection without
// a key by its address, or with AffinityOptions.Spread to the instance
// with the fewest open connections (Stats.Fallbacks). Open connections are
// those handed off less those the worker reported closed
// ([Dispatcher.Closed], fed from the library's report.Closed); a worker
// that does not use the library is counted as holding every connection it
// was handed. With AffinityOptions.BalanceFactor (also on source affinity)
// a connection whose instance holds more than the factor times the
// average open connections goes to the next instance of its order that
// does not (consistent hashing with bounded loads; Stats.Spills); a minted
// id's connection is never moved.
//
// # PROXY protocol
//
// On a listener marked proxy_protocol = true, [ReadProxyHeader] reads a
// version 1 (text) or version 2 (binary) header, as specified in haproxy's
// doc/proxy-protocol.txt, and returns the original client address, which
// becomes the stickiness key and the hand-off's original peer. It consumes
// exactly the header's bytes and nothing more: it finds the header's length
// with recv(MSG_PEEK) and then reads that many bytes, so the client's data
// stays in the socket for the worker that receives the descriptor. There is
// no user-space buffer to forward.
//
// Parsing is strict, as the specification asks: "PROXY" with exactly one
// space between fields, TCP4 addresses in dotted decimal without leading
// zeros, TCP6 addresses in IPv6 text without zones, ports 0-65535 without
// leading zeros or signs, CRLF and nothing else to end the line; v2 version
// 2 only, commands LOCAL and PROXY only, defined family bytes only, TLVs
// that fit the header exactly, and at most one CRC32C TLV, which must match.
// Other TLVs are skipped. A v1 UNKNOWN line, a v2 LOCAL command, and v2
// UNSPEC, UDP and AF_UNIX families are accepted as Local: the dispatcher
// then uses the connection's own peer address. Addresses must also pass the
// hand-off's rule, handoff.CheckAddrPort (no port 0, no 0.0.0.0, :: or
// ::ffff:0.0.0.0), so that every accepted header can be handed off: a bad
// source refuses the header, a bad destination is dropped from it.
// Refusals are *[ProxyError] with a [ProxyReason] to count them by.
//
// # Limits
//
//   - A v1 line is at most 107 bytes including CRLF (the specification's
//     worst case); a v2 header's length field at most ProxyOptions.MaxV2Length,
//     1536 by default.
//   - A header must be complete within ProxyOptions.Timeout, 3 s by default
//     (the specification's minimum, to cover one TCP retransmission). A peer
//     that closes mid-header is noticed at once.
//   - The peek-and-read path needs a connection that implements
//     syscall.Conn (*net.TCPConn, *net.UnixConn). Other net.Conn values are
//     read in exact small pieces, which is correct but costs up to about
//     fifty reads for a v1 line.
//   - The package is Linux-only: the hand-off needs SCM_RIGHTS on unix
//     datagram sockets, and the end of a partial header is detected with
//     poll(POLLRDHUP).
//   - The specification forbids guessing whether a header is present: a
//     listener either always expects one or never does, and only trusted
//     proxies may send it. [Listener].ProxyFrom lists them (required for a
//     TCP listener); any other peer is closed as soon as it is accepted,
//     before a byte is read, and counted (Stats.ProxyUntrusted).
//     IPv4-mapped peers of a dual-stack socket match IPv4 prefixes. A
//     unix-socket listener has no peer address: its file permissions
//     decide who may connect.
//   - Connections whose header is still being read are bounded by
//     DispatcherOptions.MaxPendingProxy in all and MaxPendingProxyPerPeer
//     per peer address, so one trusted peer's slow connections cannot
//     refuse another's; over-budget connections are closed and counted
//     (Stats.ProxyBusy).
package sticky
