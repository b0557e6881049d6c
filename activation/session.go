package activation

import (
	"strconv"

	"github.com/powerhouse/powerhouse/affinity"
)

// NewSessionID returns an unguessable session id (128 bits from
// crypto/rand) that names this worker's instance ($POWERHOUSE_INSTANCE),
// for a group whose dispatcher routes by a key (affinity = "query:sid",
// "cookie:NAME", ...): the dispatcher sends a request that carries the id
// to the instance that minted it while that instance is up, with no table
// of sessions anywhere. Use it wherever the server creates the session id
// that later requests carry: engine.io's generateId, a session cookie.
// The format is package affinity's: "ph3.q2V0aGlzaXNyYW5kb21ieQ" for
// instance 3, only [A-Za-z0-9._-].
//
// Outside PowerHouse ($POWERHOUSE_INSTANCE unset or not a number in
// 1..1024) it returns an id without the instance tag: still unguessable,
// routed by hashing like any other key.
func NewSessionID() string {
	n, err := strconv.Atoi(Instance())
	if err != nil {
		n = 0
	}
	return affinity.NewSessionID(n)
}
