#!/usr/bin/env bash
# compare-cli.sh: run by hand. Starts a TLS ZooKeeper on free loopback ports
# and runs compare-cli.py (our CLI against upstream's Python CLI on the same
# records). Skips when the upstream checkout is absent.
#
#   tests/upstream/compare-cli.sh [BUILD_DIR]      (default build)
set -u
cd "$(dirname "$0")/../.."
. tests/harness/lib.sh
export NP_BUILD=$(pwd)/${1:-build}
D=$(mktemp -d /tmp/np-compare-zk.XXXXXX)
trap 'zk_stop "$D" "${ZK_PORT:-0}"; rm -rf "$D"' EXIT
zk_start "$D" || exit 1
export NP_TEST_ZK_TLS=127.0.0.1:$ZK_TLS_PORT NP_TEST_ZK_CA=$D/tls/ca.pem \
	NP_TEST_ZK_CERT=$D/tls/client.pem NP_TEST_ZK_KEY=$D/tls/client.key
/usr/bin/python3 tests/upstream/compare-cli.py
