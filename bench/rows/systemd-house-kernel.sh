#!/usr/bin/env bash
# systemd-house-kernel: systemd-house in kernel mode (dispatch = "kernel"):
# each of the 2 examples/hello instances has its own listening socket in
# one SO_REUSEPORT group, activated by systemd, and the supervisor's eBPF
# program picks the instance from the client's address; the supervisor is
# out of the data path (its CPU per connection should be 0).
exec "$(dirname "$0")/systemd-house.sh" "$1" 'dispatch = "kernel"'
