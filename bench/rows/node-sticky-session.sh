#!/usr/bin/env bash
# node-sticky-session: npm sticky-session 1.1.2 (indutny), 2 Node workers;
# the primary hashes the client IP and passes the handle over cluster IPC
# (../shared/bench/node/sticky-session.js, unchanged). Node workers, not hello.
set -euo pipefail
exec node "$BENCH_PEERS/node/sticky-session.js" "$1" 2
