#!/bin/sh
# compare-validate.sh: run by hand. Validates every upstream Nodepool test
# fixture that is a nodepool config with both upstream's validator (from the
# local mirror, via upstream_verdict.py; needs Debian's python3-voluptuous)
# and ours, and prints a table "fixture upstream ours" plus a summary.
# Upstream's fixtures use {placeholders} that its tests fill in; we fill
# them with plausible values first. Skips when the mirror is absent.
#
#   tests/upstream/compare-validate.sh [BUILD_DIR]    (default build-config)
set -u
UPSTREAM=${NP_UPSTREAM:-/work/.mirror/src/gndrmnn+nodepool}
BUILD=${1:-build-config}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
if [ ! -d "$UPSTREAM/nodepool/tests/fixtures" ]; then
	echo "upstream mirror not found at $UPSTREAM: skipping"
	echo "0 passed, 0 failed"
	exit 0
fi
cd "$ROOT" || exit 1
make -s BUILD="$BUILD" "$BUILD/libnodepool.a" || exit 1
${CC:-cc} -std=c17 -Ilib ${NP_SAN_FLAGS:-} -o "$BUILD/validate_one" tests/upstream/validate_one.c \
	"$BUILD/libnodepool.a" $(pkg-config --libs jansson yaml-0.1 openssl) \
	-lpthread -lm || exit 1

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FIX="$UPSTREAM/nodepool/tests/fixtures"
# Nodepool configs: YAML files with a top-level providers/labels/
# diskimages/zookeeper key (skips clouds.yaml, kube configs, ...).
find "$FIX" -name '*.yaml' | sort | while read -r f; do
	grep -qE '^(providers|labels|diskimages|zookeeper-servers|webapp|nothandled):' "$f" || continue
	rel=${f#"$FIX"/}
	out="$WORK/$(echo "$rel" | tr / _)"
	sed -e 's#{images_dir}#/tmp/np-images#g' \
	    -e 's#{build_log_dir}#/tmp/np-logs#g' \
	    -e 's#{zookeeper_host}#localhost#g' \
	    -e 's#{zookeeper_port}#2281#g' \
	    -e 's#{zookeeper_chroot}#/nodepool-test#g' \
	    -e 's#{zookeeper_ca}#/tmp/ca.pem#g' \
	    -e 's#{zookeeper_cert}#/tmp/cert.pem#g' \
	    -e 's#{zookeeper_key}#/tmp/key.pem#g' \
	    -e 's#{auth_path}#/tmp/azure.json#g' \
	    -e 's#{context_name}#admin-cluster.local#g' \
	    -e 's#{instance_profile_arn}#arn:aws:iam::123:instance-profile/np#g' \
	    -e 's#{security_group_id}#sg-123#g' \
	    -e 's#{subnet_id}#subnet-123#g' \
	    "$f" > "$out"
	echo "$rel $out"
done > "$WORK/list"

cut -d' ' -f2 "$WORK/list" > "$WORK/files"
export NODEPOOL_PORT=8005
/usr/bin/python3 "$HERE/upstream_verdict.py" $(cat "$WORK/files") \
	> "$WORK/upstream" 2>/dev/null
"$BUILD/validate_one" $(cat "$WORK/files") > "$WORK/ours" 2>"$WORK/ours.err"

pass=0 fail=0
while read -r rel out; do
	up=$(grep -F "$out " "$WORK/upstream" | awk '{print $2}')
	us=$(grep -F "$out " "$WORK/ours" | awk '{print $2}')
	mark=ok
	if [ "$up" != "$us" ]; then mark=DIFFERENT; fail=$((fail+1)); else pass=$((pass+1)); fi
	printf '| %s | %s | %s | %s |\n' "$rel" "$up" "$us" "$mark"
done < "$WORK/list" > "$WORK/table"
cat "$WORK/table"
if [ -n "${NP_SHOW_ERRORS:-}" ]; then cat "$WORK/ours.err"; fi
pass=$(grep -c ' ok |$' "$WORK/table")
fail=$(grep -c 'DIFFERENT |$' "$WORK/table")
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
