#!/usr/bin/python3
# upload_bench.py: nodepool-builder's upload of a large image to the fake
# cloud (state dir) next to `cp` of the same file on the same disk, and
# the builder's peak memory meanwhile. Run by bench/upload-bench.sh;
# prints figures, never asserts.
#
# The image is real data (a 64 MiB random block repeated, no holes), so
# both `cp` and the fake driver copy every byte. The source is read once
# first, so both copies start from the page cache. Each run times `cp`
# (until it returns, and with an fsync of its copy after it) and one
# upload: the driver's copy
# (the time its log line gives), the whole upload from the READY build
# record to the READY upload record, and the fsync of the copy after it
# with SYNC=1 (only that file: a global sync would wait for other
# processes' writes; on a busy shared disk even that can take minutes, so
# it is off by default and the "with sync" figures then equal the others).
#
# env: SIZE_MB (4096), RUNS (3), SYNC (0), BENCH_DIR (a directory on the disk to
# measure; default: a temporary one in /tmp), and launcherlib's.
import json
import os
import re
import subprocess
import sys
import time
import uuid

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
import launcherlib as ll  # noqa: E402
from test_builder_upload import UploadScenario  # noqa: E402

SIZE_MB = int(os.environ.get("SIZE_MB", "4096"))
RUNS = int(os.environ.get("RUNS", "3"))


def status_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return None


SYNC = os.environ.get("SYNC") == "1"


def timed(fn):
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def fsync(path):
    """Only PATH's data: a global sync would wait for every other
    process's writes too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_source(path):
    block = os.urandom(64 << 20)
    with open(path, "wb") as f:
        for _ in range(SIZE_MB // 64):
            f.write(block)
    with open(path, "rb") as f:         # into the page cache
        while f.read(64 << 20):
            pass


def main():
    if os.environ.get("BENCH_DIR"):
        import tempfile
        tempfile.tempdir = os.environ["BENCH_DIR"]
    zk = ll.ZK()
    s = UploadScenario(zk, "upload-bench")
    try:
        return bench(s)
    finally:
        s.close()
        zk.stop()


def bench(s):
    s.write_upload_config(providers=[{"name": "fake-a"}])
    src = os.path.join(s.dir, "source.raw")
    os.makedirs(s.images_dir, exist_ok=True)
    t = timed(lambda: make_source(src))
    mb = os.path.getsize(src) / 1e6
    fs = subprocess.check_output(["df", "-T", s.dir], text=True).split(
        "\n")[1].split()
    print("image: %d MiB of data (no holes), made in %.1f s; %s on %s (%s)"
          % (SIZE_MB, t, s.dir, fs[0], fs[1]))
    p = s.start_uploader(workers=1)
    time.sleep(2)
    idle = status_kb(p.pid, "VmRSS:")
    rows = []
    for run in range(1, RUNS + 1):
        dst = os.path.join(s.dir, "cp-copy.raw")
        t_cp = timed(lambda: subprocess.check_call(["cp", src, dst]))
        t_cp_sync = t_cp + (timed(lambda: fsync(dst)) if SYNC else 0)
        os.unlink(dst)

        bid = uuid.uuid4().hex
        os.link(src, os.path.join(s.images_dir, "img-%s.qcow2" % bid))
        t0 = time.monotonic()
        s.kz.create("/nodepool/images/img/builds/%s" % bid, json.dumps({
            "state": "ready", "state_time": time.time(),
            "formats": "qcow2"}).encode(), makepath=True)
        uid, rec = s.wait_upload("img", bid, "fake-a", timeout=600)
        t_e2e = time.monotonic() - t0
        if not rec:
            print("run %d: the upload did not finish" % run)
            return 1
        cloud = os.path.join(s.state_dir, "images", rec["external_id"])
        t_up_sync = t_e2e + (timed(lambda: fsync(cloud + ".qcow2")) if SYNC
                             else 0)
        m = re.findall(r"Uploaded image \S+ as %s \((\d+) bytes, (\d+) of "
                       r"them data, in (\d+) ms\)" % rec["external_id"],
                       s.log(p))
        size, data, ms = (int(x) for x in m[-1]) if m else (0, 0, 0)
        blocks = os.stat(cloud + ".qcow2").st_blocks * 512
        for ext in (".qcow2", ".json"):
            os.unlink(cloud + ext)
        rows.append((t_cp, t_cp_sync, ms / 1000.0, t_e2e, t_up_sync))
        print("run %d: cp %.2f s (%.0f MB/s), with sync %.2f s (%.0f MB/s); "
              "upload: driver copy %.2f s (%.0f MB/s), record to record "
              "%.2f s, with sync %.2f s (%.0f MB/s); copied %d of %d bytes "
              "as data, %d bytes allocated in the cloud"
              % (run, t_cp, mb / t_cp, t_cp_sync, mb / t_cp_sync, ms / 1000.0,
                 mb / (ms / 1000.0) if ms else 0, t_e2e, t_up_sync,
                 mb / t_up_sync, data, size, blocks))
    hwm = status_kb(p.pid, "VmHWM:")
    best = [min(r[i] for r in rows) for i in range(5)]
    print("best of %d: cp %.0f MB/s, upload (driver copy) %.0f MB/s = %.0f%% "
          "of cp; record to record %.0f MB/s = %.0f%% of cp; with sync: cp "
          "%.0f MB/s, upload %.0f MB/s = %.0f%%"
          % (RUNS, mb / best[0], mb / best[2], 100 * best[0] / best[2],
             mb / best[3], 100 * best[0] / best[3], mb / best[1],
             mb / best[4], 100 * best[1] / best[4]))
    print("builder RSS: %d kB idle, peak (VmHWM) %d kB over %d uploads of "
          "%d MiB" % (idle, hwm, RUNS, SIZE_MB))
    s.stop(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
