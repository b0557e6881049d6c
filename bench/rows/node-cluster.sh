#!/usr/bin/env bash
# node-cluster (optional row): Node's cluster module, round-robin, 2 Node
# workers, not sticky (../shared/bench/node/cluster.js, unchanged).
set -euo pipefail
exec node "$BENCH_PEERS/node/cluster.js" "$1" 2
