#!/usr/bin/env bash
# systemd-node-reference: systemd-node-kernel's 2 Node workers sharing the
# port by plain SO_REUSEPORT (bench/reuseport -n 2 -- node server.js),
# nothing in front, in the same kind of private systemd with the same
# worker sandbox: what systemd-node-kernel costs over the bare Node
# workers (the systemd rows' ratios are against systemd-reference, hello).
exec "$(dirname "$0")/systemd-node-kernel.sh" "$1" reference
