#!/usr/bin/env bash
# cli-bench.sh: time `nodepool list`, `list --detail` and `request-list` on
# 10,000 nodes and 1,000 requests (wall time and peak RSS, best of 3, from
# /usr/bin/time); prints, never asserts.
# Starts its own ZooKeeper (TLS) and stops it at the end. If upstream's
# Python CLI can run here (bench/upstream-nodepool.py and its Debian
# dependencies), it is timed on the same data for comparison.
#
# usage: bench/cli-bench.sh [BUILD_DIR]   (default: build)
#  env:  NODES (10000), REQUESTS (1000)
set -uo pipefail
cd "$(dirname "$0")/.."
TOP=$(pwd)
BUILD=${1:-build}
NODES=${NODES:-10000}
REQUESTS=${REQUESTS:-1000}
. tests/harness/lib.sh

WORK=$(mktemp -d /tmp/np-cli-bench.XXXXXX)
cleanup() {
	zk_stop "$WORK/zk" "${ZK_PORT:-0}"
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

zk_start "$WORK/zk" || { echo "could not start ZooKeeper"; exit 1; }
TLS="$WORK/zk/tls"
{ zk_yaml /bench; cat <<YAML; } >"$WORK/nodepool.yaml"
labels: []
providers: []
YAML

t0=$(date +%s.%N)
/usr/bin/python3 bench/populate.py "127.0.0.1:$ZK_TLS_PORT" "$TLS/ca.pem" \
	"$TLS/client.pem" "$TLS/client.key" /bench "$NODES" "$REQUESTS" || exit 1
t1=$(date +%s.%N)
printf 'populated %d nodes, %d requests in %.1f s\n' "$NODES" "$REQUESTS" \
	"$(echo "$t1 - $t0" | bc)"

# measure NAME CMD...: best of 3 wall times, peak RSS, output line count
measure() {
	local name=$1; shift
	local best= rss= lines=
	for _ in 1 2 3; do
		/usr/bin/time -f '%e %M' -o "$WORK/time" "$@" >"$WORK/out" 2>"$WORK/err" || {
			echo "$name: failed: $(tail -1 "$WORK/err")"; return; }
		read -r wall kb <"$WORK/time"
		if [ -z "$best" ] || [ "$(echo "$wall < $best" | bc)" = 1 ]; then
			best=$wall; rss=$kb
		fi
	done
	lines=$(wc -l <"$WORK/out")
	printf '%-34s %6.2f s  %7.1f MB peak RSS  (%d lines)\n' "$name" "$best" \
		"$(echo "$rss / 1024" | bc -l)" "$lines"
}

NP="$TOP/$BUILD/nodepool"
measure "C nodepool list" "$NP" -c "$WORK/nodepool.yaml" list
measure "C nodepool list --detail" "$NP" -c "$WORK/nodepool.yaml" list --detail
measure "C nodepool request-list" "$NP" -c "$WORK/nodepool.yaml" request-list
if /usr/bin/python3 -c 'import prettytable, openstack, voluptuous' 2>/dev/null; then
	UP="bench/upstream-nodepool.py"
	measure "upstream nodepool list" /usr/bin/python3 "$UP" -c "$WORK/nodepool.yaml" list
	measure "upstream nodepool list --detail" /usr/bin/python3 "$UP" -c "$WORK/nodepool.yaml" list --detail
	measure "upstream nodepool request-list" /usr/bin/python3 "$UP" -c "$WORK/nodepool.yaml" request-list
else
	echo "upstream CLI not run: its Python dependencies are not installed" \
	     "(bench/install-upstream-deps.sh)"
fi
