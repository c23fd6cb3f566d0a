#!/usr/bin/env bash
# zk-ensemble.sh: a throwaway 3-server ZooKeeper ensemble on loopback, for
# failover tests (what happens to a session when its server dies).
#
# usage: zk-ensemble.sh start DIR   start servers 1..3; print the host list
#        zk-ensemble.sh stop DIR    stop whatever is still running of them
#
# Layout of DIR after start:
#   hosts              "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"
#   sN/zoo.cfg sN/data/myid sN/zk.log
#   sN/zk.pid sN/port  the server's PID and client port
#   port-PORT.pid      the same PID, looked up by client port (tests use it
#                      to kill the server their client is connected to)
# env: ZK_WAIT (seconds, default 90), ZK_HEAP (default 256m).
set -euo pipefail
CMD=${1:?usage: zk-ensemble.sh start|stop DIR}
DIR=${2:?usage: zk-ensemble.sh start|stop DIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/lib.sh"

stop_all() {
	local pid
	for n in 1 2 3; do
		[ -f "$DIR/s$n/zk.pid" ] || continue
		pid=$(cat "$DIR/s$n/zk.pid")
		# only our java with our config
		if kill -0 "$pid" 2>/dev/null &&
		   tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$DIR/s$n/zoo.cfg"; then
			kill "$pid" 2>/dev/null || true
			for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
			kill -9 "$pid" 2>/dev/null || true
		fi
		rm -f "$DIR/s$n/zk.pid"
	done
}

fourlw() { # PORT WORD
	{ exec 3<>"/dev/tcp/127.0.0.1/$1" && printf '%s' "$2" >&3 && timeout 2 cat <&3; } 2>/dev/null || true
}

start_all() {
	mkdir -p "$DIR"
	DIR=$(cd "$DIR" && pwd)
	local ports=() peers=() elects=() servers="" hosts=""
	for n in 1 2 3; do
		ports[$n]=$(free_port)
		peers[$n]=$(free_port)
		elects[$n]=$(free_port)
		servers+="server.$n=127.0.0.1:${peers[$n]}:${elects[$n]}"$'\n'
		hosts+="${hosts:+,}127.0.0.1:${ports[$n]}"
	done
	local J=/usr/share/java
	local CP="$J/zookeeper.jar:$J/netty-codec.jar:$J/netty-resolver.jar:$J/netty-transport-native-unix-common.jar:$J/slf4j-simple.jar"
	for n in 1 2 3; do
		local S="$DIR/s$n"
		mkdir -p "$S/data"
		echo "$n" > "$S/data/myid"
		cat > "$S/zoo.cfg" <<CFG
tickTime=1000
initLimit=10
syncLimit=5
dataDir=$S/data
clientPort=${ports[$n]}
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=*
forceSync=no
$servers
CFG
		nohup /usr/bin/java -Xmx"${ZK_HEAP:-256m}" -XX:+UseSerialGC \
			-Dzookeeper.admin.enableServer=false \
			-Dzookeeper.4lw.commands.whitelist='*' \
			-cp "$CP" org.apache.zookeeper.server.quorum.QuorumPeerMain "$S/zoo.cfg" \
			> "$S/zk.log" 2>&1 < /dev/null &
		echo $! > "$S/zk.pid"
		echo "${ports[$n]}" > "$S/port"
		cp "$S/zk.pid" "$DIR/port-${ports[$n]}.pid"
	done
	echo "$hosts" > "$DIR/hosts"
	local up
	for _ in $(seq 1 $(( ${ZK_WAIT:-90} * 5 ))); do
		up=0
		for n in 1 2 3; do
			fourlw "${ports[$n]}" srvr | grep -qE '^Mode: (leader|follower)' && up=$((up + 1))
		done
		if [ "$up" = 3 ]; then
			echo "$hosts"
			return 0
		fi
		sleep 0.2
	done
	echo "ensemble in $DIR did not come up; logs:" >&2
	tail -5 "$DIR"/s*/zk.log >&2
	stop_all
	return 1
}

case "$CMD" in
start) start_all ;;
stop) stop_all ;;
*) echo "usage: zk-ensemble.sh start|stop DIR" >&2; exit 2 ;;
esac
