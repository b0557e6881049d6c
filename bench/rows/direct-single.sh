#!/usr/bin/env bash
# direct-single (optional row): ONE examples/hello process listening on PORT
# itself (the shared harness's "direct").
set -euo pipefail
POWERHOUSE_GROUP=single POWERHOUSE_INSTANCE=1 POWERHOUSE_LISTEN=127.0.0.1:$1 exec "$BENCH_BIN/hello"
