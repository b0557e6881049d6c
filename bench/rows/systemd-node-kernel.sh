#!/usr/bin/env bash
# systemd-node-kernel: the Node peers' worker behind PowerHouse. The same
# 2 Node workers as node-sticky-session and node-socketio-sticky run
# (examples/nodeworker/server.js: Node's http module only, answering
# "hello from worker N" like ../shared/bench/node/*.js), as the instances
# of a kernel-mode group (bench/rows/systemd-node-kernel.toml) under a
# private systemd (bench/sdrow, like systemd-house): the kernel steers
# each connection by the client's address, nothing hands connections over
# in user space.
# With "reference" as $2 (bench/rows/systemd-node-reference.sh) it runs
# the same 2 Node workers sharing the port by plain SO_REUSEPORT instead
# (bench/reuseport, as systemd-reference runs hello), in the same kind of
# box with the same worker sandbox: nothing in front, not sticky.
# Needs node under /usr: the box shares the host's /usr, not the rest of
# its tree.
set -euo pipefail
node=$(command -v node) || { echo "$(basename "$0"): node is not installed (apt-get install nodejs)" >&2; exit 1; }
node=$(readlink -f "$node")
[[ $node == /usr/* ]] || { echo "$(basename "$0"): node is $node; the box's workers see only the host's /usr" >&2; exit 1; }
rows=$(cd "$(dirname "$0")" && pwd)
# The worker goes where the box sees the binaries (sdrow binds $BENCH_BIN).
cp "$rows/../../examples/nodeworker/server.js" "$BENCH_BIN/nodeworker.js"
cfg=${BENCH_TMP:-$(mktemp -d)}/systemd-node-kernel-$1.toml
sed "s|@NODE@|$node|" "$rows/systemd-node-kernel.toml" > "$cfg"
case ${2:-house} in
  house) exec "$BENCH_BIN/sdrow" -port "$1" -config "$cfg" house ;;
  reference) exec "$BENCH_BIN/sdrow" -port "$1" -config "$cfg" -n 2 -worker "$node @BIN@/nodeworker.js" reference ;;
  *) echo "$(basename "$0"): mode $2: want house or reference" >&2; exit 2 ;;
esac
