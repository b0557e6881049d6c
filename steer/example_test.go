package steer_test

import (
	"log"
	"os"

	"github.com/powerhouse/powerhouse/steer"
	"github.com/powerhouse/powerhouse/sticky"
)

// A supervisor with one listen address and instances 1 to 4, whose
// listening sockets it holds as listeners[id] (from systemd's Sockets=).
func Example() {
	var listeners map[int]int // instance -> listening socket's descriptor
	var stored []*os.File     // from the file descriptor store, after a restart

	s, err := steer.Adopt(stored)
	if err != nil {
		// First start (or nothing usable stored): load afresh.
		if s, err = steer.Load(1, 5); err != nil {
			log.Printf("kernel steering unavailable, serving with plain SO_REUSEPORT: %v", err)
			return
		}
		files, err := s.Files()
		if err != nil {
			log.Fatal(err)
		}
		for _, f := range files {
			// sd_notify "FDSTORE=1\nFDNAME=" + f.Name() + "\nFDPOLL=0" with f.
			f.Close()
		}
	}
	defer s.Close()
	for id, fd := range listeners {
		if err := s.SetSocket(0, id, fd); err != nil {
			log.Fatal(err)
		}
		if err := s.Attach(0, fd); err != nil {
			log.Fatal(err)
		}
	}
	up := sticky.NewSet(1, 2, 3, 4)
	if _, err := s.SetTable(up); err != nil {
		log.Fatal(err)
	}
	// Instance 3 stopped: its clients move, no others do.
	if _, err := s.SetTable(up.Without(3)); err != nil {
		log.Fatal(err)
	}
	log.Println(s.Shares())
}
