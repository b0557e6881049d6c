package activation

import (
	"os"
	"syscall"
	"testing"
)

// TestFDUsage: the count matches the process's descriptors as os.ReadDir
// lists them (less the one ReadDir itself holds open), with a buffer too
// small for one getdents call, and the limit is the soft RLIMIT_NOFILE.
func TestFDUsage(t *testing.T) {
	for i := 0; i < 100; i++ {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	open, limit, err := fdUsage(make([]byte, 256))
	if err != nil {
		t.Fatal(err)
	}
	if want := len(ents) - 1; open != want {
		t.Errorf("open = %d, want %d", open, want)
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if uint64(limit) != rl.Cur {
		t.Errorf("limit = %d, want %d", limit, rl.Cur)
	}
}

// BenchmarkFDUsage is the price of one exact count, which the gate pays
// about once a second, or more often only near the limit.
func BenchmarkFDUsage(b *testing.B) {
	for i := 0; i < 1000; i++ {
		f, err := os.Open(os.DevNull)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
	}
	buf := make([]byte, 8192)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := fdUsage(buf); err != nil {
			b.Fatal(err)
		}
	}
}
