package sticky_test

import (
	"context"
	"errors"
	"log"
	"net"
	"net/netip"

	"github.com/powerhouse/powerhouse/sticky"
)

// A dispatcher keeps the instances that are up in an Instances value, and
// for each connection tries them in the client's order of preference.
func ExampleInstances() {
	var up sticky.Instances
	up.Replace(1, 2, 3, 4) // powerhouse-web@1..4 are active
	up.Remove(3)           // @3 failed: only its clients move

	queueFull := func(id int) bool { return false } // a non-blocking send got EAGAIN

	client := netip.MustParseAddr("198.51.100.7")
	var buf [16]int
	for _, id := range up.Order(client, buf[:0]) {
		if !queueFull(id) {
			log.Printf("hand %v to instance %d", client, id)
			break
		}
	}
}

// Set is the immutable snapshot: build one, derive others, pick from any
// goroutine.
func ExampleSet_Pick() {
	s := sticky.NewSet(1, 2, 3, 4)
	id, ok := s.Pick(netip.MustParseAddr("127.0.0.2"))
	if !ok {
		log.Fatal("no instance is up")
	}
	// An IPv4 client is the same key whether the listener is IPv4 or
	// dual-stack IPv6.
	same, _ := s.Pick(netip.MustParseAddr("::ffff:127.0.0.2"))
	log.Println(id == same)

	// Scaling from 4 to 5 instances moves about a fifth of the clients, all
	// of them to instance 5.
	_ = s.With(5)
}

// Reading the header on a listener configured with proxy_protocol = true,
// before handing the connection's descriptor on.
func ExampleReadProxyHeader() {
	ln, err := net.Listen("tcp", "127.0.0.1:9999")
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	for {
		conn, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		// A slow client holds its goroutine until the header timeout, so
		// never read the header in the accept loop itself.
		go func() {
			h, err := sticky.ReadProxyHeader(ctx, conn, sticky.ProxyOptions{})
			if err != nil {
				var pe *sticky.ProxyError
				if errors.As(err, &pe) {
					log.Printf("refused %v: %v", conn.RemoteAddr(), pe.Reason) // count by reason
				}
				conn.Close()
				return
			}
			key := conn.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
			if !h.Local {
				key = h.Source.Addr() // the client the proxy speaks for
			}
			log.Printf("client %v, unread bytes still in the socket", key)
			conn.Close()
		}()
	}
}
