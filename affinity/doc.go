// Package affinity provides what a sticky dispatcher needs to route a
// connection by a key in its first HTTP/1.x request rather than by the
// client's address: the affinity spec of a group ([Parse]), the key's
// extraction from a peeked request head ([Extract]), and the format of the
// session ids that workers mint ([NewSessionID], [InstanceOfID]). It does no
// I/O: the dispatcher peeks, this package reads what was peeked.
//
// # Specs
//
//   - "source": the client's address (the default; no peek).
//   - "header:NAME": the first NAME header's value (names are matched
//     case-insensitively).
//   - "header:X-Forwarded-For": the last hop that is not a trusted proxy,
//     honoured only when the connection's peer is itself trusted (see
//     [Options].TrustedProxies); otherwise the header is ignored
//     ([Result].XFFIgnored) and the connection has no key.
//   - "cookie:NAME": the value of the first cookie NAME in the Cookie
//     headers.
//   - "query:NAME": the value of the first NAME parameter of the request
//     target's query, percent-decoded.
//
// # Bounds
//
// A head is read from at most [MaxHead] bytes (8 KiB, the request line and
// every header up to the blank line); a key is at most [MaxKey] bytes
// (longer values are refused as malformed). The parser is strict where
// leniency would let a client hide a key from the dispatcher but not from
// the worker, or the other way round: header names are tokens with the
// colon right after them, obsolete line folding is refused, and so is a
// NUL or a bare CR. A "query:" key needs only the request line, so it is
// found before the rest of the head arrives.
//
// # Session ids
//
// A minted id is "ph" + the instance in decimal (1..[MaxInstance], no
// leading zero) + "." + 22 characters of unpadded base64url of 128 random
// bits (crypto/rand), e.g. "ph3.q2V0aGlzaXNyYW5kb21ieQ". It uses only
// [A-Za-z0-9._-], so it is safe unescaped in a cookie, a query string and
// engine.io's sid. The dispatcher routes a key that is such an id to the
// instance it names while that instance is up; any other key, and an id
// whose instance is down, by rendezvous hashing of the whole key. The tag
// is not a secret and needs none: an id names where the session lives,
// and a client that forges one only chooses its own instance.
package affinity
