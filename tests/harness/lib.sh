# lib.sh: shell helpers for the test harness and the integration tests.
# Source it; it defines free_port, zk_start, zk_stop.

# free_port: print a TCP port on 127.0.0.1 that nothing uses now, nor
# PORT+100 (zk_start's TLS port). Picks at random from 20000 up to the
# kernel's ephemeral range (ip_local_port_range, 32768 by default) and
# checks with ss. Below that range because a port in it can be taken
# between this check and the server's bind (or while a test has stopped
# the server, to start it again on the same port) by any outgoing
# connection's local port, a client's reconnect attempts to that very
# port included (TCP self-connect): ZooKeeper then exits with "Address
# already in use".
free_port() {
	local p lo hi span
	read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null ||
		lo=32768
	span=$(( lo - 100 - 20000 ))
	[ "$span" -ge 1000 ] || span=40000 # an odd range: as before
	while :; do
		p=$(( 20000 + (RANDOM * 32768 + RANDOM) % span ))
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
