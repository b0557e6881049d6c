package sticky

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
)

// Set is an immutable set of worker instances among which client addresses
// are spread by rendezvous (highest-random-weight) hashing of their
// [Bucket].
//
// Instances are identified by the number systemd gives them (the %i of
// powerhouse-<group>@<n>.service). A Set never changes after it is built, so
// any number of goroutines may call its methods at once; to change the
// membership build a new Set (With, Without, NewSet) or use [Instances].
//
// The nil *Set is a valid, empty set.
type Set struct {
	// members is sorted by id and holds no duplicates. The seed sits next to
	// the id so that Pick walks one small contiguous array.
	members []member
}

type member struct {
	seed uint64
	id   int
}

// NewSet returns the set of the given instance ids. Duplicates are ignored;
// the order of ids does not matter.
func NewSet(ids ...int) *Set {
	ms := make([]member, 0, len(ids))
	for _, id := range ids {
		ms = append(ms, member{seed: instanceSeed(id), id: id})
	}
	slices.SortFunc(ms, func(a, b member) int { return cmp.Compare(a.id, b.id) })
	ms = slices.CompactFunc(ms, func(a, b member) bool { return a.id == b.id })
	return &Set{members: ms}
}

// Len returns the number of instances in s.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.members)
}

// IDs returns the instance ids of s in ascending order, in a new slice.
func (s *Set) IDs() []int {
	ids := make([]int, s.Len())
	for i := range ids {
		ids[i] = s.members[i].id
	}
	return ids
}

// Contains reports whether id is in s.
func (s *Set) Contains(id int) bool {
	_, ok := s.find(id)
	return ok
}

// With returns a set holding the instances of s and id. It returns s itself
// when id is already a member.
func (s *Set) With(id int) *Set {
	i, ok := s.find(id)
	if ok {
		return s
	}
	ms := make([]member, 0, s.Len()+1)
	if s != nil {
		ms = append(ms, s.members[:i]...)
	}
	ms = append(ms, member{seed: instanceSeed(id), id: id})
	if s != nil {
		ms = append(ms, s.members[i:]...)
	}
	return &Set{members: ms}
}

// Without returns a set holding the instances of s except id. It returns s
// itself when id is not a member.
func (s *Set) Without(id int) *Set {
	i, ok := s.find(id)
	if !ok {
		return s
	}
	ms := make([]member, 0, len(s.members)-1)
	ms = append(ms, s.members[:i]...)
	ms = append(ms, s.members[i+1:]...)
	return &Set{members: ms}
}

func (s *Set) find(id int) (int, bool) {
	if s == nil {
		return 0, false
	}
	return slices.BinarySearchFunc(s.members, id, func(m member, id int) int { return cmp.Compare(m.id, id) })
}

// Pick returns the instance that serves addr: the one with the highest
// score for addr's bucket, [Bucket](addr). ok is false when s is empty.
//
// An IPv4 address and its IPv4-mapped IPv6 form (::ffff:a.b.c.d) pick the
// same instance; an IPv6 zone is ignored. The zero netip.Addr is a key like
// any other, so every connection without a client address lands on one
// instance: callers without an address should choose some other way.
//
// Pick does not allocate.
func (s *Set) Pick(addr netip.Addr) (id int, ok bool) {
	return s.PickBucket(Bucket(addr))
}

// PickBucket returns the instance that serves bucket b, in [0, Buckets):
// the instance with the highest rendezvous score for b. Pick(addr) is
// PickBucket(Bucket(addr)); kernel steering fills its table with
// PickBucket(b) for every b, which is why a client reaches the same instance
// whether the dispatcher or the kernel places its connection. ok is false
// when s is empty. A b out of range is reduced modulo Buckets.
func (s *Set) PickBucket(b int) (id int, ok bool) {
	if s.Len() == 0 {
		return 0, false
	}
	k := bucketKey(b)
	best := 0
	bestScore := score(k, s.members[0].seed)
	for i := 1; i < len(s.members); i++ {
		// Strictly greater: on a (2^-64 unlikely) tie the lower id wins,
		// the same rule Order uses, so the two always agree.
		if sc := score(k, s.members[i].seed); sc > bestScore {
			best, bestScore = i, sc
		}
	}
	return s.members[best].id, true
}

// Order appends every instance of s to dst in the order of preference for
// addr's bucket, most preferred first, and returns the extended slice. Its
// first element is the instance Pick returns; a dispatcher that cannot use
// it (its queue is full) tries the next, and so on. Removing an instance
// from the set removes it from every order without changing the relative
// order of the others.
//
// Order does not allocate when dst has room for Len more ids and s has at most
// 64 instances.
func (s *Set) Order(addr netip.Addr, dst []int) []int {
	return s.OrderBucket(Bucket(addr), dst)
}

// OrderBucket is Order for the keys of bucket b: Order(addr, dst) is
// OrderBucket(Bucket(addr), dst), and a key that is not an address places
// by OrderBucket(KeyBucket(key), dst).
func (s *Set) OrderBucket(b int, dst []int) []int {
	n := s.Len()
	if n == 0 {
		return dst
	}
	k := bucketKey(b)
	var stack [64]scored
	var sc []scored
	if n <= len(stack) {
		sc = stack[:n]
	} else {
		sc = make([]scored, n)
	}
	for i, m := range s.members {
		sc[i] = scored{score: score(k, m.seed), id: m.id}
	}
	// Insertion sort: n is small (one instance per CPU, typically) and
	// sort.Slice would allocate. Members arrive in ascending id, and the sort
	// is stable, so ties keep the lower id first.
	for i := 1; i < n; i++ {
		for j := i; j > 0 && sc[j].score > sc[j-1].score; j-- {
			sc[j], sc[j-1] = sc[j-1], sc[j]
		}
	}
	for _, e := range sc {
		dst = append(dst, e.id)
	}
	return dst
}

type scored struct {
	score uint64
	id    int
}

// Instances is the live set of instances that are up, for a dispatcher that
// changes membership as workers come and go while other goroutines pick
// instances for connections.
//
// Lookups load an immutable [Set] snapshot with one atomic read and never
// block; changes copy the set (it changes rarely and is small) and publish
// the copy. The zero value is an empty set ready to use. An Instances must
// not be copied after first use.
type Instances struct {
	mu  sync.Mutex // serialises writers; readers never take it
	cur atomic.Pointer[Set]
}

// Snapshot returns the current set. Use it when several lookups must see the
// same membership.
func (in *Instances) Snapshot() *Set { return in.cur.Load() }

// Pick is Snapshot().Pick(addr).
func (in *Instances) Pick(addr netip.Addr) (id int, ok bool) { return in.cur.Load().Pick(addr) }

// Order is Snapshot().Order(addr, dst).
func (in *Instances) Order(addr netip.Addr, dst []int) []int {
	return in.cur.Load().Order(addr, dst)
}

// OrderBucket is Set.OrderBucket on the current set.
func (in *Instances) OrderBucket(b int, dst []int) []int {
	return in.cur.Load().OrderBucket(b, dst)
}

// Len is Snapshot().Len().
func (in *Instances) Len() int { return in.cur.Load().Len() }

// Add puts id in the set and reports whether it was absent.
func (in *Instances) Add(id int) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	old := in.cur.Load()
	next := old.With(id)
	in.cur.Store(next)
	return next != old
}

// Remove takes id out of the set and reports whether it was present.
func (in *Instances) Remove(id int) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	old := in.cur.Load()
	next := old.Without(id)
	in.cur.Store(next)
	return next != old
}

// Replace makes the set exactly ids.
func (in *Instances) Replace(ids ...int) {
	next := NewSet(ids...)
	in.mu.Lock()
	defer in.mu.Unlock()
	in.cur.Store(next)
}

// The hash. Scores must be the same in every process and on every run, so
// that a restarted dispatcher sends each client where the old one did: there
// is no random per-process key. The mixer is the splitmix64 finaliser
// (Stafford's "Mix13"), a bijection on 64 bits whose output bits each depend
// on every input bit; that is what rendezvous hashing needs from a hash,
// since it only compares scores.
//
// A client address goes to one of Buckets buckets, and the buckets, not the
// addresses, are what instances score. The indirection is for kernel
// steering (package steer): its BPF program computes Bucket from the packet
// and looks the instance up in a table user space fills with PickBucket, so
// the program stays a few dozen instructions and both modes agree.

// Buckets is the number of buckets client addresses are spread over. With n
// instances each wins about Buckets/n of them, within a few percent
// (binomial: a standard deviation of sqrt((n-1)/Buckets) of its share, 3% at
// n = 4); the table a kernel program reads has one entry per bucket.
const Buckets = 1 << bucketBits

const bucketBits = 12

const (
	keySalt    = 0x9e3779b97f4a7c15 // 2^64 / golden ratio; splits the constant high half of IPv4 keys from zero
	seedSalt   = 0xd1b54a32d192ed03 // keeps instance seeds apart from address keys
	bucketSalt = 0x2545f4914f6cdd1d // keeps bucket keys apart from instance seeds
)

func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// Bucket returns the bucket of addr, in [0, Buckets): the top 12 bits of
// mix64(mix64(hi ^ 0x9e3779b97f4a7c15) ^ lo), where hi and lo are the first
// and last 8 bytes of addr's 16-byte form read big-endian, and mix64 is the
// splitmix64 finaliser. An IPv4 address counts in its IPv4-mapped form
// (hi = 0, lo = 0x0000ffff_aabbccdd), so 1.2.3.4 and ::ffff:1.2.3.4 share a
// bucket; an IPv6 zone is dropped; all 16 bytes of an IPv6 address count.
//
// This is the one definition of the mapping. Package steer's BPF program
// computes the same function in the kernel; its tests check that the two
// agree, so a change here must be made there too (and is a remap of every
// client, to say in the release notes).
func Bucket(addr netip.Addr) int { return int(addrKey(addr) >> (64 - bucketBits)) }

// addrKey hashes the 16-byte form of addr. As16 gives IPv4 addresses in
// their IPv4-mapped form, which is what makes 1.2.3.4 and ::ffff:1.2.3.4 the
// same key; it also drops the zone.
func addrKey(addr netip.Addr) uint64 {
	a := addr.As16()
	hi := binary.BigEndian.Uint64(a[:8])
	lo := binary.BigEndian.Uint64(a[8:])
	// Two rounds, so that every bit of both halves reaches every key bit:
	// for IPv4 all the entropy is in the last 32 bits of lo.
	return mix64(mix64(hi^keySalt) ^ lo)
}

// bucketKey is the key bucket b is scored by. The & keeps an out-of-range b
// from being a bucket of its own.
func bucketKey(b int) uint64 { return mix64(uint64(b&(Buckets-1)) ^ bucketSalt) }

func instanceSeed(id int) uint64 { return mix64(uint64(id) ^ seedSalt) }

func score(key, seed uint64) uint64 { return mix64(key ^ seed) }

// KeyBucket returns the bucket of a key that is not an address (a session
// id, a cookie's or a header's value): the top 12 bits of mix64 of its
// 64-bit FNV-1a hash. Like Bucket it has no secret, so every dispatcher,
// on every run, places a key alike; it is computed in user space only
// (kernel steering places by address).
func KeyBucket(key string) int {
	h := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	return int(mix64(h^keySalt) >> (64 - bucketBits))
}
