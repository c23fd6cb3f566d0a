#!/usr/bin/env bash
# run-all.sh: build and run every test, first with the normal build, then
# with the ASan+UBSan build. Starts one ZooKeeper (plaintext and TLS) on free
# loopback ports for the whole run and stops it at the end; tests that need
# their own servers (ensembles, restarts) start them through tests/harness.
#
# Tests are:
#   build*/tests/test_*          C unit and integration tests (testlib)
#   tests/integration/test_*.sh  shell integration tests
#   tests/integration/test_*.py  Python tests (kazoo), run with /usr/bin/python3
# Each prints "N passed, N failed[, N skipped]"; this script prints each
# file's counts and seconds, then the sum and the whole run's seconds.
#
# usage: tests/run-all.sh [--quick]   (--quick: normal build only)
set -uo pipefail
cd "$(dirname "$0")/.."
TOP=$(pwd)
. tests/harness/lib.sh

builds="build build-san"
[ "${1:-}" = --quick ] && builds="build"

WORK=$(mktemp -d /tmp/nodepool-tests.XXXXXX)
cleanup() {
	zk_stop "$WORK/zk" "${ZK_PORT:-0}"
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "== building"
make -s -j2 BUILD=build all || exit 1
if [[ $builds == *build-san* ]]; then
	make -s -j2 SAN=1 BUILD=build-san all || exit 1
fi

echo "== starting ZooKeeper"
if ! zk_start "$WORK/zk"; then
	echo "could not start ZooKeeper"; exit 1
fi
export NP_TEST_ZK="127.0.0.1:$ZK_PORT"
export NP_TEST_ZK_TLS="127.0.0.1:$ZK_TLS_PORT"
export NP_TEST_ZK_CA="$WORK/zk/tls/ca.pem"
export NP_TEST_ZK_CERT="$WORK/zk/tls/client.pem"
export NP_TEST_ZK_KEY="$WORK/zk/tls/client.key"
export NP_TEST_ZK_DIR="$WORK/zk"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "ZooKeeper on $NP_TEST_ZK (TLS $NP_TEST_ZK_TLS)"

total_pass=0 total_fail=0 total_skip=0
failed_tests=()

run_one() {
	local name=$1; shift
	local out rc line start=$SECONDS
	# A hung test must fail the run, not stall it: 15 minutes each at most.
	out=$(timeout -k 10 "${NP_TEST_TIMEOUT:-900}" "$@" 2>"$WORK/stderr.log"); rc=$?
	if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
		echo "TIMEOUT after ${NP_TEST_TIMEOUT:-900} s: $name" >>"$WORK/stderr.log"
	fi
	line=$(printf '%s\n' "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -1)
	local p f s
	p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+')
	f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+')
	s=$(grep -oE '[0-9]+ skipped' <<<"$line" | grep -oE '[0-9]+')
	p=${p:-0}; f=${f:-0}; s=${s:-0}
	if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=1; fi
	total_pass=$((total_pass + p)); total_fail=$((total_fail + f)); total_skip=$((total_skip + s))
	printf '%-60s %3d passed %3d failed %3d skipped %4d s\n' "$name" "$p" "$f" "$s" $((SECONDS - start))
	if [ "$f" != 0 ]; then
		failed_tests+=("$name")
		sed 's/^/    | /' "$WORK/stderr.log" | tail -60
		printf '%s\n' "$out" | sed 's/^/    > /' | tail -20
	elif grep -q 'SKIP' "$WORK/stderr.log"; then
		grep 'SKIP' "$WORK/stderr.log" | sed 's/^/    /'
	fi
}

for b in $builds; do
	echo "== $b: C tests"
	for t in "$b"/tests/test_*; do
		[ -x "$t" ] || continue
		run_one "$t" "$t"
	done
	echo "== $b: integration tests"
	export NP_BUILD="$TOP/$b"
	for t in tests/integration/test_*.sh; do
		[ -f "$t" ] || continue
		run_one "$b:$t" bash "$t"
	done
	for t in tests/integration/test_*.py; do
		[ -f "$t" ] || continue
		run_one "$b:$t" /usr/bin/python3 "$t"
	done
done

echo
if [ ${#failed_tests[@]} -gt 0 ]; then
	echo "failed: ${failed_tests[*]}"
fi
echo "total: $total_pass passed, $total_fail failed, $total_skip skipped in $SECONDS s"
[ "$total_fail" = 0 ]
