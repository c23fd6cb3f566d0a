#!/usr/bin/env bash
# test_zk_tls13.sh: our ZooKeeper client against a server that speaks
# TLS 1.3 only (tests/harness/zk-start.sh with ZK_TLS_PROTOCOL=TLSv1.3:
# ssl.protocol and ssl.enabledProtocols TLSv1.3 plus ssl.ciphersuites
# with TLS 1.3 suites, without which Debian's ZooKeeper completes no
# handshake; docs/operations.md). It first checks that the server refuses
# a TLS 1.2 handshake and takes a 1.3 one, so that what follows proves
# something, then runs against it: test_zk's TLS cases (the library
# client: operations, certificate checks, a clean close), test_cli.py (the
# nodepool CLI) and test_launcher.py's fulfil-and-delete (the launcher).
# Starts and stops a ZooKeeper of its own.
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=${NP_BUILD:-$PWD/build}
. tests/harness/lib.sh
DIR=$(mktemp -d /tmp/np-zk-tls13.XXXXXX)
cleanup() {
	zk_stop "$DIR/zk" "${ZK_PORT:-0}"
	rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

pass=0 fail=0
ok() { echo "ok: $1"; pass=$((pass + 1)); }
bad() { echo "FAILED: $1" >&2; fail=$((fail + 1)); }

if ! ZK_TLS_PROTOCOL=TLSv1.3 zk_start "$DIR/zk"; then
	echo "could not start ZooKeeper" >&2
	echo "0 passed, 1 failed"
	exit 1
fi
T=$DIR/zk/tls

# handshake FLAG: the protocol version a handshake offering only FLAG's
# version agrees on (nothing when the server refuses it).
handshake() {
	timeout 20 openssl s_client -brief -connect "127.0.0.1:$ZK_TLS_PORT" \
		"$1" -CAfile "$T/ca.pem" -cert "$T/client.pem" \
		-key "$T/client.key" </dev/null 2>&1 |
		sed -n 's/^Protocol version: *//p'
}
v=$(handshake -tls1_3)
[ "$v" = TLSv1.3 ] && ok "the server takes TLS 1.3" ||
	bad "the server takes TLS 1.3 (got '$v')"
v=$(handshake -tls1_2)
[ -z "$v" ] && ok "the server refuses TLS 1.2" ||
	bad "the server refuses TLS 1.2 (got '$v')"

export NP_TEST_ZK="127.0.0.1:$ZK_PORT" NP_TEST_ZK_TLS="127.0.0.1:$ZK_TLS_PORT"
export NP_TEST_ZK_CA="$T/ca.pem" NP_TEST_ZK_CERT="$T/client.pem"
export NP_TEST_ZK_KEY="$T/client.key" NP_TEST_ZK_DIR="$DIR/zk"
export NP_BUILD=$BUILD

# suite NAME CMD...: CMD (a test of ours) passes, and runs something.
suite() {
	local name=$1 out rc line p f
	shift
	out=$("$@" 2>"$DIR/err"); rc=$?
	line=$(printf '%s\n' "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' |
		tail -1)
	p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+')
	f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+')
	if [ "$rc" = 0 ] && [ "${f:-1}" = 0 ] && [ "${p:-0}" -gt 0 ]; then
		ok "$name over TLS 1.3 ($line)"
	else
		bad "$name over TLS 1.3 (rc $rc: $line)"
		tail -30 "$DIR/err" >&2
		printf '%s\n' "$out" | tail -20 >&2
	fi
}
suite "the library client" "$BUILD/tests/test_zk" ops_tls \
	tls_verification clean_close_is_quiet_tls
suite "the CLI" /usr/bin/python3 tests/integration/test_cli.py
suite "the launcher" /usr/bin/python3 tests/integration/test_launcher.py \
	test_fulfil_and_delete

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
