#!/usr/bin/env bash
# demo.sh: the README's "run" command. Installs what is needed, builds, and
# starts on loopback only:
#   - a throwaway ZooKeeper with TLS (certificates generated here);
#   - an OpenSSH server (tests/harness/sshd.sh), the one host of a static
#     provider, with host-key checking on, so its host keys are real;
#   - nodepool-launcher in the foreground mode (-f) in the background,
#     with the web app on a free port,
# with a sample nodepool.yaml: a fake-cloud label with min-ready 2 and a
# static label with min-ready 1. It waits until those nodes are ready, then
# shows `nodepool list`, the web API and `nodepool request` end to end.
# Everything lives in ./run/demo; `scripts/demo.sh stop` stops it all.
#
# usage: scripts/demo.sh [start|stop|status]
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=$(pwd)
DEMO=$TOP/run/demo
NP="$TOP/build/nodepool -c $DEMO/nodepool.yaml"
READY_WAIT=${DEMO_READY_WAIT:-120}
. tests/harness/lib.sh

# ---- stopping ----

# stop_pid FILE: SIGINT (the launcher's graceful stop), SIGKILL after 20 s.
stop_pid() {
	local f=$1 pid i
	[ -f "$f" ] || return 1
	pid=$(cat "$f")
	rm -f "$f"
	kill -INT "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 200; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

stop_demo() {
	local any=
	if stop_pid "$DEMO/launcher.pid"; then
		echo "demo launcher stopped"
		any=1
	fi
	if [ -f "$DEMO/sshd/sshd.run.pid" ]; then
		tests/harness/sshd.sh stop "$DEMO/sshd"
		echo "demo sshd stopped"
		any=1
	fi
	if [ -f "$DEMO/zk.port" ]; then
		zk_stop "$DEMO/zk" "$(cat "$DEMO/zk.port")"
		rm -f "$DEMO/zk.port"
		echo "demo ZooKeeper stopped"
		any=1
	fi
	[ -n "$any" ] || echo "no demo running"
}

# ---- starting ----

write_config() {
	local sshd_port=$1 web_port=$2 host_key user
	host_key=$(cut -d' ' -f1,2 "$DEMO/sshd/ssh_host_ed25519_key.pub")
	user=$(id -un)
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

webapp:
  port: $web_port
  listen_address: 127.0.0.1

images-dir: $DEMO/images
build-log-dir: $DEMO/build-logs

labels:
  - name: small          # served by the fake cloud
    min-ready: 2
  - name: static-node    # the loopback sshd
    min-ready: 1

diskimages:
  - name: debian-bookworm
    elements: [debian-minimal, vm]
    release: bookworm

providers:
  # A simulated OpenStack cloud (docs/drivers.md): its servers are files
  # in fake-cloud/instances/, shared with \`nodepool delete --now\`.
  - name: fake-provider
    cloud: fake
    fake:
      launch-delay: 1
      state-dir: $DEMO/fake-cloud
    cloud-images:
      - name: fake-image
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: 10
        labels:
          - name: small
            cloud-image: fake-image
            min-ram: 1024
  # One real host: the loopback sshd; its host key is checked by a scan.
  - name: static-hosts
    driver: static
    pools:
      - name: main
        nodes:
          - name: 127.0.0.1
            labels: [static-node]
            username: $user
            connection-port: $sshd_port
            host-key-checking: true
            host-key: $host_key
YAML
}

# The config's chroot: kazoo's ensure_path creates a missing chroot node,
# our ZooKeeper client does not (yet), so it is made here once (kazoo, on
# the plaintext loopback port).
make_chroot() {
	/usr/bin/python3 - "$ZK_PORT" <<'PY'
import sys
from kazoo.client import KazooClient
c = KazooClient(hosts="127.0.0.1:%s" % sys.argv[1])
c.start(timeout=30)
c.ensure_path("/demo")
c.stop()
c.close()
PY
}

# count_ready LABEL: ready nodes of LABEL in `nodepool list`.
count_ready() {
	$NP list 2>/dev/null | awk -F'|' -v l="$1" '
		{ gsub(/ /, "", $4); gsub(/ /, "", $8) }
		$4 == l && $8 == "ready" { n++ }
		END { print n + 0 }'
}

wait_min_ready() {
	local i
	echo "Waiting for the min-ready nodes (2 small, 1 static-node) ..."
	for ((i = 0; i < READY_WAIT * 2; i++)); do
		if [ "$(count_ready small)" -ge 2 ] &&
		   [ "$(count_ready static-node)" -ge 1 ]; then
			return 0
		fi
		if ! kill -0 "$(cat "$DEMO/launcher.pid")" 2>/dev/null; then
			echo "the launcher exited; its log:" >&2
			tail -20 "$DEMO/launcher.log" >&2
			return 1
		fi
		sleep 0.5
	done
	echo "min-ready nodes not ready after ${READY_WAIT}s; launcher log:" >&2
	tail -20 "$DEMO/launcher.log" >&2
	return 1
}

# http_get PATH: what curl -H 'Accept: application/json' prints (Python's
# urllib where curl is not installed).
http_get() {
	local url="http://127.0.0.1:$WEB_PORT$1"
	echo "\$ curl -s -H 'Accept: application/json' $url"
	if command -v curl >/dev/null; then
		curl -s -H 'Accept: application/json' "$url"
	else
		/usr/bin/python3 -c 'import sys, urllib.request as u
r = u.Request(sys.argv[1], headers={"Accept": "application/json"})
sys.stdout.write(u.urlopen(r, timeout=10).read().decode())' "$url"
	fi
	echo
}

start_launcher() {
	# Job control: the launcher gets its own process group and SIGINT at
	# its default (a script's background jobs would ignore it, and SIGINT
	# is the launcher's graceful stop).
	set -m
	"$TOP/build/nodepool-launcher" -f -c "$DEMO/nodepool.yaml" \
		</dev/null >"$DEMO/launcher.log" 2>&1 &
	echo $! > "$DEMO/launcher.pid"
	set +m
}

show() {
	echo
	echo "\$ nodepool $*"
	$NP "$@"
}

start_demo() {
	local sshd_info sshd_port
	./scripts/install-deps.sh
	make -s -j2
	if [ -f "$DEMO/zk.port" ] || [ -f "$DEMO/launcher.pid" ] ||
	   [ -f "$DEMO/sshd/sshd.run.pid" ]; then
		echo "demo already running; stopping it first"
		stop_demo
	fi
	# A fresh tree and cloud each time (the sshd keeps its host keys).
	rm -rf "$DEMO/zk" "$DEMO/fake-cloud" "$DEMO/launcher.log"
	mkdir -p "$DEMO/images" "$DEMO/build-logs" "$DEMO/fake-cloud"
	zk_start "$DEMO/zk"
	echo "$ZK_PORT" > "$DEMO/zk.port"
	make_chroot
	sshd_info=$(tests/harness/sshd.sh start "$DEMO/sshd" 127.0.0.1)
	sshd_port=$(echo "$sshd_info" | cut -d' ' -f2)
	WEB_PORT=$(free_port)
	write_config "$sshd_port" "$WEB_PORT"
	echo
	echo "ZooKeeper: TLS on 127.0.0.1:$ZK_TLS_PORT (data in $DEMO/zk)"
	echo "sshd:      127.0.0.1:$sshd_port (keys and log in $DEMO/sshd)"
	echo "Config:    $DEMO/nodepool.yaml"
	show config-validate && echo "(valid)"
	start_launcher
	echo
	echo "Launcher:  pid $(cat "$DEMO/launcher.pid"), log $DEMO/launcher.log, web app http://127.0.0.1:$WEB_PORT/"
	wait_min_ready
	show list
	echo
	http_get /node-list
	http_get /label-list
	echo
	echo "# As Zuul: request, lock, in-use, used, unlock (the launcher deletes it)"
	show request small
	login_held "$sshd_port"
	show list
	show image-build debian-bookworm
	show image-status
	echo
	echo "Try:  build/nodepool -c $DEMO/nodepool.yaml --help"
	echo "      build/nodepool -c $DEMO/nodepool.yaml request small small --hold"
	echo "      build/nodepool -c $DEMO/nodepool.yaml delete --now ID"
	echo "      tail -f $DEMO/launcher.log"
	echo "Stop it with: scripts/demo.sh stop"
}

# A static node held for us, logged in to with the host keys the launcher
# scanned, then deleted at once by the CLI (the slot comes back).
login_held() {
	local port=$1 user held
	user=$(id -un)
	echo
	echo "# --hold: the node stays ours; its host keys become a known_hosts file"
	echo "\$ nodepool request --hold static-node"
	$NP request --hold static-node | tee "$DEMO/request.out"
	grep '^\[' "$DEMO/request.out" > "$DEMO/known_hosts" || true
	held=$(awk -F'|' 'NR == 4 { gsub(/ /, "", $2); print $2 }' \
		"$DEMO/request.out")
	echo
	echo "\$ ssh -o UserKnownHostsFile=$DEMO/known_hosts -o StrictHostKeyChecking=yes \\"
	echo "      -i $DEMO/sshd/client_key -p $port $user@127.0.0.1 hostname"
	ssh -o BatchMode=yes -o UserKnownHostsFile="$DEMO/known_hosts" \
		-o StrictHostKeyChecking=yes -i "$DEMO/sshd/client_key" \
		-p "$port" "$user@127.0.0.1" hostname || echo "(ssh failed)"
	show delete --now "$held"
}

status_demo() {
	if [ -f "$DEMO/launcher.pid" ] && kill -0 "$(cat "$DEMO/launcher.pid")" 2>/dev/null; then
		echo "launcher: running (pid $(cat "$DEMO/launcher.pid"))"
	else
		echo "launcher: stopped"
	fi
	if [ -f "$DEMO/sshd/sshd.run.pid" ]; then
		echo "sshd: running ($(cat "$DEMO/sshd/sshd.info"))"
	else
		echo "sshd: stopped"
	fi
	if [ -f "$DEMO/zk.port" ]; then
		echo "ZooKeeper: running (port $(cat "$DEMO/zk.port"))"
	else
		echo "ZooKeeper: stopped"
	fi
}

case "${1:-start}" in
start) start_demo ;;
stop) stop_demo ;;
status) status_demo ;;
*) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
