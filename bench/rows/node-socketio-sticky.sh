#!/usr/bin/env bash
# node-socketio-sticky: npm @socket.io/sticky 2.0.1, 2 Node workers, default
# least-connection (../shared/bench/node/socketio-sticky.js, unchanged).
# Its setupWorker forces "Connection: close": no keep-alive.
set -euo pipefail
exec node "$BENCH_PEERS/node/socketio-sticky.js" "$1" 2
