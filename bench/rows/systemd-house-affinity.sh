#!/usr/bin/env bash
# systemd-house-affinity: systemd-house with a key affinity (issue 15):
# the supervisor peeks each connection's request head for the query
# parameter "sid" (recv MSG_PEEK, never consuming a byte) and routes by a
# rendezvous hash of it instead of the client's address. The load
# generator sends a key fixed per source address (/?sid=k0, /?sid=k1, ...;
# the line below, which bench/run.sh passes to loadgen), so the row is
# deterministic and sticky per source. Its front CPU per connection less
# systemd-house's is the peek's cost.
# bench-loadgen: -query-key sid
exec "$(dirname "$0")/systemd-house.sh" "$1" 'affinity = "query:sid"'
