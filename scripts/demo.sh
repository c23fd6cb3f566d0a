#!/usr/bin/env bash
# demo.sh: the README's "run" command. Installs what is needed, builds, and
# starts a throwaway ZooKeeper on loopback with TLS (certificates generated
# here), writes a sample nodepool.yaml pointing at it, and runs a few
# `nodepool` commands against it. Everything lives in ./run/demo.
#
# usage: scripts/demo.sh [start|stop|status]
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=$(pwd)
DEMO=$TOP/run/demo
. tests/harness/lib.sh

stop_demo() {
	if [ -f "$DEMO/zk.port" ]; then
		zk_stop "$DEMO/zk" "$(cat "$DEMO/zk.port")"
		rm -f "$DEMO/zk.port"
		echo "demo ZooKeeper stopped"
	else
		echo "no demo running"
	fi
}

write_config() {
	cat > "$DEMO/nodepool.yaml" <<YAML
# Sample nodepool.yaml written by scripts/demo.sh.
zookeeper-servers:
  - host: 127.0.0.1
    port: $ZK_TLS_PORT
    chroot: /demo
zookeeper-tls:
  ca: $DEMO/zk/tls/ca.pem
  cert: $DEMO/zk/tls/client.pem
  key: $DEMO/zk/tls/client.key

images-dir: $DEMO/images
build-log-dir: $DEMO/build-logs

labels:
  - name: debian-bookworm
    min-ready: 1
  - name: static-node
    min-ready: 0

diskimages:
  - name: debian-bookworm
    elements: [debian-minimal, vm]
    release: bookworm

providers:
  - name: fake-provider
    cloud: fake
    diskimages:
      - name: debian-bookworm
    pools:
      - name: main
        max-servers: 10
        labels:
          - name: debian-bookworm
            diskimage: debian-bookworm
            min-ram: 1024
  - name: static-hosts
    driver: static
    pools:
      - name: main
        nodes:
          - name: 127.0.0.1
            labels: [static-node]
            host-key-checking: false
YAML
}

start_demo() {
	./scripts/install-deps.sh
	make -s -j2
	mkdir -p "$DEMO/images" "$DEMO/build-logs"
	if [ -f "$DEMO/zk.port" ]; then
		echo "demo already running; stopping it first"
		stop_demo
	fi
	zk_start "$DEMO/zk"
	echo "$ZK_PORT" > "$DEMO/zk.port"
	write_config
	local np="$TOP/build/nodepool -c $DEMO/nodepool.yaml"
	echo
	echo "ZooKeeper is serving TLS on 127.0.0.1:$ZK_TLS_PORT (plaintext $ZK_PORT, data in $DEMO/zk)"
	echo "Config: $DEMO/nodepool.yaml"
	echo
	echo "\$ nodepool config-validate"
	$np config-validate && echo "(valid)"
	echo
	echo "\$ nodepool image-build debian-bookworm   # a build request for the builder"
	$np image-build debian-bookworm
	echo "\$ nodepool image-status"
	$np image-status
	echo "\$ nodepool dib-image-list"
	$np dib-image-list
	echo "\$ nodepool list"
	$np list
	echo "\$ nodepool request-list"
	$np request-list
	echo
	echo "Try: build/nodepool -c $DEMO/nodepool.yaml --help"
	echo "Stop it with: scripts/demo.sh stop"
}

case "${1:-start}" in
start) start_demo ;;
stop) stop_demo ;;
status)
	if [ -f "$DEMO/zk.port" ]; then echo "running (ZooKeeper port $(cat "$DEMO/zk.port"))"; else echo "stopped"; fi ;;
*) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
