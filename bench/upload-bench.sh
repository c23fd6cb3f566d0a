#!/usr/bin/env bash
# upload-bench.sh: nodepool-builder uploading a 4 GiB image to the fake
# provider next to `cp` of the same file on the same disk (the limit), and
# the builder's peak RSS during the uploads. Prints figures, never asserts
# (see bench/upload_bench.py for what is timed and how).
# Starts its own ZooKeeper (TLS) unless NP_TEST_ZK_TLS and the certificate
# variables name one; stops it at the end.
#
# Each run copies with `cp` and uploads, in turn (odd runs `cp` first, even
# runs the upload first); before every copy it runs `sync` and drops the
# page cache (echo 3 > /proc/sys/vm/drop_caches), so run it as root (we
# are, on the development machines); without root it warns and goes on
# without dropping. Prints each run, then the median and the best.
#
# usage: bench/upload-bench.sh [BUILD_DIR]   (default: build)
#  env:  SIZE_MB (4096), RUNS (3), SYNC (1: fsync each copy), COLD (1: the
#        source not read back into the page cache after the drop: both
#        copies read it from the disk), BENCH_DIR (directory on the disk to
#        measure; default /tmp)
set -uo pipefail
cd "$(dirname "$0")/.."
export NP_BUILD=$(pwd)/${1:-build}
exec /usr/bin/python3 bench/upload_bench.py
