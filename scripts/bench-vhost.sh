#!/bin/sh
# bench-vhost.sh: flushvm vhost-user-blk against qemu-storage-daemon's
# vhost-user-blk export and QEMU's built-in virtio-blk, same QEMU TCG guest,
# same host file, same fio jobs (see cmd/benchvhost). Prints the table
# and writes build/bench-vhost/bench-vhost.{csv,svg}.
#
#   scripts/bench-vhost.sh [-reps N] [-runtime SECONDS] [-backends flushvm,qsd,qemu]
#
# Runs niced: the machine is shared.
set -eu
cd "$(dirname "$0")/.."
exec nice -n 10 go run ./cmd/benchvhost "$@"
