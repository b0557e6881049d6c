package sticky

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// loopbackClients returns 127.0.0.2, 127.0.0.3, ... : the client addresses
// the integration tests bind to.
func loopbackClients(n int) []netip.Addr {
	addrs := make([]netip.Addr, n)
	a := netip.MustParseAddr("127.0.0.2")
	for i := range addrs {
		addrs[i] = a
		a = a.Next()
	}
	return addrs
}

func randomAddrs(r *rand.Rand, n int, v6 bool) []netip.Addr {
	addrs := make([]netip.Addr, n)
	for i := range addrs {
		if v6 {
			var b [16]byte
			for j := range b {
				b[j] = byte(r.Uint32())
			}
			addrs[i] = netip.AddrFrom16(b)
		} else {
			u := r.Uint32()
			addrs[i] = netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
		}
	}
	return addrs
}

func mustPick(t *testing.T, s *Set, a netip.Addr) int {
	t.Helper()
	id, ok := s.Pick(a)
	if !ok {
		t.Fatalf("Pick(%v) on %v: not ok", a, s.IDs())
	}
	return id
}

// TestPickStable pins the hash. Dispatchers restarted on a new PowerHouse
// version must send clients where the old one did, and the kernel program of
// package steer computes the same buckets, so a change to these values is a
// change of behaviour for users (a remap of every client, for the release
// notes), not a refactoring.
func TestPickStable(t *testing.T) {
	s := NewSet(1, 2, 3, 4)
	var got []int
	for _, a := range loopbackClients(12) {
		got = append(got, mustPick(t, s, a))
	}
	want := []int{1, 2, 3, 1, 3, 3, 2, 1, 4, 3, 2, 2}
	if !slices.Equal(got, want) {
		t.Errorf("picks for 127.0.0.2..13 over 1..4 = %v, want %v", got, want)
	}
	// Package steer's tests check its BPF program against Bucket; these
	// pin Bucket itself.
	for _, tt := range []struct {
		addr string
		want int
	}{
		{"127.0.0.2", 3553},
		{"::ffff:127.0.0.2", 3553},
		{"192.0.2.7", 2172},
		{"0.0.0.0", 829},
		{"255.255.255.255", 2387},
		{"2001:db8::1", 1225},
		{"::", 1154},
	} {
		if got := Bucket(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("Bucket(%s) = %d, want %d", tt.addr, got, tt.want)
		}
	}
}

// TestPickFollowsBucket is the property kernel steering rests on: an
// address's instance depends on its bucket alone, so a table with
// PickBucket(b) for every bucket b places every client where Pick does.
func TestPickFollowsBucket(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	sets := []*Set{NewSet(1), NewSet(1, 2, 3, 4), NewSet(2, 5, 7, 11, 13), NewSet(3, 9, 27, 81, 100, 200, 300, 400)}
	addrs := append(randomAddrs(r, 5000, false), randomAddrs(r, 5000, true)...)
	var order []int
	for _, s := range sets {
		for _, a := range addrs {
			b := Bucket(a)
			if b < 0 || b >= Buckets {
				t.Fatalf("Bucket(%v) = %d, out of [0, %d)", a, b, Buckets)
			}
			want, _ := s.PickBucket(b)
			if got := mustPick(t, s, a); got != want {
				t.Fatalf("set %v: Pick(%v) = %d, PickBucket(Bucket = %d) = %d", s.IDs(), a, got, b, want)
			}
			if order = s.Order(a, order[:0]); order[0] != want {
				t.Fatalf("set %v: Order(%v)[0] = %d, PickBucket = %d", s.IDs(), a, order[0], want)
			}
		}
	}
	s := NewSet(1, 2, 3)
	if id, ok := s.PickBucket(Buckets + 5); !ok || id != mustPickBucket(t, s, 5) {
		t.Errorf("PickBucket(Buckets+5) = %d, %v; not bucket 5's instance", id, ok)
	}
}

func mustPickBucket(t *testing.T, s *Set, b int) int {
	t.Helper()
	id, ok := s.PickBucket(b)
	if !ok {
		t.Fatalf("PickBucket(%d) on %v: not ok", b, s.IDs())
	}
	return id
}

// TestBucketUsesEveryByte: flipping any one bit of the 16-byte form moves
// an address to another bucket (but for the 1/4096 chance of landing in
// the same one), so an IPv6 client's whole address counts, prefix and
// interface identifier alike.
func TestBucketUsesEveryByte(t *testing.T) {
	addrs := randomAddrs(rand.New(rand.NewPCG(23, 24)), 200, true)
	for bit := range 128 {
		same := 0
		for _, a := range addrs {
			b := a.As16()
			b[bit/8] ^= 0x80 >> (bit % 8)
			if Bucket(netip.AddrFrom16(b)) == Bucket(a) {
				same++
			}
		}
		if same > 4 {
			t.Errorf("flipping bit %d left %d of %d addresses in their bucket", bit, same, len(addrs))
		}
	}
}

// TestBucketDistribution: addresses spread evenly over the buckets, by a
// chi-squared statistic within 6 standard deviations of its mean (the
// number of buckets less one), including the low-entropy case of one /16.
func TestBucketDistribution(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	block := make([]netip.Addr, 0, 1<<16)
	for a, i := netip.MustParseAddr("10.1.0.0"), 0; i < 1<<16; a, i = a.Next(), i+1 {
		block = append(block, a)
	}
	tests := []struct {
		name  string
		addrs []netip.Addr
	}{
		{"random IPv4", randomAddrs(r, 200_000, false)},
		{"random IPv6", randomAddrs(r, 200_000, true)},
		{"IPv4 /16", block},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var count [Buckets]int
			for _, a := range tt.addrs {
				count[Bucket(a)]++
			}
			mean := float64(len(tt.addrs)) / Buckets
			chi2 := 0.0
			for _, c := range count {
				d := float64(c) - mean
				chi2 += d * d / mean
			}
			df := float64(Buckets - 1)
			if sd := math.Sqrt(2 * df); math.Abs(chi2-df) > 6*sd {
				t.Errorf("chi-squared %.0f over %d buckets, want %.0f ± %.0f", chi2, Buckets, df, 6*sd)
			}
		})
	}
}

// shareTolerance is how far (relative) an instance's share of clients may
// stray from 1/n: 4 standard deviations of its share of buckets (a binomial
// over Buckets draws) plus 3% for the addresses' spread over buckets.
func shareTolerance(n int) float64 { return 4*math.Sqrt(float64(n-1)/Buckets) + 0.03 }

func TestPickDistribution(t *testing.T) {
	t.Run("loopback clients", func(t *testing.T) {
		s := NewSet(1, 2, 3, 4)
		count := map[int]int{}
		for _, a := range loopbackClients(40) {
			count[mustPick(t, s, a)]++
		}
		for _, id := range s.IDs() {
			if count[id] == 0 {
				t.Errorf("instance %d got none of 40 loopback clients: %v", id, count)
			}
		}
		t.Logf("40 loopback clients over 4 instances: %v", count)
	})

	r := rand.New(rand.NewPCG(3, 4))
	block := make([]netip.Addr, 0, 1<<16)
	for a, i := netip.MustParseAddr("10.1.0.0"), 0; i < 1<<16; a, i = a.Next(), i+1 {
		block = append(block, a)
	}
	tests := []struct {
		name  string
		addrs []netip.Addr
		ids   []int
	}{
		{"random IPv4 over 4", randomAddrs(r, 100_000, false), []int{1, 2, 3, 4}},
		{"random IPv6 over 4", randomAddrs(r, 100_000, true), []int{1, 2, 3, 4}},
		// A /16 differs only in its last 16 bits: the low-entropy case.
		{"IPv4 /16 over 4", block, []int{1, 2, 3, 4}},
		{"random IPv4 over 7", randomAddrs(r, 100_000, false), []int{1, 2, 3, 4, 5, 6, 7}},
		{"random IPv4 over 16", randomAddrs(r, 160_000, false), []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSet(tt.ids...)
			count := map[int]int{}
			for _, a := range tt.addrs {
				count[mustPick(t, s, a)]++
			}
			fair, tol := 1/float64(len(tt.ids)), shareTolerance(len(tt.ids))
			for _, id := range tt.ids {
				share := float64(count[id]) / float64(len(tt.addrs))
				if share < fair*(1-tol) || share > fair*(1+tol) {
					t.Errorf("instance %d got %.2f%% of keys, want %.2f%% ±%.0f%%", id, share*100, fair*100, tol*100)
				}
			}
		})
	}
}

// TestBucketShares: the buckets themselves are shared fairly, for the
// instance counts a group has (the table kernel steering loads).
func TestBucketShares(t *testing.T) {
	for _, n := range []int{2, 3, 4, 8, 16, 64} {
		t.Run(fmt.Sprint(n, " instances"), func(t *testing.T) {
			ids := make([]int, n)
			for i := range ids {
				ids[i] = i + 1
			}
			s := NewSet(ids...)
			count := map[int]int{}
			for b := range Buckets {
				count[mustPickBucket(t, s, b)]++
			}
			p := 1 / float64(n)
			mean, sd := Buckets*p, math.Sqrt(Buckets*p*(1-p))
			for _, id := range ids {
				if math.Abs(float64(count[id])-mean) > 4*sd {
					t.Errorf("instance %d won %d buckets, want %.0f ± %.0f", id, count[id], mean, 4*sd)
				}
			}
		})
	}
}

func TestRemoveMovesOnlyThatInstancesKeys(t *testing.T) {
	addrs := randomAddrs(rand.New(rand.NewPCG(5, 6)), 20_000, false)
	full := NewSet(1, 2, 3, 4, 5)
	for _, gone := range full.IDs() {
		t.Run(fmt.Sprint("remove ", gone), func(t *testing.T) {
			less := full.Without(gone)
			moved := 0
			for _, a := range addrs {
				before, after := mustPick(t, full, a), mustPick(t, less, a)
				switch {
				case before != gone && after != before:
					t.Fatalf("%v moved from %d to %d though only %d left", a, before, after, gone)
				case before == gone:
					moved++
				}
			}
			if moved == 0 {
				t.Errorf("instance %d had no keys to move", gone)
			}
		})
	}
}

// TestRemoveMovesOnlyThatInstancesBuckets is the same property on the table
// kernel steering loads: when an instance leaves, the only buckets whose
// entry changes are the ones it held.
func TestRemoveMovesOnlyThatInstancesBuckets(t *testing.T) {
	full := NewSet(1, 2, 3, 4, 5)
	for _, gone := range full.IDs() {
		less := full.Without(gone)
		held := 0
		for b := range Buckets {
			before, after := mustPickBucket(t, full, b), mustPickBucket(t, less, b)
			if before == gone {
				held++
			} else if after != before {
				t.Fatalf("bucket %d moved from %d to %d though only %d left", b, before, after, gone)
			}
		}
		if held == 0 {
			t.Errorf("instance %d held no buckets", gone)
		}
	}
}

func TestAddMovesKeysOnlyToNewInstance(t *testing.T) {
	addrs := randomAddrs(rand.New(rand.NewPCG(7, 8)), 50_000, false)
	for _, n := range []int{1, 2, 4, 8} {
		t.Run(fmt.Sprint(n, " to ", n+1), func(t *testing.T) {
			ids := make([]int, n)
			for i := range ids {
				ids[i] = i + 1
			}
			before := NewSet(ids...)
			after := before.With(n + 1)
			moved := 0
			for _, a := range addrs {
				x, y := mustPick(t, before, a), mustPick(t, after, a)
				if x != y {
					if y != n+1 {
						t.Fatalf("%v moved from %d to %d, not to the new instance %d", a, x, y, n+1)
					}
					moved++
				}
			}
			share, want := float64(moved)/float64(len(addrs)), 1/float64(n+1)
			if tol := shareTolerance(n + 1); share < want*(1-tol) || share > want*(1+tol) {
				t.Errorf("%.2f%% of keys moved to the new instance, want about %.2f%%", share*100, want*100)
			}
		})
	}
}

func TestIPv4MappedPicksTheSame(t *testing.T) {
	s := NewSet(1, 2, 3, 4, 5, 6)
	var o4, o6 []int
	for _, a := range randomAddrs(rand.New(rand.NewPCG(9, 10)), 2000, false) {
		mapped := netip.AddrFrom16(a.As16())
		if !mapped.Is4In6() {
			t.Fatalf("%v is not IPv4-mapped", mapped)
		}
		if x, y := mustPick(t, s, a), mustPick(t, s, mapped); x != y {
			t.Fatalf("Pick(%v) = %d, Pick(%v) = %d", a, x, mapped, y)
		}
		o4, o6 = s.Order(a, o4[:0]), s.Order(mapped, o6[:0])
		if !slices.Equal(o4, o6) {
			t.Fatalf("Order(%v) = %v, Order(%v) = %v", a, o4, mapped, o6)
		}
	}
	zoned := netip.MustParseAddr("fe80::1%eth0")
	if x, y := mustPick(t, s, zoned), mustPick(t, s, zoned.WithZone("")); x != y {
		t.Errorf("zone changed the pick: %d vs %d", x, y)
	}
}

func TestOrder(t *testing.T) {
	s := NewSet(1, 2, 3, 4, 5, 6, 7, 8)
	var order []int
	for _, a := range randomAddrs(rand.New(rand.NewPCG(11, 12)), 2000, true) {
		order = s.Order(a, order[:0])
		if first := mustPick(t, s, a); order[0] != first {
			t.Fatalf("Order(%v)[0] = %d, Pick = %d", a, order[0], first)
		}
		if sorted := slices.Sorted(slices.Values(order)); !slices.Equal(sorted, s.IDs()) {
			t.Fatalf("Order(%v) = %v, not a permutation of %v", a, order, s.IDs())
		}
		// The fallback order of the others must not depend on whether an
		// instance is up: dropping one just skips it.
		gone := order[3]
		want := slices.DeleteFunc(slices.Clone(order), func(id int) bool { return id == gone })
		if got := s.Without(gone).Order(a, nil); !slices.Equal(got, want) {
			t.Fatalf("Order(%v) without %d = %v, want %v", a, gone, got, want)
		}
	}

	prefix := []int{99}
	if got := s.Order(netip.MustParseAddr("127.0.0.2"), prefix); len(got) != 9 || got[0] != 99 {
		t.Errorf("Order did not append to dst: %v", got)
	}
	big := make([]int, 100)
	for i := range big {
		big[i] = i + 1
	}
	bs := NewSet(big...)
	a := netip.MustParseAddr("192.0.2.7")
	if o := bs.Order(a, nil); len(o) != 100 || o[0] != mustPick(t, bs, a) {
		t.Errorf("Order over 100 instances: len %d, first %d, Pick %d", len(o), o[0], mustPick(t, bs, a))
	}
}

func TestSetMembership(t *testing.T) {
	var empty *Set
	if id, ok := empty.Pick(netip.MustParseAddr("127.0.0.2")); ok {
		t.Errorf("nil set picked %d", id)
	}
	if got := NewSet().Order(netip.MustParseAddr("127.0.0.2"), nil); len(got) != 0 {
		t.Errorf("empty set ordered %v", got)
	}
	tests := []struct {
		name string
		set  *Set
		want []int
	}{
		{"nil", nil, []int{}},
		{"dedup and sort", NewSet(3, 1, 3, 2, 1), []int{1, 2, 3}},
		{"with into nil", empty.With(5), []int{5}},
		{"with in the middle", NewSet(1, 3).With(2), []int{1, 2, 3}},
		{"with at the end", NewSet(1, 3).With(9), []int{1, 3, 9}},
		{"without", NewSet(1, 2, 3).Without(2), []int{1, 3}},
		{"without the last", NewSet(1).Without(1), []int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.set.IDs(); !slices.Equal(got, tt.want) {
				t.Errorf("IDs = %v, want %v", got, tt.want)
			}
			if tt.set.Len() != len(tt.want) {
				t.Errorf("Len = %d, want %d", tt.set.Len(), len(tt.want))
			}
			for _, id := range tt.want {
				if !tt.set.Contains(id) {
					t.Errorf("Contains(%d) = false", id)
				}
			}
		})
	}
	s := NewSet(1, 2)
	if s.With(2) != s || s.Without(7) != s {
		t.Error("a no-op With or Without copied the set")
	}
	// Sets are immutable: deriving one leaves the original as it was.
	_ = s.With(3).Without(1)
	if !slices.Equal(s.IDs(), []int{1, 2}) {
		t.Errorf("original set changed to %v", s.IDs())
	}
}

func TestInstances(t *testing.T) {
	var in Instances
	a := netip.MustParseAddr("127.0.0.2")
	if _, ok := in.Pick(a); ok || in.Len() != 0 {
		t.Fatal("zero Instances is not empty")
	}
	if !in.Add(1) || in.Add(1) || !in.Add(2) {
		t.Fatal("Add reported the wrong change")
	}
	snap := in.Snapshot()
	if !in.Remove(1) || in.Remove(1) {
		t.Fatal("Remove reported the wrong change")
	}
	if snap.Len() != 2 {
		t.Errorf("an older snapshot changed: %v", snap.IDs())
	}
	in.Replace(7, 8, 9)
	if got := in.Snapshot().IDs(); !slices.Equal(got, []int{7, 8, 9}) {
		t.Errorf("after Replace: %v", got)
	}
	if id, ok := in.Pick(a); !ok || id != mustPick(t, NewSet(7, 8, 9), a) {
		t.Errorf("Pick = %d, %v", id, ok)
	}
	if o := in.Order(a, nil); len(o) != 3 {
		t.Errorf("Order = %v", o)
	}
}

// TestInstancesConcurrent runs lookups while membership changes; run it with
// -race. Instance 1 never leaves, so every lookup must succeed, and every
// answer must be an instance that was in the set at some point.
func TestInstancesConcurrent(t *testing.T) {
	var in Instances
	in.Replace(1, 2, 3)
	addrs := randomAddrs(rand.New(rand.NewPCG(13, 14)), 256, false)
	done := make(chan struct{})
	var lookups atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf [8]int
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				a := addrs[i%len(addrs)]
				id, ok := in.Pick(a)
				order := in.Order(a, buf[:0])
				if !ok || id < 1 || id > 5 || len(order) == 0 || !slices.Contains(order, 1) {
					errs <- fmt.Errorf("Pick(%v) = %d, %v; Order = %v", a, id, ok, order)
					return
				}
				lookups.Add(1)
			}
		}()
	}
	// Keep changing the set until the readers have done plenty of lookups
	// (or one failed), so that both really overlap.
	for i := 0; i < 2000 || (lookups.Load() < 20000 && len(errs) == 0); i++ {
		id := 2 + i%4
		if i%2 == 0 {
			in.Add(id)
		} else {
			in.Remove(id)
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestLookupsDoNotAllocate(t *testing.T) {
	s := NewSet(1, 2, 3, 4, 5, 6, 7, 8)
	var in Instances
	in.Replace(1, 2, 3, 4)
	a := netip.MustParseAddr("2001:db8::1")
	dst := make([]int, 0, 8)
	for name, f := range map[string]func(){
		"Set.Pick":       func() { s.Pick(a) },
		"Set.Order":      func() { dst = s.Order(a, dst[:0]) },
		"Instances.Pick": func() { in.Pick(a) },
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", name, n)
		}
	}
}

func BenchmarkPick(b *testing.B) {
	addrs := randomAddrs(rand.New(rand.NewPCG(15, 16)), 1024, false)
	for _, n := range []int{2, 4, 16} {
		ids := make([]int, n)
		for i := range ids {
			ids[i] = i + 1
		}
		s := NewSet(ids...)
		b.Run(fmt.Sprint("instances=", n), func(b *testing.B) {
			b.ReportAllocs()
			sink := 0
			i := 0
			for b.Loop() {
				id, _ := s.Pick(addrs[i&1023])
				sink += id
				i++
			}
			_ = sink
		})
	}
}

func BenchmarkOrder(b *testing.B) {
	addrs := randomAddrs(rand.New(rand.NewPCG(17, 18)), 1024, false)
	for _, n := range []int{4, 16} {
		ids := make([]int, n)
		for i := range ids {
			ids[i] = i + 1
		}
		s := NewSet(ids...)
		b.Run(fmt.Sprint("instances=", n), func(b *testing.B) {
			b.ReportAllocs()
			dst := make([]int, 0, n)
			i := 0
			for b.Loop() {
				dst = s.Order(addrs[i&1023], dst[:0])
				i++
			}
		})
	}
}

func BenchmarkInstancesPickParallel(b *testing.B) {
	var in Instances
	in.Replace(1, 2, 3, 4)
	addrs := randomAddrs(rand.New(rand.NewPCG(19, 20)), 1024, false)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			in.Pick(addrs[i&1023])
			i++
		}
	})
}
