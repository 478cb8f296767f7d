#!/bin/sh
# A crash-test workload on flushvm's workload protocol (protocol/workload.go),
# as a user would write one: flushvm crashtest runs it in the file system
# under test and notes each "ACK KEY" line it prints.
#
# Each record is a file r<N> holding "record <N>", created the durable way:
# write a temporary file, fsync it, rename it into place, fsync the
# directory; only then is the record acknowledged.
#
# Usage: workload.sh [RECORDS] [nodirsync]
#   nodirsync  skip the directory fsync: the bug the checker must catch
#              (the rename may not survive a power cut)
set -e
n=${1:-20}
i=1
while [ "$i" -le "$n" ]; do
	printf 'record %d\n' "$i" >"r$i.tmp"
	sync "r$i.tmp"
	mv "r$i.tmp" "r$i"
	if [ "$2" != nodirsync ]; then
		sync .
	fi
	echo "ACK r$i"
	i=$((i + 1))
done
