#!/usr/bin/python3
# test_janitor.py: the builder's janitor end to end, with real processes:
# a nodepool-builder (no build or upload workers: only its janitor works),
# records written by kazoo as upstream's Python builder writes them, kazoo
# holding an upload lock as a live Python uploader would, our nodepool CLI
# marking builds and uploads deleting (which wakes the janitor through the
# builder's watch), the fake cloud in a state directory shared by all of
# them, and image files in the builder's images-dir.
#
# A pass is seen through the builder's debug log ("Cleanup pass done");
# a pass is made to happen by writing a `deleting` record, which wakes the
# janitor at once (the 60 s timer never has to run).
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launcherlib  # noqa: E402
from launcherlib import (BUILD, check, nodepool, run, sanitizer_report,  # noqa: E402
                         wait_for)
from kazoo.recipe.lock import Lock  # noqa: E402

BUILDER = os.path.join(BUILD, "nodepool-builder")
PASS_DONE = "CleanupWorker.0: Cleanup pass done"


class Builder:
    """A chroot, an images-dir, a fake cloud, a config and one
    nodepool-builder."""

    def __init__(self, zk, name):
        self.zk = zk
        self.name = name
        self.chroot = "/t-janitor-%s-%s" % (name, uuid.uuid4().hex[:8])
        self.dir = tempfile.mkdtemp(prefix="np-janitor-%s." % name)
        self.images = os.path.join(self.dir, "images")
        self.cloud = os.path.join(self.dir, "cloud")
        os.makedirs(self.images)
        os.makedirs(os.path.join(self.cloud, "images"))
        root = zk.client()
        root.ensure_path(self.chroot)
        root.stop()
        self.kz = zk.client(self.chroot)
        self.config = os.path.join(self.dir, "nodepool.yaml")
        host, port = zk.hosts.split(":")
        with open(self.config, "w") as f:
            f.write("""zookeeper-servers:
  - host: %s
    port: %s
    chroot: %s
zookeeper-tls:
  ca: %s
  cert: %s
  key: %s
images-dir: %s
build-log-dir: %s/logs
diskimages:
  - name: img
providers:
  - name: fake-a
    cloud: fake
    fake:
      state-dir: %s
    diskimages:
      - name: img
""" % (host, port, self.chroot, zk.ca, zk.cert, zk.key, self.images,
                self.dir, self.cloud))
        self.proc = None
        self.logfile = os.path.join(self.dir, "builder.log")

    # ---- records, as upstream's builder writes them ----

    def build(self, bid, state, t):
        self.kz.create("/nodepool/images/img/builds/%s" % bid,
                       json.dumps({"state": state, "state_time": t,
                                   "builder": "py-builder",
                                   "formats": "qcow2"}).encode(),
                       makepath=True)

    def cloud_image(self, bid, uid, provider="fake-a"):
        iid = uuid.uuid4().hex
        with open(os.path.join(self.cloud, "images", iid + ".json"),
                  "w") as f:
            json.dump({"id": iid, "name": "img-%s" % uid, "status": "READY",
                       "format": "qcow2", "size": 0,
                       "metadata": {"nodepool_provider_name": provider,
                                    "nodepool_build_id": bid,
                                    "nodepool_upload_id": uid}}, f)
        return iid

    def upload(self, bid, uid, state, t, image=True):
        iid = self.cloud_image(bid, uid) if image else None
        self.kz.create(self.upload_path(bid, uid),
                       json.dumps({"state": state, "state_time": t,
                                   "external_id": iid,
                                   "external_name": None,
                                   "format": "qcow2"}).encode(),
                       makepath=True)
        return iid

    @staticmethod
    def upload_path(bid, uid):
        return ("/nodepool/images/img/builds/%s/providers/fake-a/images/%s"
                % (bid, uid))

    def has(self, path):
        return self.kz.exists(path) is not None

    def in_cloud(self, iid):
        return os.path.exists(os.path.join(self.cloud, "images",
                                           iid + ".json"))

    def touch(self, name):
        path = os.path.join(self.images, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("x")

    def local(self, name):
        return os.path.exists(os.path.join(self.images, name))

    # ---- the process ----

    def start(self):
        log = open(self.logfile, "w")
        self.proc = subprocess.Popen(
            [BUILDER, "-d", "-c", self.config, "--build-workers", "0",
             "--upload-workers", "0"],
            stdout=log, stderr=subprocess.STDOUT)

    def log(self):
        with open(self.logfile) as f:
            return f.read()

    def passes(self):
        return self.log().count(PASS_DONE)

    def wait_passes(self, n, what):
        return wait_for(lambda: self.passes() >= n, what="%s: %s"
                        % (self.name, what))

    def kick(self, bid):
        """Make one pass happen now, started after everything written so
        far, and wait for its end: a `deleting` record wakes the janitor;
        the pass that deletes it is done at the first "pass done" after
        its deletion in the log. Returns the number of passes done then."""
        uid = "%010d" % (9000000000 + len(self.log()) % 999999)
        path = self.upload_path(bid, uid)
        line = "Deleting image upload: img/%s/fake-a/%s" % (bid, uid)
        self.kz.create(path, json.dumps({"state": "deleting",
                                         "state_time": 1}).encode(),
                       makepath=True)
        wait_for(lambda: line in self.log(), what="%s: the kick record "
                 "deleted" % self.name)
        wait_for(lambda: PASS_DONE in self.log().split(line, 1)[1],
                 what="%s: the kicked pass done" % self.name)
        return self.passes()

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                rc = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            check(rc == 0, "%s: builder exits 0 on SIGINT (rc %s)"
                  % (self.name, rc))
        if self.proc:
            rep = sanitizer_report(self.log())
            check(rep is None, "%s: sanitizer report: %s" % (self.name, rep))
        try:
            self.kz.stop()
        except Exception:
            pass
        if launcherlib.FAILED == 0 and not os.environ.get("NP_TEST_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print("kept %s" % self.dir, file=sys.stderr)


def test_kazoo_records_and_locks(zk):
    """What upstream's Python builder left: three READY builds, the oldest
    with local files. Kazoo holds the upload lock of the newest build
    (a live uploader), the middle one has an `uploading` record nobody
    uploads. After the pass at start: the oldest build is gone (record,
    cloud image, files), the dead upload's record is gone, the live one
    stays, the two newest builds and their images stay."""
    b = Builder(zk, "kazoo")
    try:
        b.build("aa1", "ready", 1)
        b.build("aa2", "ready", 2)
        b.build("aa3", "ready", 3)
        i1 = b.upload("aa1", "0000000001", "ready", 1)
        i2 = b.upload("aa2", "0000000001", "ready", 2)
        i3 = b.upload("aa3", "0000000001", "ready", 3)
        lock = Lock(b.kz, "/nodepool/images/img/builds/aa3/providers/"
                    "fake-a/images/lock")
        check(lock.acquire(blocking=False), "kazoo takes the upload lock")
        b.upload("aa3", "0000000002", "uploading", 4, image=False)
        b.upload("aa2", "0000000002", "uploading", 4, image=False)
        for n in ("img-aa1.qcow2", "img-aa1.qcow2.md5", "img-aa1.d/m",
                  "img-aa3.qcow2"):
            b.touch(n)
        b.start()
        check(b.wait_passes(1, "the first pass"), "a pass at start")
        check(not b.has("/nodepool/images/img/builds/aa1"),
              "the oldest READY build is deleted")
        check(not b.in_cloud(i1), "its cloud image is deleted")
        check(not b.local("img-aa1.qcow2") and
              not b.local("img-aa1.qcow2.md5") and not b.local("img-aa1.d"),
              "its local files are deleted")
        check(b.local("img-aa3.qcow2"), "a kept build's file stays")
        check(not b.has(b.upload_path("aa2", "0000000002")),
              "an uploading record with a free lock is deleted")
        check(b.has(b.upload_path("aa3", "0000000002")),
              "an uploading record whose lock kazoo holds stays")
        check(b.in_cloud(i2) and b.in_cloud(i3),
              "the two newest builds' images stay")
        lock.release()
        b.kick("aa3")
        check(not b.has(b.upload_path("aa3", "0000000002")),
              "once kazoo released the lock, the record is deleted")
    finally:
        b.close()


def test_cli_deletes_and_leaks(zk):
    """Our CLI marks a build (dib-image-delete) and an upload (image-delete)
    deleting: the janitor, woken, deletes them in the cloud, in ZooKeeper
    and on disk. A cloud image with our metadata and no record survives
    the first pass that sees it and is deleted by the second."""
    b = Builder(zk, "cli")
    try:
        b.build("bb1", "ready", 1)
        b.build("bb2", "ready", 2)
        i1 = b.upload("bb1", "0000000001", "ready", 1)
        i2 = b.upload("bb2", "0000000001", "ready", 2)
        b.touch("img-bb1.qcow2")
        b.start()
        b.wait_passes(1, "the first pass")
        check(b.in_cloud(i1) and b.in_cloud(i2), "both builds kept")

        rc, out, err = nodepool(b.config, "dib-image-delete", "img-bb1")
        check(rc == 0, "dib-image-delete exits 0 (%s %s)" % (out, err))
        check(wait_for(lambda: not b.has("/nodepool/images/img/builds/bb1"),
                       what="bb1 deleted"),
              "a build marked deleting by the CLI is deleted")
        check(not b.in_cloud(i1), "with its cloud image")
        check(wait_for(lambda: not b.local("img-bb1.qcow2"),
                       what="bb1's file deleted"), "and its local file")

        rc, out, err = nodepool(b.config, "image-delete", "--provider",
                                "fake-a", "--image", "img", "--build-id",
                                "bb2", "--upload-id", "0000000001")
        check(rc == 0, "image-delete exits 0 (%s %s)" % (out, err))
        check(wait_for(lambda: not b.has(b.upload_path("bb2", "0000000001")),
                       what="bb2's upload deleted"),
              "an upload marked deleting by the CLI is deleted")
        check(not b.in_cloud(i2), "with its cloud image")
        check(b.has("/nodepool/images/img/builds/bb2"),
              "its build (kept) stays")

        leaked = b.cloud_image("bb2", "0000000042")
        before = b.passes()
        done = b.kick("bb2")
        if done == before + 1:
            # Only then is the kicked pass the first to have seen it.
            check(b.in_cloud(leaked), "a leaked image survives the first "
                  "pass that sees it")
        b.kick("bb2")
        check(not b.in_cloud(leaked), "and is deleted by the second")
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(run([test_kazoo_records_and_locks, test_cli_deletes_and_leaks]))
