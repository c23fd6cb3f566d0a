#!/usr/bin/env bash
# test_zk_ensemble.sh: session failover across a real 3-server ensemble.
# Starts the ensemble (tests/harness/zk-ensemble.sh), then runs the
# ensemble_failover case of the C test test_zk, which kills (SIGKILL) the
# server its client is connected to and checks that the client moves to
# another server within the same session, keeping its ephemeral node and
# its one-shot and persistent watches. Stops everything on exit.
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=${NP_BUILD:-$PWD/build}
DIR=$(mktemp -d /tmp/np-zk-ensemble.XXXXXX)
cleanup() {
	tests/harness/zk-ensemble.sh stop "$DIR" >/dev/null 2>&1
	rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

if [ ! -x "$BUILD/tests/test_zk" ]; then
	echo "no $BUILD/tests/test_zk"
	echo "0 passed, 1 failed"
	exit 1
fi
if ! HOSTS=$(tests/harness/zk-ensemble.sh start "$DIR"); then
	echo "could not start the ensemble"
	echo "0 passed, 1 failed"
	exit 1
fi
export NP_TEST_ZK_ENSEMBLE=$HOSTS NP_TEST_ZK_ENSEMBLE_DIR=$DIR
out=$("$BUILD/tests/test_zk" ensemble_failover 2>&1)
rc=$?
printf '%s\n' "$out" | grep -vE '^[0-9-]+ [0-9:,]+ INFO ' >&2
if [ $rc = 0 ] && printf '%s\n' "$out" | grep -q ' 1 passed, 0 failed, 0 skipped'; then
	echo "1 passed, 0 failed"
	exit 0
fi
echo "0 passed, 1 failed"
exit 1
