#!/usr/bin/env bash
# run.sh: the real-cloud lane. Installs (once) and starts a real OpenStack
# on loopback (tests/openstack/cloud: Keystone, Glance, Placement, Neutron
# server and Nova with the fake virt driver; see its README), runs the
# launcher tests against it (tests/openstack/test_openstack_cloud.py: a
# real ZooKeeper, real nodepool-launcher processes, a real sshd answering
# the host-key scans on 127.x), and stops the cloud again, whatever
# happened. The cloud takes ~70 s to start and much of this 2-core
# machine's CPU while it runs: it is never left running.
#
# usage: tests/openstack/run.sh [--keep-cloud]   (--keep-cloud: do not stop it)
# env:   NP_BUILD (default build), OSL_DIR (default /tmp/osl), NP_OS_WAIT
#        (seconds any one cloud step may take, default 900), NP_TEST_KEEP=1
#        keeps the scenarios' directories.
# Output ends with "N passed, N failed" (the tests' own line).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
export OSL_DIR=${OSL_DIR:-/tmp/osl}
KEEP=0
[ "${1:-}" = "--keep-cloud" ] && KEEP=1

if ! dpkg-query -W -f='${Status}' python3-nova 2>/dev/null | grep -q 'install ok installed'; then
	echo "run.sh: installing the cloud's packages (about 2 minutes)"
	if [ "$(id -u)" = 0 ]; then
		"$HERE/cloud/install.sh" || exit 1
	else
		sudo "$HERE/cloud/install.sh" || exit 1
	fi
fi

stop_cloud() {
	if [ $KEEP = 0 ]; then
		echo "run.sh: stopping the cloud"
		"$HERE/cloud/stop.sh" >/dev/null 2>&1
	fi
}
trap stop_cloud EXIT

echo "run.sh: starting the cloud in $OSL_DIR (about 70 s)"
t0=$(date +%s)
if ! "$HERE/cloud/start.sh" > "$OSL_DIR.start.log" 2>&1; then
	echo "run.sh: the cloud did not start; see $OSL_DIR.start.log" >&2
	tail -20 "$OSL_DIR.start.log" >&2
	echo "0 passed, 1 failed"
	exit 1
fi
echo "run.sh: cloud up in $(( $(date +%s) - t0 )) s"

export OS_CLIENT_CONFIG_FILE=$OSL_DIR/etc/clouds.yaml
/usr/bin/python3 "$HERE/test_openstack_cloud.py"
rc=$?
exit $rc
