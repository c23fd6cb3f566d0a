#!/usr/bin/env bash
# sshd.sh: start and stop a throwaway OpenSSH server on a loopback address,
# for tests that need a real sshd (host-key scans, logins to fake nodes).
#
# usage:
#   sshd.sh start DIR [ADDR] [PORT]   prints "ADDR PORT PID" on success
#   sshd.sh stop DIR
#
#   DIR   scratch directory (created): host keys, sshd_config, sshd.log,
#         sshd.run.pid, a client key pair (client_key, client_key.pub) that
#         authorized_keys accepts, and sshd.info (the printed line).
#   ADDR  listen address, default 127.0.0.1. Any 127.x.y.z works without
#         configuring an interface, so several sshds can share a port.
#   PORT  default: a free port picked at random (retried if sshd loses the
#         race for it); an explicit port is not retried.
#
# env:
#   SSHD_KEY_TYPES  host key types to generate, default "ed25519 ecdsa rsa"
#   SSHD_RSA_BITS   RSA host key size, default 2048 (3072 costs ~1.5 s more)
#   SSHD_WAIT       seconds to wait for sshd to listen, default 10
#   SSHD_REEXEC=1   let sshd re-exec itself per connection (default: -r)
#   SSHD_EXTRA_CONFIG  more sshd_config lines ("\n" separates them), e.g.
#                   "KexAlgorithms diffie-hellman-group14-sha1\nMACs hmac-sha1"
#
# Existing host keys in DIR are kept, so a restart on the same DIR serves the
# same keys. sshd runs in the foreground (-D) in its own session (setsid), so
# signals aimed at the caller's process group never reach it; "stop" kills
# it by the PID recorded here (after checking that PID runs our config) and
# then its remaining connection processes. Facts this relies on (see
# /work/shared/notes/diskimage-builder-and-sshd.md §2): as root sshd needs
# /run/sshd, it must be started by its absolute path, and StrictModes must be
# off because the keys live in a temporary directory.
set -euo pipefail

SSHD=/usr/sbin/sshd
HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HARNESS_DIR/lib.sh"

die() { echo "sshd.sh: $*" >&2; exit 1; }

gen_keys() {
	local dir=$1 t bits
	for t in ${SSHD_KEY_TYPES:-ed25519 ecdsa rsa}; do
		[ -f "$dir/ssh_host_${t}_key" ] && continue
		bits=()
		[ "$t" = rsa ] && bits=(-b "${SSHD_RSA_BITS:-2048}")
		ssh-keygen -q -N '' -t "$t" "${bits[@]}" -f "$dir/ssh_host_${t}_key" \
			-C "sshd.sh-$t" </dev/null
	done
	if [ ! -f "$dir/client_key" ]; then
		ssh-keygen -q -N '' -t ed25519 -f "$dir/client_key" -C sshd.sh-client </dev/null
	fi
	cp "$dir/client_key.pub" "$dir/authorized_keys"
}

write_config() {
	local dir=$1 addr=$2 port=$3 k
	{
		echo "Port $port"
		echo "ListenAddress $addr"
		for k in "$dir"/ssh_host_*_key; do echo "HostKey $k"; done
		cat <<CFG
PidFile $dir/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel VERBOSE
# Host-key scans open many unauthenticated connections at once; the default
# (10:30:100) would drop some of them at random.
MaxStartups 1000
LoginGraceTime 30
CFG
		# Extra sshd_config lines, e.g. to restrict algorithms.
		if [ -n "${SSHD_EXTRA_CONFIG:-}" ]; then
			printf '%b\n' "$SSHD_EXTRA_CONFIG"
		fi
	} >"$dir/sshd_config"
}

# wait_listening DIR PID: 0 once the log says sshd listens, 1 if it exited.
wait_listening() {
	local dir=$1 pid=$2 i
	for ((i = 0; i < ${SSHD_WAIT:-10} * 20; i++)); do
		if grep -q 'Server listening on' "$dir/sshd.log" 2>/dev/null; then
			return 0
		fi
		kill -0 "$pid" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

start() {
	local dir=${1:?usage: sshd.sh start DIR [ADDR] [PORT]}
	local addr=${2:-127.0.0.1} want_port=${3:-} port pid try rflag

	[ -x "$SSHD" ] || die "$SSHD is not installed"
	mkdir -p "$dir"
	chmod 700 "$dir"
	dir=$(cd "$dir" && pwd)
	if [ -f "$dir/sshd.run.pid" ] && kill -0 "$(cat "$dir/sshd.run.pid")" 2>/dev/null; then
		die "an sshd from $dir is already running (pid $(cat "$dir/sshd.run.pid"))"
	fi
	# As root, sshd refuses to run without its privilege separation
	# directory; nothing on this machine creates it.
	if [ "$(id -u)" = 0 ] && [ ! -d /run/sshd ]; then
		mkdir -p -m 0755 /run/sshd
	fi
	gen_keys "$dir"

	for try in 1 2 3 4 5; do
		port=${want_port:-$(free_port)}
		write_config "$dir" "$addr" "$port"
		"$SSHD" -t -f "$dir/sshd_config" || die "sshd -t rejected $dir/sshd_config"
		: >"$dir/sshd.log"
		# -r: no re-exec per connection. A fork is all a connection costs
		# then, which matters when tests open hundreds of them (exec is
		# slow, the more so under gVisor). SSHD_REEXEC=1 keeps re-exec.
		rflag=-r
		[ "${SSHD_REEXEC:-0}" = 1 ] && rflag=
		setsid "$SSHD" -D -e $rflag -f "$dir/sshd_config" </dev/null >>"$dir/sshd.log" 2>&1 &
		pid=$!
		echo "$pid" >"$dir/sshd.run.pid"
		if wait_listening "$dir" "$pid"; then
			echo "$addr $port $pid" | tee "$dir/sshd.info"
			return 0
		fi
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		rm -f "$dir/sshd.run.pid"
		# Only a lost race for a port we picked ourselves is worth retrying.
		if [ -n "$want_port" ] || ! grep -q 'Address already in use' "$dir/sshd.log"; then
			break
		fi
	done
	tail -20 "$dir/sshd.log" >&2
	die "sshd did not start (log: $dir/sshd.log)"
}

stop() {
	local dir=${1:?usage: sshd.sh stop DIR} pid kids i
	[ -f "$dir/sshd.run.pid" ] || return 0
	pid=$(cat "$dir/sshd.run.pid")
	rm -f "$dir/sshd.run.pid"
	kill -0 "$pid" 2>/dev/null || return 0
	dir=$(cd "$dir" && pwd)
	if ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$dir/sshd_config"; then
		die "pid $pid is not the sshd of $dir; not killing it"
	fi
	# A stopped sshd (tests use SIGSTOP) must be continued to die of TERM.
	kids=$(pgrep -P "$pid" || true)
	kill -TERM "$pid" 2>/dev/null || true
	kill -CONT "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
	# Connection processes run in their own sessions and outlive the
	# listener until their client goes away; end them too.
	for i in $kids; do kill -TERM "$i" 2>/dev/null || true; done
	return 0
}

case "${1:-}" in
start) shift; start "$@" ;;
stop) shift; stop "$@" ;;
*) echo "usage: sshd.sh start DIR [ADDR] [PORT] | sshd.sh stop DIR" >&2; exit 2 ;;
esac
