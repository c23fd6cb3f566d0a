#!/usr/bin/python3
# test_janitor.py: the builder's janitor end to end, with real processes:
# nodepool-builder (with no build or upload workers only its janitor
# works), records written by kazoo as upstream's Python builder writes
# them, kazoo holding an upload lock as a live Python uploader would, our
# nodepool CLI marking builds and uploads deleting (which wakes the janitor
# through the builder's watch), the fake cloud in a state directory shared
# by all of them, image files in the builder's images-dir; and, last, real
# builds by the BuildWorker (fake-dib-cmd) cleaned up by the janitor.
#
# A pass is seen through the builder's debug log ("Cleanup pass done");
# a pass is made to happen by writing a `deleting` record, which wakes the
# janitor at once (the 60 s timer never has to run).
import json
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from builderlib import BuilderScenario, image_yaml  # noqa: E402
from launcherlib import check, run, wait_for  # noqa: E402
from kazoo.recipe.lock import Lock  # noqa: E402

PASS_DONE = "CleanupWorker.0: Cleanup pass done"


class Janitor(BuilderScenario):
    """A builder scenario with image img listed by provider fake-a, and
    what the janitor's tests write and look at."""

    def __init__(self, zk, name):
        super().__init__(zk, "janitor-" + name)
        os.makedirs(self.images_dir, exist_ok=True)
        self.cloud = self.state_dir
        os.makedirs(os.path.join(self.cloud, "images"), exist_ok=True)
        self.write_config([image_yaml("img", formats=("qcow2",))],
                          providers=[("fake-a", ["img"], None)])
        self.proc = None

    def start_janitor(self, build_workers=0):
        self.proc = self.start(args=("--build-workers", str(build_workers),
                                     "--upload-workers", "0"),
                               interval_ms=200)
        return self.proc

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
        path = os.path.join(self.images_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("x")

    def local(self, name):
        return os.path.exists(os.path.join(self.images_dir, name))

    # ---- the process ----

    def blog(self):
        return self.log(self.proc)

    def passes(self):
        return self.blog().count(PASS_DONE)

    def wait_passes(self, n, what):
        return wait_for(lambda: self.passes() >= n, what="%s: %s"
                        % (self.name, what))

    def kick(self, bid):
        """Make one pass happen now, started after everything written so
        far, and wait for its end: a `deleting` record wakes the janitor;
        the pass that deletes it is done at the first "pass done" after
        its deletion in the log. Returns the number of passes done then."""
        uid = "%010d" % (9000000000 + len(self.blog()) % 999999)
        path = self.upload_path(bid, uid)
        line = "Deleting image upload: img/%s/fake-a/%s" % (bid, uid)
        self.kz.create(path, json.dumps({"state": "deleting",
                                         "state_time": 1}).encode(),
                       makepath=True)
        wait_for(lambda: line in self.blog(), what="%s: the kick record "
                 "deleted" % self.name)
        wait_for(lambda: PASS_DONE in self.blog().split(line, 1)[1],
                 what="%s: the kicked pass done" % self.name)
        return self.passes()


def test_kazoo_records_and_locks(zk):
    """What upstream's Python builder left: three READY builds, the oldest
    with local files. Kazoo holds the upload lock of the newest build
    (a live uploader), the middle one has an `uploading` record nobody
    uploads. After the pass at start: the oldest build is gone (record,
    cloud image, files), the dead upload's record is gone, the live one
    stays, the two newest builds and their images stay."""
    b = Janitor(zk, "kazoo")
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
        b.start_janitor()
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
    b = Janitor(zk, "cli")
    try:
        b.build("bb1", "ready", 1)
        b.build("bb2", "ready", 2)
        i1 = b.upload("bb1", "0000000001", "ready", 1)
        i2 = b.upload("bb2", "0000000001", "ready", 2)
        b.touch("img-bb1.qcow2")
        b.start_janitor()
        b.wait_passes(1, "the first pass")
        check(b.in_cloud(i1) and b.in_cloud(i2), "both builds kept")

        rc, out, err = b.cli("dib-image-delete", "img-bb1")
        check(rc == 0, "dib-image-delete exits 0 (%s %s)" % (out, err))
        check(wait_for(lambda: not b.has("/nodepool/images/img/builds/bb1"),
                       what="bb1 deleted"),
              "a build marked deleting by the CLI is deleted")
        check(not b.in_cloud(i1), "with its cloud image")
        check(wait_for(lambda: not b.local("img-bb1.qcow2"),
                       what="bb1's file deleted"), "and its local file")

        rc, out, err = b.cli("image-delete", "--provider", "fake-a",
                             "--image", "img", "--build-id", "bb2",
                             "--upload-id", "0000000001")
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


def test_real_builds(zk):
    """Three builds by the BuildWorker (nodepool image-build, fake-dib-cmd):
    the janitor keeps the two newest with their files and deletes the
    oldest's record, image files, checksums and manifest."""
    b = Janitor(zk, "builds")
    try:
        b.start_janitor(build_workers=1)
        # The first build is the BuildWorker's own (the image has no ready
        # build): a request made while it runs would outlive it and build
        # once more, so the requests come after it.
        check(b.wait_builds("img", "ready", 1), "build 1 ready")
        for n in (2, 3):
            rc, out, err = b.cli("image-build", "img")
            check(rc == 0, "image-build exits 0 (%s %s)" % (out, err))
            check(b.wait_builds("img", "ready", n), "build %d ready" % n)
            wait_for(lambda: not b.requested("img"), what="request done")
        ready = sorted(b.builds_in("img", "ready").items(),
                       key=lambda kv: kv[1]["state_time"])
        oldest = ready[0][0]
        files = b.image_files("img", oldest)
        check("img-%s.qcow2" % oldest in files and
              "img-%s.d" % oldest in files,
              "the oldest build has its files (%s)" % files)
        b.kick(ready[-1][0])
        check(oldest not in b.builds("img"), "the oldest build is deleted")
        check(b.image_files("img", oldest) == [],
              "with its files (%s)" % b.image_files("img", oldest))
        for bid, _ in ready[1:]:
            check(bid in b.builds_in("img", "ready") and
                  "img-%s.qcow2" % bid in b.image_files("img", bid),
                  "a newer build stays with its files")
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(run([test_kazoo_records_and_locks, test_cli_deletes_and_leaks,
                  test_real_builds]))
