#!/usr/bin/env bash
# Runs every Go fuzz target in the module for $FUZZTIME each (default 3s;
# `make test` passes an execution count such as 2000x: with a duration,
# Go 1.26's coordinator can fail a target with "context deadline exceeded"
# at the deadline, go.dev/issue/75804).
# Targets are discovered with `go test -list`, so new Fuzz* functions are
# picked up without editing this script.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-3s}
# Cap the minimisation of each new crasher or interesting input at 10s
# (the default is 60s per input). Go's minimiser retries the input with
# every byte and every range removed, so its work grows quadratically with
# the input's length, and while it runs the progress line shows 0 execs/s:
# on our long inputs (indirect tables, write logs) it ate most of a short
# run (golang/go#51484). A less minimal input is still a valid one.
minimize=10s
n=0
for pkg in $(go list ./... | grep -v /integration); do
	# -list prints matching names, then "ok pkg"; keep only Fuzz names.
	targets=$(go test -run '^$' -list '^Fuzz' "$pkg" | grep '^Fuzz' || true)
	for t in $targets; do
		echo "fuzz: $pkg $t for $fuzztime"
		go test -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" -fuzzminimizetime "$minimize" "$pkg"
		n=$((n + 1))
	done
done
echo "fuzz: ran $n targets for $fuzztime each"
