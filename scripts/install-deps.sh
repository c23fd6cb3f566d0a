#!/bin/sh
# install-deps.sh: install every build, test and run dependency of this
# project from Debian 12's packages. Idempotent: packages already present
# are left alone, and apt is only asked when something is missing.
set -eu

# sudo: diskimage-builder calls it for every privileged step and does not
# depend on it; as root it is a no-op, but it must exist (a fresh machine
# may not have it). python3-webob: test_webapp_accept.py holds our web
# app's content negotiation against webob's, the library upstream's uses.

PKGS="
build-essential pkg-config
libjansson-dev libyaml-dev libssl-dev libcurl4-openssl-dev
libmicrohttpd-dev libssh-dev
zookeeper libnetty-java libslf4j-java default-jre-headless
python3 python3-kazoo python3-yaml python3-webob
openssl procps iproute2 time
openssh-server openssh-client curl
python3-diskimage-builder debootstrap qemu-utils sudo
"

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing="$missing $p"
	fi
done

if [ -z "$missing" ]; then
	echo "install-deps: all packages present"
	exit 0
fi

if [ "$(id -u)" != 0 ]; then
	echo "install-deps: missing packages:$missing" >&2
	echo "install-deps: run this script as root to install them" >&2
	exit 1
fi

echo "install-deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
