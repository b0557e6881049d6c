#!/usr/bin/env bash
# socket-proxyd: systemd-socket-proxyd (systemd's own TCP proxy), socket-
# activated by systemd-socket-activate on PORT, in front of ONE
# examples/hello on PORT+1 (it has no balancing). In the data path.
set -euo pipefail
PORT=$1
POWERHOUSE_GROUP=proxyd POWERHOUSE_INSTANCE=1 POWERHOUSE_LISTEN=127.0.0.1:$((PORT+1)) "$BENCH_BIN/hello" &
exec /usr/bin/systemd-socket-activate -l "127.0.0.1:$PORT" \
    /lib/systemd/systemd-socket-proxyd --connections-max=4096 "127.0.0.1:$((PORT+1))"
