#!/usr/bin/python3
# upload_bench.py: nodepool-builder's upload of a large image to the fake
# cloud (state dir) next to `cp` of the same file on the same disk, and
# the builder's peak memory meanwhile. Run by bench/upload-bench.sh;
# prints figures, never asserts.
#
# The image is real data (a 64 MiB random block repeated, no holes), so
# both `cp` and the fake driver copy every byte; each upload's build has
# DIB's .md5 and .sha256 files beside it, as a real build has. Each run copies the image
# once with `cp` and once through an upload, in turn: odd runs `cp` first,
# even runs the upload first. Before each copy the previous copy is
# deleted, everything dirty is written back (`sync`) and the page cache is
# dropped (/proc/sys/vm/drop_caches: needs root), then the source is read
# back into the page cache (COLD=1: left on disk), so that each copy starts
# from the same state: no dirty pages of the other copy to write back
# meanwhile (the kernel throttles a writer past the dirty limit), the
# source cached (or not) alike. Timed: `cp` until it returns; the upload
# as the driver's copy (the time its log line gives) and from the READY
# build record to the READY upload record; with SYNC=1 each also with an
# fsync of its copy after it. The median and the best of each are printed.
# Without root (no drop_caches) it says so and runs without dropping.
#
# env: SIZE_MB (4096), RUNS (3), SYNC (0), COLD (0), BENCH_DIR (a directory
# on the disk to measure; default: a temporary one in /tmp), and
# launcherlib's.
import hashlib
import json
import os
import re
import signal
import statistics
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
SYNC = os.environ.get("SYNC") == "1"
COLD = os.environ.get("COLD") == "1"
DROP = "/proc/sys/vm/drop_caches"


def status_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return None


def timed(fn):
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def fsync(path):
    """Only PATH's data: the copy's own write-back is what is timed."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_all(path):
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def make_source(path):
    """The image and its digests (md5, sha256), as DIB leaves them."""
    block = os.urandom(64 << 20)
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(SIZE_MB // 64):
            f.write(block)
            md5.update(block)
            sha256.update(block)
    return md5.hexdigest(), sha256.hexdigest()


def can_drop():
    try:
        with open(DROP, "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def settle(src, dropping):
    """The same starting state for every copy: nothing dirty, the page
    cache dropped, the source read back in (unless COLD)."""
    subprocess.check_call(["sync"])
    if dropping:
        with open(DROP, "w") as f:
            f.write("3")
        if not COLD:
            read_all(src)
    elif not COLD:
        read_all(src)


def main():
    # Stopped with SIGTERM too (a background job ignores SIGINT): clean up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
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


def run_cp(src, dst):
    t = timed(lambda: subprocess.check_call(["cp", src, dst]))
    return t, t + (timed(lambda: fsync(dst)) if SYNC else 0)


class Uploader:
    def __init__(self, s, src, sums):
        self.s, self.src, self.sums = s, src, sums
        self.p = s.start_uploader(workers=1)
        time.sleep(2)
        self.idle = status_kb(self.p.pid, "VmRSS:")

    def run(self):
        """One upload: (driver copy s, record to record s, with sync s,
        the cloud's copy, bytes of data, bytes allocated)."""
        s = self.s
        bid = uuid.uuid4().hex
        img = os.path.join(s.images_dir, "img-%s.qcow2" % bid)
        os.link(self.src, img)
        # DIB's checksum files: without them the UploadWorker would
        # read the whole image once more to make them first.
        for ext, digest in zip(("md5", "sha256"), self.sums):
            with open("%s.%s" % (img, ext), "w") as f:
                f.write("%s  %s\n" % (digest, img))
        t0 = time.monotonic()
        s.kz.create("/nodepool/images/img/builds/%s" % bid, json.dumps({
            "state": "ready", "state_time": time.time(),
            "formats": "qcow2"}).encode(), makepath=True)
        uid, rec = s.wait_upload("img", bid, "fake-a", timeout=600)
        t_e2e = time.monotonic() - t0
        if not rec:
            return None
        cloud = os.path.join(s.state_dir, "images", rec["external_id"])
        t_sync = t_e2e + (timed(lambda: fsync(cloud + ".qcow2")) if SYNC
                          else 0)
        m = re.findall(r"Uploaded image \S+ as %s \((\d+) bytes, (\d+) of "
                       r"them data, in (\d+) ms\)" % rec["external_id"],
                       s.log(self.p))
        size, data, ms = (int(x) for x in m[-1]) if m else (0, 0, 0)
        blocks = os.stat(cloud + ".qcow2").st_blocks * 512
        return ms / 1000.0, t_e2e, t_sync, cloud, size, data, blocks


def bench(s):
    s.write_upload_config(providers=[{"name": "fake-a"}])
    src = os.path.join(s.dir, "source.raw")
    dst = os.path.join(s.dir, "cp-copy.raw")
    os.makedirs(s.images_dir, exist_ok=True)
    t0 = time.monotonic()
    sums = make_source(src)
    t = time.monotonic() - t0
    mb = os.path.getsize(src) / 1e6
    fs = subprocess.check_output(["df", "-T", s.dir], text=True).split(
        "\n")[1].split()
    dropping = can_drop()
    print("image: %d MiB of data (no holes), made in %.1f s; %s on %s (%s); "
          "load %s" % (SIZE_MB, t, s.dir, fs[0], fs[1],
                       open("/proc/loadavg").read().split()[0]))
    print("before each copy: sync, %s, source %s" % (
        "page cache dropped" if dropping else
        "page cache NOT dropped (not root)",
        "left on disk" if COLD else "read back into the page cache"))
    up = Uploader(s, src, sums)
    cps, ups = [], []
    for run in range(1, RUNS + 1):
        order = ("cp", "upload") if run % 2 else ("upload", "cp")
        for what in order:
            settle(src, dropping)
            if what == "cp":
                cps.append(run_cp(src, dst))
                os.unlink(dst)
                continue
            r = up.run()
            if not r:
                print("run %d: the upload did not finish" % run)
                return 1
            ups.append(r[:3])
            cloud, size, data, blocks = r[3:]
            for ext in (".qcow2", ".json"):
                os.unlink(cloud + ext)
        c, u = cps[-1], ups[-1]
        print("run %d (%s first): cp %.2f s (%.0f MB/s); upload: driver "
              "copy %.2f s (%.0f MB/s), record to record %.2f s%s; copied "
              "%d of %d bytes as data, %d bytes allocated in the cloud"
              % (run, order[0], c[0], mb / c[0], u[0],
                 mb / u[0] if u[0] else 0, u[1],
                 "; with sync: cp %.2f s, upload %.2f s" % (c[1], u[2])
                 if SYNC else "", data, size, blocks))
    hwm = status_kb(up.p.pid, "VmHWM:")

    def line(name, f):
        cp_t = f([c[0] for c in cps])
        up_t = f([u[0] for u in ups])
        e2e = f([u[1] for u in ups])
        out = ("%s of %d: cp %.2f s (%.0f MB/s), upload (driver copy) "
               "%.2f s (%.0f MB/s) = %.0f%% of cp; record to record %.2f s "
               "= %.0f%% of cp" % (name, RUNS, cp_t, mb / cp_t, up_t,
                                  mb / up_t, 100 * cp_t / up_t, e2e,
                                  100 * cp_t / e2e))
        if SYNC:
            cs = f([c[1] for c in cps])
            us = f([u[2] for u in ups])
            out += ("; with sync: cp %.2f s (%.0f MB/s), upload %.2f s "
                    "(%.0f MB/s) = %.0f%%" % (cs, mb / cs, us, mb / us,
                                              100 * cs / us))
        print(out)
    line("median", statistics.median)
    line("best", min)
    print("builder RSS: %d kB idle, peak (VmHWM) %d kB over %d uploads of "
          "%d MiB" % (up.idle, hwm, RUNS, SIZE_MB))
    s.stop(up.p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
