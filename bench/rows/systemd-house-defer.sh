#!/usr/bin/env bash
# systemd-house-defer: systemd-house (source affinity) with DeferAcceptSec=1
# on its public socket (a drop-in; the generator sets it only for key
# affinities): does TCP_DEFER_ACCEPT also save the source path anything?
# (docs/BENCHMARKS.md, "Key affinity under systemd").
set -euo pipefail
exec "$BENCH_BIN/sdrow" -port "$1" -config "$(dirname "$0")/systemd-house.toml" -socket-extra 'DeferAcceptSec=1' house
