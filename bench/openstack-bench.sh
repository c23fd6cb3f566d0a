#!/usr/bin/env bash
# openstack-bench.sh: request-to-ready on the real-cloud lane's OpenStack
# for 1, 10 and 50 concurrent requests, split into the cloud's part and
# ours, next to the cloud's own create-to-ACTIVE time; the launcher's CPU
# and RSS (bench/openstack_bench.py says how). Uses the cloud in $OSL_DIR
# if it is up; otherwise starts it (tests/openstack/cloud/start.sh, several
# minutes on a loaded machine) and stops it again at the end. The cloud's
# packages must be installed (tests/openstack/run.sh installs them once).
# Prints figures; asserts nothing.
#
# usage: bench/openstack-bench.sh [C...]     (default: 1 10 50)
# env:   NP_BUILD (default build; built here if the launcher is missing),
#        OSL_DIR (default /tmp/osl)
set -uo pipefail
cd "$(dirname "$0")/.."
TOP=$(pwd)
export OSL_DIR=${OSL_DIR:-/tmp/osl}
export NP_BUILD=${NP_BUILD:-build}
CLOUD=$TOP/tests/openstack/cloud

if ! dpkg-query -W -f='${Status}' python3-nova 2>/dev/null | grep -q 'install ok installed'; then
	echo "openstack-bench: the cloud is not installed; run tests/openstack/run.sh once" >&2
	exit 1
fi
[ -x "$NP_BUILD/nodepool-launcher" ] || make -j2 BUILD="$NP_BUILD" >/dev/null || exit 1

cloud_up() {
	local f
	for f in "$OSL_DIR"/run/nova-compute.pid "$OSL_DIR"/run/keystone.pid; do
		[ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null || return 1
	done
	curl -s -o /dev/null -m 5 http://127.0.0.1:5000/v3
}

STARTED=0
if cloud_up; then
	echo "openstack-bench: using the cloud already up in $OSL_DIR"
else
	echo "openstack-bench: starting the cloud in $OSL_DIR"
	t0=$(date +%s)
	if ! "$CLOUD/start.sh" > "$OSL_DIR.start.log" 2>&1; then
		echo "openstack-bench: the cloud did not start; see $OSL_DIR.start.log" >&2
		"$CLOUD/stop.sh" >/dev/null 2>&1
		exit 1
	fi
	STARTED=1
	echo "openstack-bench: cloud up in $(( $(date +%s) - t0 )) s"
fi
stop_cloud() {
	if [ $STARTED = 1 ]; then
		echo "openstack-bench: stopping the cloud"
		"$CLOUD/stop.sh" >/dev/null 2>&1
	fi
}
trap stop_cloud EXIT

echo "openstack-bench: load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
OS_CLIENT_CONFIG_FILE=$OSL_DIR/etc/clouds.yaml /usr/bin/python3 bench/openstack_bench.py "$@"
