package affinity

import (
	"crypto/rand"
	"encoding/base64"
	"strconv"
)

// MaxInstance is the highest instance number a session id can name.
const MaxInstance = 1024

// idRandom is the length of an id's random part: 128 bits in unpadded
// base64url.
const idRandom = 22

// MaxIDLen is the length of the longest id NewSessionID returns.
const MaxIDLen = len("ph1024.") + idRandom

// NewSessionID returns an unguessable session id (128 bits from
// crypto/rand) that names instance, in the package's documented format:
// "ph<instance>.<22 base64url characters>". For an instance outside
// 1..MaxInstance (a worker not run by PowerHouse) it returns the random
// part alone: still a good id, routed by hashing like any other key.
func NewSessionID(instance int) string {
	var r [16]byte
	rand.Read(r[:]) // never fails (crypto/rand: it crashes the program rather)
	var b [MaxIDLen]byte
	out := b[:0]
	if instance >= 1 && instance <= MaxInstance {
		out = append(out, "ph"...)
		out = strconv.AppendInt(out, int64(instance), 10)
		out = append(out, '.')
	}
	out = base64.RawURLEncoding.AppendEncode(out, r[:])
	return string(out)
}

var strict = base64.RawURLEncoding.Strict()

// InstanceOfID returns the instance a session id minted by NewSessionID
// names. ok is false for anything else: another format, an instance out of
// range or written with a leading zero, a random part of another length or
// with bits a 16-byte value cannot have. It does not allocate.
func InstanceOfID(id string) (instance int, ok bool) {
	if len(id) < len("ph1.")+idRandom || len(id) > MaxIDLen || id[0] != 'p' || id[1] != 'h' {
		return 0, false
	}
	dot := len(id) - idRandom - 1
	if id[dot] != '.' {
		return 0, false
	}
	num := id[2:dot]
	if num[0] == '0' {
		return 0, false
	}
	n := 0
	for i := 0; i < len(num); i++ {
		c := num[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n > MaxInstance {
		return 0, false
	}
	var r [17]byte // a strict decode of 22 characters writes 16 bytes
	k, err := strict.Decode(r[:], []byte(id[dot+1:]))
	if err != nil || k != 16 {
		return 0, false
	}
	return n, true
}
