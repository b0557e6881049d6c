#!/usr/bin/env bash
# fdpass-prototype (optional row): the shared harness's ~140-line bench-only
# fd-passing prototype (../shared/bench/go/cmd/fdpass) with its own Go
# workers. Not PowerHouse code; shows what the bare idea costs.
set -euo pipefail
exec "$BENCH_PEERS/rows/fdpass-prototype.sh" "$1"
