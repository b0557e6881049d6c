#!/usr/bin/env bash
# powerhouse-sticky: the real sticky dispatcher (package sticky, as the
# systemd supervisor runs it) in front of 2 examples/hello instances:
# `powerhouse run` accepts on PORT, picks the instance by rendezvous hash of
# the client address and hands the fd over with SCM_RIGHTS. This process
# (exec'd) is the dispatcher; its children are the workers.
set -euo pipefail
PORT=$1
export TMPDIR=$BENCH_TMP   # powerhouse run's hand-off sockets go there
exec "$BENCH_BIN/powerhouse" run --listen "127.0.0.1:$PORT" --instances 2 -- "$BENCH_BIN/hello"
