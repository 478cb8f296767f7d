#!/bin/sh
# The checker of workload.sh on flushvm's workload protocol: it runs in the
# crashed file system after it mounted, reads the acknowledged keys (one per
# line) on its standard input, prints "LOST KEY" for each record that is
# missing or not whole, and exits 1 if any is, 0 if all are intact.
status=0
while read -r key; do
	if [ "$(cat "$key" 2>/dev/null)" != "record ${key#r}" ]; then
		echo "LOST $key"
		status=1
	fi
done
exit "$status"
