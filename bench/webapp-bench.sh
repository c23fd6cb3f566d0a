#!/usr/bin/env bash
# webapp-bench.sh: time the launcher's web app listings on 10,000 nodes and
# 1,000 requests: curl's total time per endpoint, each answer made afresh
# (a request every 1.1 s, past the one-second cache; median of 5) and
# served from that cache (median of 5 at once after), as text and JSON,
# and the launcher's CPU time per fresh answer (user + system over the 5,
# from /proc; steadier than wall times on a busy machine).
# Prints, never asserts. Starts its own ZooKeeper (TLS) and launcher and
# stops them at the end; the launcher's provider serves another label, so
# it leaves the nodes alone and declines the requests.
#
# usage: bench/webapp-bench.sh [BUILD_DIR]   (default: build)
#  env:  NODES (10000), REQUESTS (1000), KEEP=1 keeps the answers in
#        $WORK/answers (printed) for comparing two builds
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
NODES=${NODES:-10000}
REQUESTS=${REQUESTS:-1000}
. tests/harness/lib.sh

WORK=$(mktemp -d /tmp/np-webapp-bench.XXXXXX)
LPID=
cleanup() {
	[ -n "$LPID" ] && kill -INT "$LPID" 2>/dev/null && wait "$LPID"
	zk_stop "$WORK/zk" "${ZK_PORT:-0}"
	if [ "${KEEP:-0}" = 1 ]; then
		echo "answers kept in $WORK/answers"
		rm -rf "$WORK/zk"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT INT TERM

zk_start "$WORK/zk" || { echo "could not start ZooKeeper"; exit 1; }
TLS="$WORK/zk/tls"
PORT=$(free_port)
{ zk_yaml /bench; cat <<YAML; } >"$WORK/nodepool.yaml"
webapp:
  port: $PORT
  listen_address: 127.0.0.1
labels:
  - name: other
providers:
  - name: fake-bench
    cloud: fake
    cloud-images:
      - name: fake-image
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: 1
        labels:
          - name: other
            cloud-image: fake-image
            min-ram: 1024
YAML

/usr/bin/python3 bench/populate.py "127.0.0.1:$ZK_TLS_PORT" "$TLS/ca.pem" \
	"$TLS/client.pem" "$TLS/client.key" /bench "$NODES" "$REQUESTS" || exit 1
"$BUILD/nodepool-launcher" -f -c "$WORK/nodepool.yaml" >"$WORK/launcher.log" 2>&1 &
LPID=$!
for _ in $(seq 600); do
	curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
	sleep 0.1
done
# let the launcher decline the requests first
sleep 5
echo "$NODES nodes, $REQUESTS requests; $BUILD/nodepool-launcher"
mkdir -p "$WORK/answers"

median() { sort -n | sed -n 3p; }
# the launcher's user + system CPU time so far, in ms
cpu_ms() {
	awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) * 1000 / hz }' \
		"/proc/$LPID/stat"
}

# get PATH ACCEPT: one answer's total time in ms (the body kept)
get() {
	curl -s -o "$WORK/answers/$3" -w '%{time_total}\n' -H "Accept: $2" \
		"http://127.0.0.1:$PORT$1" | awk '{ printf "%.1f\n", $1 * 1000 }'
}

printf '%-16s %-5s %9s %10s %7s %8s\n' endpoint format "fresh ms" "cached ms" "CPU ms" bytes
for path in /node-list /request-list /label-list /image-list \
	    /dib-image-list /image-status; do
	for fmt in text json; do
		accept=text/plain
		[ $fmt = json ] && accept=application/json
		name=$(echo "$path" | tr -d /).$fmt
		c0=$(cpu_ms)
		fresh=$(for _ in 1 2 3 4 5; do sleep 1.1; get "$path" "$accept" "$name"; done | median)
		c1=$(cpu_ms)
		cached=$(for _ in 1 2 3 4 5; do get "$path" "$accept" "$name.c"; done | median)
		printf '%-16s %-5s %9s %10s %7s %8s\n' "$path" $fmt "$fresh" "$cached" \
			"$(echo "($c1 - $c0) / 5" | bc)" "$(wc -c <"$WORK/answers/$name")"
	done
done
