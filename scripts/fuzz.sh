#!/usr/bin/env bash
# Runs every Go fuzz target in the module for $FUZZTIME each (default 3s).
# Targets are discovered with `go test -list`, so new Fuzz* functions are
# picked up without editing this script.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-3s}
n=0
for pkg in $(go list ./... | grep -v /integration); do
	# -list prints matching names, then "ok pkg"; keep only Fuzz names.
	targets=$(go test -run '^$' -list '^Fuzz' "$pkg" | grep '^Fuzz' || true)
	for t in $targets; do
		echo "fuzz: $pkg $t for $fuzztime"
		go test -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" "$pkg"
		n=$((n + 1))
	done
done
echo "fuzz: ran $n targets for $fuzztime each"
