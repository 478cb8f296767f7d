#!/usr/bin/env bash
# Runs every Go fuzz target in the module (as scripts/fuzz.sh finds them)
# until it has done $FUZZ_LONG_EXECS executions or run for $FUZZ_LONG_TIME,
# whichever comes first, then prints one summary row per target: status,
# time, executions, execs/s, new interesting inputs and corpus growth, all
# parsed from go test's fuzz progress lines.
#
#   FUZZ_LONG_EXECS    executions per target (default 10000000)
#   FUZZ_LONG_TIME     time budget per target, timeout(1) syntax (default 30m)
#   FUZZ_LONG_TARGETS  regexp: only "pkg/Target" names matching it (default all)
#   FUZZ_LONG_OUT      directory for each target's full log and summary.txt
#                      (default build/fuzz-long)
#
# A target that reaches the time budget is stopped with SIGINT, which go
# test's fuzzer handles by stopping cleanly; that is not a failure. Exits 1
# if any target found a failure (its input is then in the package's
# testdata/fuzz/, as go test says in the log).
set -uo pipefail
cd "$(dirname "$0")/.."
execs=${FUZZ_LONG_EXECS:-10000000}
budget=${FUZZ_LONG_TIME:-30m}
filter=${FUZZ_LONG_TARGETS:-.}
out=${FUZZ_LONG_OUT:-build/fuzz-long}
# Minimisation of each new input is capped at 10s (default 60s): Go's
# minimiser is quadratic in the input's length and shows as 0 execs/s
# while it runs, which is how FuzzPop and FuzzWriteLogReplay stalled on
# their long inputs (golang/go#51484). The cap bounds each stall; the
# input kept is still interesting, only less minimal.
minimize=10s
mkdir -p "$out"

# summarize LOG: prints "elapsed execs new start end" from the last
# progress line and the baseline line of a go test -fuzz log.
summarize() {
	awk '
	/gathering baseline coverage: [0-9]+\/[0-9]+ completed/ {
		split($0, a, "coverage: "); split(a[2], b, "[/ ]"); start = b[2]
	}
	/fuzz: elapsed: .*execs: [0-9]+/ {
		line = $0
	}
	END {
		el = ex = ni = tot = "?"
		if (line != "") {
			if (match(line, /elapsed: [^,]+/)) el = substr(line, RSTART + 9, RLENGTH - 9)
			if (match(line, /execs: [0-9]+/)) ex = substr(line, RSTART + 7, RLENGTH - 7)
			if (match(line, /new interesting: [0-9]+/)) ni = substr(line, RSTART + 17, RLENGTH - 17)
			if (match(line, /total: [0-9]+/)) tot = substr(line, RSTART + 7, RLENGTH - 7)
		}
		if (start == "") start = "?"
		print el, ex, ni, start, tot
	}' "$1"
}

# seconds DURATION: a Go duration as printed by the fuzzer (1m0s, 3s, 1h2m3s) in seconds.
seconds() {
	awk -v d="$1" 'BEGIN {
		s = 0; n = ""
		for (i = 1; i <= length(d); i++) {
			c = substr(d, i, 1)
			if (c ~ /[0-9.]/) { n = n c; continue }
			if (c == "h") s += n * 3600; else if (c == "m") s += n * 60; else if (c == "s") s += n
			n = ""
		}
		print s
	}'
}

rows=()
failed=0
for pkg in $(go list ./... | grep -v /integration); do
	targets=$(go test -run '^$' -list '^Fuzz' "$pkg" | grep '^Fuzz' || true)
	for t in $targets; do
		name="${pkg#*/flushvm/flushvm/}/$t"
		[[ "$name" =~ $filter ]] || continue
		log="$out/$(echo "$name" | tr '/' '_').log"
		echo "fuzz-long: $name: up to $execs execs or $budget"
		timeout -s INT -k 60s "$budget" \
			go test -run '^$' -fuzz "^${t}\$" -fuzztime "${execs}x" -fuzzminimizetime "$minimize" -timeout 0 "$pkg" 2>&1 | tee "$log"
		rc=${PIPESTATUS[0]}
		status=ok
		if [ "$rc" -eq 124 ]; then
			status=time
		elif [ "$rc" -ne 0 ] || grep -q -- '^--- FAIL' "$log"; then
			status=FAIL
		fi
		if [ "$status" = time ] && grep -q -- '^--- FAIL' "$log"; then
			status=FAIL
		fi
		[ "$status" = FAIL ] && failed=1
		read -r el ex ni start tot < <(summarize "$log")
		secs=$(seconds "$el")
		rate="?"
		if [[ "$ex" =~ ^[0-9]+$ ]] && awk -v s="$secs" 'BEGIN { exit !(s > 0) }'; then
			rate=$(awk -v e="$ex" -v s="$secs" 'BEGIN { printf "%d", e / s }')
		fi
		rows+=("$(printf '%-36s %-6s %9s %12s %9s %8s %5s -> %-5s' "$name" "$status" "$el" "$ex" "$rate" "$ni" "$start" "$tot")")
	done
done

{
	echo
	echo "fuzz-long summary (goal: $execs execs per target, budget $budget each; status time = budget reached first)"
	printf '%-36s %-6s %9s %12s %9s %8s %s\n' TARGET STATUS ELAPSED EXECS EXECS/S NEW CORPUS
	for r in "${rows[@]}"; do echo "$r"; done
} | tee "$out/summary.txt"
exit $failed
