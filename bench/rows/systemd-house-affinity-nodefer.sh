#!/usr/bin/env bash
# systemd-house-affinity-nodefer: systemd-house-affinity without the
# DeferAcceptSec=1 that the generator gives a key-affinity group's public
# socket (a drop-in sets it back to 0): what TCP_DEFER_ACCEPT saves the
# supervisor (docs/BENCHMARKS.md, "Key affinity under systemd").
# bench-loadgen: -query-key sid
set -euo pipefail
exec "$BENCH_BIN/sdrow" -port "$1" -config "$(dirname "$0")/systemd-house.toml" \
  -worker-extra 'affinity = "query:sid"' -socket-extra 'DeferAcceptSec=0' house
