#!/usr/bin/env bash
# haproxy-source: HAProxy TCP mode, balance source + hash-type consistent
# (../shared/bench/haproxy/source.cfg), in front of 2 examples/hello on
# PORT+1 and PORT+2. HAProxy stays in the data path. Exec'd last, so the
# row's lead process is HAProxy itself.
set -euo pipefail
PORT=$1
POWERHOUSE_GROUP=haproxy POWERHOUSE_INSTANCE=1 POWERHOUSE_LISTEN=127.0.0.1:$((PORT+1)) "$BENCH_BIN/hello" &
POWERHOUSE_GROUP=haproxy POWERHOUSE_INSTANCE=2 POWERHOUSE_LISTEN=127.0.0.1:$((PORT+2)) "$BENCH_BIN/hello" &
export FE_PORT=$PORT W0_PORT=$((PORT+1)) W1_PORT=$((PORT+2))
exec haproxy -db -f "$BENCH_PEERS/haproxy/source.cfg"
