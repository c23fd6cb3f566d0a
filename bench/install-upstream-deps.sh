#!/bin/sh
# Debian packages that upstream's Python CLI needs (bench/upstream-nodepool.py).
# Only for side-by-side benchmarks; the project itself does not need them.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends python3-kazoo python3-voluptuous \
	python3-prettytable python3-statsd python3-paramiko python3-pbr \
	python3-openstacksdk python3-daemon python3-extras python3-webob \
	python3-paste python3-psutil python3-yaml python3-cachetools >/dev/null
