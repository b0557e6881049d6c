// Package pyworker holds worker.py, a PowerHouse sticky worker written in
// Python with the standard library only, which implements the hand-off
// format of docs/handoff.md from the document alone. The package's test
// runs it as systemd would and hands it real connections with the Go
// sender, so the format and its documentation cannot drift apart.
package pyworker
