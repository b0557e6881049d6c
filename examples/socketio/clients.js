// clients.js: socket.io clients for examples/socketio, the way a crowd
// behind one NAT would come: every client from this host's one address,
// long-polling only (transports: ["polling"]), and a new TCP connection for
// every request (agent: false, so no keep-alive: Node's global agent
// would otherwise reuse connections), which is what makes each poll a
// fresh routing decision for the dispatcher.
//
//   NODE_PATH=DIR/node_modules node clients.js URL [CLIENTS] [SECONDS]
//
// Each client connects, then asks "whoami" (with an acknowledgement) every
// 100 ms for SECONDS seconds, and disconnects. Reconnection is off, so a
// lost session ("Session ID unknown", a 400 on a poll) ends the client
// with its error instead of being papered over by a new session. It prints
// one JSON object on standard output:
//
//   {"clients": [{"sids": [...], "instances": [...], "pids": [...],
//                 "answers": N, "errors": ["..."]}, ...],
//    "requests": N}
//
// sids, instances and pids are the distinct values the client's answers
// carried; errors are connection errors, disconnections the client did not
// ask for (with the server's response when there was one), and failed
// acknowledgements. It exits 0 whenever it could run, whatever it saw:
// judging is the caller's business.
"use strict";
const { io } = require("socket.io-client");

const url = process.argv[2];
const count = Number(process.argv[3] || 50);
const seconds = Number(process.argv[4] || 3);
if (!url || !(count > 0 && count <= 1000) || !(seconds > 0 && seconds <= 60)) {
  console.error("usage: node clients.js URL [CLIENTS (1..1000)] [SECONDS (0..60)]");
  process.exit(2);
}

// describe turns what socket.io-client gives on an error (an Error, a
// TransportError whose context is the XMLHttpRequest of the failed poll)
// into one line that keeps the server's answer ("Session ID unknown").
function describe(what, err) {
  if (err === undefined || err === null) return what;
  // A disconnection's details are a plain object ({description,
  // context}), an Error has a message, anything else is printed as is.
  let s = what;
  if (err.message) s += ": " + err.message;
  else if (typeof err !== "object") s += ": " + String(err);
  if (err.description !== undefined) s += " (" + String(err.description) + ")";
  const body = err.context && err.context.responseText;
  if (body) s += " " + String(body).slice(0, 200);
  return s;
}

function runClient() {
  return new Promise((resolve) => {
    const r = { sids: new Set(), instances: new Set(), pids: new Set(), answers: 0, errors: [] };
    const socket = io(url, {
      transports: ["polling"],
      agent: false,
      reconnection: false,
      forceNew: true,
      timeout: 10000,
    });
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearInterval(timer);
      socket.close();
      resolve({
        sids: [...r.sids], instances: [...r.instances], pids: [...r.pids],
        answers: r.answers, errors: r.errors,
      });
    };
    let timer;
    socket.on("connect_error", (err) => { r.errors.push(describe("connect_error", err)); finish(); });
    socket.on("disconnect", (reason, details) => {
      if (reason !== "io client disconnect") {
        r.errors.push(describe("disconnect: " + reason, details));
        finish();
      }
    });
    socket.on("connect", () => {
      const end = Date.now() + seconds * 1000;
      let inFlight = false;
      timer = setInterval(async () => {
        if (Date.now() >= end) return finish();
        if (inFlight) return;
        inFlight = true;
        try {
          const a = await socket.timeout(10000).emitWithAck("whoami");
          r.answers++;
          r.sids.add(a.sid);
          r.instances.add(a.group + "@" + a.instance);
          r.pids.add(a.pid);
        } catch (err) {
          r.errors.push(describe("whoami", err));
        }
        inFlight = false;
      }, 100);
    });
  });
}

(async () => {
  const clients = await Promise.all(Array.from({ length: count }, runClient));
  const requests = clients.reduce((n, c) => n + c.answers, 0);
  process.stdout.write(JSON.stringify({ clients, requests }) + "\n");
})();
