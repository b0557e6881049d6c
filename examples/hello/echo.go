package main

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"time"
)

// The line-echo protocol of GET /echo (see the package comment).
const (
	echoProtocol = "line-echo"
	echoMaxLine  = 1024             // bytes, without the newline
	echoIdle     = time.Minute      // a silent client is disconnected
	echoWrite    = 10 * time.Second // a client that does not read is disconnected
)

// echo upgrades the connection to the line-echo protocol and answers every
// line with line (the worker's answer prefix), the client's address and
// the line. The connection is hijacked: net/http no longer tracks it, as
// it would not a WebSocket's.
func echo(line string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !hasToken(r.Header.Values("Connection"), "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), echoProtocol) {
			w.Header().Set("Upgrade", echoProtocol)
			w.Header().Set("Connection", "Upgrade")
			http.Error(w, "GET /echo upgrades the connection: send Connection: Upgrade and Upgrade: "+echoProtocol, http.StatusUpgradeRequired)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			http.Error(w, "echo: "+err.Error(), http.StatusInternalServerError)
			return
		}
		defer conn.Close()
		prefix := []byte(line + conn.RemoteAddr().String() + " echo=")
		conn.SetWriteDeadline(time.Now().Add(echoWrite))
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + echoProtocol + "\r\nConnection: Upgrade\r\n\r\n")
		if brw.Flush() != nil {
			return
		}
		for {
			// The server's header deadline may still be set: every read
			// gets a deadline of its own.
			conn.SetReadDeadline(time.Now().Add(echoIdle))
			// brw.Reader is net/http's 4 KiB reader: a line that fills it
			// is too long anyway.
			msg, err := brw.ReadSlice('\n')
			conn.SetWriteDeadline(time.Now().Add(echoWrite))
			if err == bufio.ErrBufferFull || len(bytes.TrimRight(msg, "\r\n")) > echoMaxLine {
				brw.WriteString("error: line longer than 1024 bytes\n")
				brw.Flush()
				return
			}
			if err != nil {
				return // the client closed the connection, or went silent
			}
			brw.Write(prefix)
			brw.Write(bytes.TrimRight(msg, "\r\n"))
			brw.WriteByte('\n')
			if brw.Flush() != nil {
				return
			}
		}
	}
}

// hasToken tells whether a comma-separated header (Connection) holds tok.
func hasToken(values []string, tok string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), tok) {
				return true
			}
		}
	}
	return false
}
