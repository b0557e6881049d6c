#!/usr/bin/env bash
# direct: the physical-limit reference. 2 examples/hello processes, each with
# its own listening socket on PORT bound with SO_REUSEPORT (bench/reuseport
# passes it as systemd would, LISTEN_FDS=1): the kernel spreads connections
# over them by 4-tuple hash; nothing sits in front of them.
set -euo pipefail
PORT=$1
exec "$BENCH_BIN/reuseport" -listen "127.0.0.1:$PORT" -n 2 -- "$BENCH_BIN/hello"
