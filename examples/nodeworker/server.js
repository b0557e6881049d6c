// A stock Node.js HTTP server as a PowerHouse kernel-mode worker: no
// PowerHouse code, no npm module, Node's standard library only.
//
// In kernel mode (dispatch = "kernel") systemd hands every instance a
// listening socket of its own, by plain socket activation: LISTEN_FDS=1,
// the socket on descriptor 3. The kernel's steering program picks which
// instance's socket a connection lands on from the client's address, so a
// client always reaches the same instance; this server only has to accept.
// kernel.toml, next to this file, is such a group (the README's quick
// start; copy this file to /opt/nodeworker/server.js first):
//
//   [[worker]]
//   name     = "node"
//   exec     = ["node", "/opt/nodeworker/server.js"]
//   amount   = 4
//   sticky   = true
//   dispatch = "kernel"
//   notify   = false       # sends no READY=1: the unit is Type=exec
//   listen   = ["127.0.0.1:8080"]
//
// It answers every request with "hello from worker <id>\n", like the Node
// workers of the benchmark's peers (../shared/bench/node), <id> being the
// instance number the generated unit sets in POWERHOUSE_INSTANCE (%i).
//
// On SIGTERM (systemctl stop, restart, a rolling reload) it stops
// accepting, finishes the requests it has, closes its idle kept-alive
// connections, tells clients of the busy ones to close (Connection: close)
// and exits 0. Closing its descriptor does not close the socket: systemd
// keeps it, with the connections queued on it, for the next process of
// the same instance. A drain that hangs is cut by systemd's TimeoutStopSec=.
//
// usage (under systemd): node server.js
'use strict';
const http = require('http');

// sd_listen_fds(3): the descriptors are ours only if LISTEN_PID is us.
const SD_LISTEN_FDS_START = 3;
const nfds = process.env.LISTEN_PID === String(process.pid) ? Number(process.env.LISTEN_FDS) : 0;
if (!Number.isInteger(nfds) || nfds < 1 || nfds > 64) {
  console.error('nodeworker: no listening socket from systemd (LISTEN_FDS=%s, LISTEN_PID=%s, pid %d): ' +
    'run it as an instance of a kernel-mode group (dispatch = "kernel")',
    process.env.LISTEN_FDS, process.env.LISTEN_PID, process.pid);
  process.exit(1);
}
// Not inherited by anything this process might start.
delete process.env.LISTEN_PID;
delete process.env.LISTEN_FDS;
delete process.env.LISTEN_FDNAMES;

const id = process.env.POWERHOUSE_INSTANCE || '0';
const body = 'hello from worker ' + id + '\n';
let closing = false;

function handler(req, res) {
  const headers = { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) };
  // Draining: the client opens its next connection, which the kernel
  // steers to this instance's socket, served by the next process.
  if (closing) headers.Connection = 'close';
  res.writeHead(200, headers);
  res.end(body);
}

// One server per inherited socket (a group may listen on several
// addresses; each instance then gets one socket per address).
const servers = [];
for (let fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + nfds; fd++) {
  const s = http.createServer(handler);
  s.on('error', (err) => {
    console.error('nodeworker: descriptor %d: %s', fd, err.message);
    process.exit(1);
  });
  // Node calls listen(2) again on the socket; its default backlog (511)
  // would shrink the queue systemd made (Backlog=, SOMAXCONN by default),
  // which is what holds connections while the instance restarts. The
  // kernel caps this at net.core.somaxconn.
  s.listen({ fd, backlog: 65535 });
  servers.push(s);
}

process.on('SIGTERM', () => {
  if (closing) return;
  closing = true;
  let open = servers.length;
  for (const s of servers) {
    // close() stops accepting and calls back once the last connection is
    // gone; idle kept-alive connections would hold it open until their
    // timeout, so they are closed now (Node 18.2+; 19+ does it in close()).
    s.close(() => { if (--open === 0) process.exit(0); });
    if (typeof s.closeIdleConnections === 'function') s.closeIdleConnections();
  }
});
