#!/usr/bin/env bash
# systemd-house: the real deployment. A private systemd (internal/sdbox,
# sharing the host's network) in which `powerhouse install --now` installs
# bench/rows/systemd-house.toml: the generated units, powerhouse.target,
# the sticky group's supervisor (accepts on PORT, hands each connection to
# one of 2 examples/hello instances) running as users run it. bench/sdrow
# boots the box, writes the host PIDs of the supervisor (front) and of the
# instances (workers) to $BENCH_PIDS, and powers the box off on SIGTERM.
# A variant is one small file: exec this script with TOML lines for the
# group as $2 (see systemd-house-kernel.sh once kernel mode exists), e.g.
#   exec "$(dirname "$0")/systemd-house.sh" "$1" 'dispatch = "kernel"'
set -euo pipefail
exec "$BENCH_BIN/sdrow" -port "$1" -config "$(dirname "$0")/systemd-house.toml" -worker-extra "${2:-}" house
