#!/usr/bin/env bash
# systemd-reference: the fair reference of the systemd rows. The same kind
# of private systemd as systemd-house; in it `bench/reuseport -n 2 -- hello`
# (2 examples/hello sharing PORT with SO_REUSEPORT, nothing in front) runs
# as a transient service (systemd-run) with the user and sandboxing of the
# worker unit that systemd-house.toml generates, so both rows pay the same
# cgroup, namespace and seccomp costs. The systemd rows' ratios are taken
# against it.
set -euo pipefail
exec "$BENCH_BIN/sdrow" -port "$1" -config "$(dirname "$0")/systemd-house.toml" -n 2 reference
