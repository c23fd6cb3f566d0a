# lib.sh: shell helpers for the test harness and the integration tests.
# Source it; it defines free_port, zk_start, zk_stop.

# free_port: print a TCP port on 127.0.0.1 that nothing listens on now.
# Picks at random from 20000-59999 and checks /proc/net/tcp{,6} via ss.
free_port() {
	local p
	while :; do
		p=$(( 20000 + RANDOM % 40000 ))
		if ! ss -Htan "sport = :$p" | grep -q . && \
		   ! ss -Htan "sport = :$((p + 100))" | grep -q .; then
			echo "$p"
			return 0
		fi
	done
}

HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# zk_start DIR: start a standalone ZooKeeper (plain + TLS) with its data in
# DIR; sets ZK_PORT, ZK_TLS_PORT, ZK_DIR. TLS material in DIR/tls.
# ZK_TLS_PROTOCOL=TLSv1.3 in the environment: TLS 1.3 only (zk-start.sh).
zk_start() {
	ZK_DIR=$1
	mkdir -p "$ZK_DIR"
	ZK_PORT=$(free_port)
	ZK_TLS_PORT=$((ZK_PORT + 100))
	ZK_FORCE_SYNC=${ZK_FORCE_SYNC:-no} "$HARNESS_DIR/zk-start.sh" "$ZK_PORT" "$ZK_DIR" "$ZK_TLS_PORT" >/dev/null
}

# zk_stop DIR PORT: stop the ZooKeeper started by zk_start.
zk_stop() {
	"$HARNESS_DIR/zk-stop.sh" "$2" "$1" >/dev/null 2>&1 || true
}

# zk_yaml CHROOT: the zookeeper-servers and zookeeper-tls sections of a
# nodepool.yaml for the TLS port of the ZooKeeper zk_start started.
zk_yaml() {
	cat <<YAML
zookeeper-servers:
  - host: 127.0.0.1
    port: $ZK_TLS_PORT
    chroot: $1
zookeeper-tls:
  ca: $ZK_DIR/tls/ca.pem
  cert: $ZK_DIR/tls/client.pem
  key: $ZK_DIR/tls/client.key
YAML
}
