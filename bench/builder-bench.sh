#!/usr/bin/env bash
# builder-bench.sh: the time from `nodepool image-build IMG` to the build
# process starting, N times (min, median, max); prints, never asserts.
#
# A nodepool-builder (one build worker, upstream's 10 s pass interval, so
# only its watch on /nodepool/images can start a build sooner) builds one
# image with the project's fake dib-cmd, which appends its start time
# (CLOCK_REALTIME: bash's EPOCHREALTIME, its first command) to a record
# file.
# Each round takes the time just before running the CLI, runs
# `nodepool image-build img`, waits for the new start record, then for the
# build to end (the request gone) before the next round. Two figures:
# from starting the CLI (its own start-up, TLS connection and the znode
# included) and from the CLI's exit (the builder's part alone; negative
# when the build started before the CLI had exited).
# Starts its own ZooKeeper (TLS) and stops it at the end.
#
# usage: bench/builder-bench.sh [BUILD_DIR]   (default: build)
#  env:  N (20 rounds)
set -uo pipefail
export LC_ALL=C	# EPOCHREALTIME with a dot
cd "$(dirname "$0")/.."
TOP=$(pwd)
BUILD=${1:-build}
N=${N:-20}
. tests/harness/lib.sh

WORK=$(mktemp -d /tmp/np-builder-bench.XXXXXX)
BPID=
cleanup() {
	if [ -n "$BPID" ]; then
		kill -INT "$BPID" 2>/dev/null
		wait "$BPID" 2>/dev/null
	fi
	zk_stop "$WORK/zk" "${ZK_PORT:-0}"
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

zk_start "$WORK/zk" || { echo "could not start ZooKeeper"; exit 1; }
mkdir -p "$WORK/elements/fake-base"
REC="$WORK/dib.rec"
{ zk_yaml /bench; cat <<YAML; } >"$WORK/nodepool.yaml"
images-dir: $WORK/images
build-log-dir: $WORK/logs
elements-dir: $WORK/elements
labels: []
providers: []
diskimages:
  - name: img
    dib-cmd: $TOP/tests/fixtures/dib/fake-dib-cmd
    elements: [fake-base]
    formats: [raw]
    rebuild-age: 864000
    env-vars:
      FAKE_DIB_RECORD: $REC
YAML
NP=("$TOP/$BUILD/nodepool" -c "$WORK/nodepool.yaml")

"$TOP/$BUILD/nodepool-builder" -f -c "$WORK/nodepool.yaml" -p "$WORK/pid" \
	>"$WORK/builder.log" 2>&1 &
BPID=$!

lines() { [ -f "$REC" ] && wc -l <"$REC" || echo 0; }
# wait_until SECONDS CMD...: poll CMD every 20 ms; false on timeout
wait_until() {
	local end=$(( $(date +%s) + $1 )); shift
	until "$@"; do
		[ "$(date +%s)" -ge "$end" ] && return 1
		sleep 0.02
	done
}
# The build is over when image-status shows no request and the last
# build is not building.
idle() {
	local st
	st=$("${NP[@]}" image-status 2>/dev/null | awk -F'|' '$2 ~ /img/ {
		gsub(/ /, "", $4); print $4 }')
	[ -z "$st" ] && ! "${NP[@]}" dib-image-list 2>/dev/null | grep -q building
}
have() { [ "$(lines)" -ge "$1" ]; }

# The first build happens by itself (no ready build yet).
wait_until 120 have 1 || { echo "the first build never started"; tail "$WORK/builder.log"; exit 1; }
wait_until 120 idle || { echo "the first build never ended"; exit 1; }

: >"$WORK/from_cli"
: >"$WORK/after_cli"
for i in $(seq 1 "$N"); do
	want=$(( $(lines) + 1 ))
	t0=$EPOCHREALTIME
	"${NP[@]}" image-build img || { echo "image-build failed"; exit 1; }
	t1=$EPOCHREALTIME
	wait_until 60 have "$want" || { echo "round $i: no build started"; exit 1; }
	ts=$(sed -n "${want}p" "$REC" | cut -d' ' -f1)
	echo "($ts - $t0) * 1000" | bc -l >>"$WORK/from_cli"
	echo "($ts - $t1) * 1000" | bc -l >>"$WORK/after_cli"
	wait_until 120 idle || { echo "round $i: the build never ended"; exit 1; }
done

# stats FILE: min p50 max of the numbers in FILE
stats() {
	sort -g "$1" | awk '{ v[NR] = $1 } END {
		printf "min %7.1f ms   p50 %7.1f ms   max %7.1f ms\n",
		       v[1], v[int((NR + 1) / 2)], v[NR] }'
}
echo "nodepool image-build -> build process started, $N rounds ($(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg)):"
printf '  from starting the CLI:  %s\n' "$(stats "$WORK/from_cli")"
printf '  from the CLI'\''s exit:   %s\n' "$(stats "$WORK/after_cli")"
echo "  upstream (a BuildWorker polls for requests every 10 s): up to 10000 ms, 5000 ms on average, plus the CLI"
