#!/usr/bin/env bash
# upload-bench.sh: nodepool-builder uploading a 4 GiB image to the fake
# provider next to `cp` of the same file on the same disk (the limit), and
# the builder's peak RSS during the uploads. Prints figures, never asserts
# (see bench/upload_bench.py for what is timed and how).
# Starts its own ZooKeeper (TLS) unless NP_TEST_ZK_TLS and the certificate
# variables name one; stops it at the end.
#
# usage: bench/upload-bench.sh [BUILD_DIR]   (default: build)
#  env:  SIZE_MB (4096), RUNS (3), SYNC (1: fsync each copy), BENCH_DIR (directory on the disk to
#        measure; default /tmp)
set -uo pipefail
cd "$(dirname "$0")/.."
export NP_BUILD=$(pwd)/${1:-build}
exec /usr/bin/python3 bench/upload_bench.py
