package affinity_test

import (
	"fmt"
	"net/netip"

	"github.com/powerhouse/powerhouse/affinity"
)

func ExampleExtract() {
	spec, err := affinity.Parse("query:sid")
	if err != nil {
		panic(err)
	}
	head := []byte("GET /socket.io/?EIO=4&transport=polling&sid=ph3.q2V0aGlzaXNyYW5kb21ieQ HTTP/1.1\r\nHost: example.com\r\n\r\n")
	r, err := affinity.Extract(spec, head, netip.MustParseAddr("192.0.2.1"), affinity.Options{})
	if err != nil {
		panic(err)
	}
	n, tagged := affinity.InstanceOfID(r.Key)
	fmt.Println(r.Key, n, tagged)
	// Output: ph3.q2V0aGlzaXNyYW5kb21ieQ 3 true
}

func ExampleNewSessionID() {
	id := affinity.NewSessionID(3) // in a worker: activation.NewSessionID()
	n, ok := affinity.InstanceOfID(id)
	fmt.Println(len(id), n, ok)
	// Output: 26 3 true
}
