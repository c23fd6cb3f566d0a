#!/usr/bin/python3
# test_builder_upload.py: nodepool-builder's UploadWorkers (lib/uploadworker.c)
# through the real program against a real ZooKeeper (TLS) and the fake
# cloud in a state directory, as another process (the launcher) sees it.
#
# Most scenarios write their READY builds straight into ZooKeeper and the
# images dir (the builder runs without build workers), so every rule of
# the upload pass can be set up exactly: the upload of a ready build to
# every provider that lists it (records, ids, external names from
# image-name-format, metadata, the cloud's copy), statsd, what is skipped
# (no local file, a format the build lacks, a paused provider image, an
# upload lock someone else holds, a build already uploaded), the
# post-upload-hook (success; failure: record failed, cloud image deleted,
# retried), image-upload-timeout, retry after a failed upload, a builder
# stopped mid-upload, and a large sparse image copied with constant memory.
# One scenario goes through a real build (fake-dib-cmd) first.
#
# env: as launcherlib/builderlib.
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import builderlib as bl  # noqa: E402
import launcherlib as ll  # noqa: E402
from launcherlib import check, wait_for  # noqa: E402
from kazoo.recipe.lock import Lock  # noqa: E402


class UploadScenario(bl.BuilderScenario):
    """A builder scenario whose providers carry the upload keys."""

    def write_upload_config(self, providers, images=None, dib=False):
        """PROVIDERS: dicts with name, images ([names] or {name: {keys}}),
        keys (provider keys), fake (fake: options). IMAGES: {name: {keys}}
        of diskimages (default: img). DIB: images built by fake-dib-cmd."""
        lines = self.config_head() + ["labels:", "  - name: small",
                                      "diskimages:"]
        for name, keys in (images or {"img": {}}).items():
            lines.append("  - name: %s" % name)
            if dib:
                lines += ["    dib-cmd: %s" % bl.FAKE_DIB,
                          "    elements: [fake-base]"]
            for k, v in keys.items():
                lines.append("    %s: %s" % (k, json.dumps(v)))
        lines.append("providers:")
        for p in providers:
            lines += ["  - name: %s" % p["name"], "    cloud: fake"]
            for k, v in p.get("keys", {}).items():
                lines.append("    %s: %s" % (k, json.dumps(v)))
            lines += ["    fake:", "      state-dir: %s" % self.state_dir]
            for k, v in p.get("fake", {}).items():
                lines.append("      %s: %s" % (k, json.dumps(v)))
            lines.append("    diskimages:")
            imgs = p.get("images", ["img"])
            if isinstance(imgs, list):
                imgs = {i: {} for i in imgs}
            for name, keys in imgs.items():
                lines.append("      - name: %s" % name)
                for k, v in keys.items():
                    lines.append("        %s: %s" % (k, json.dumps(v)))
        self.config = ll.write_file(os.path.join(self.dir, "nodepool.yaml"),
                                    "\n".join(lines) + "\n")
        return self.config

    def kick(self):
        """A new mtime: the builder reloads within a second and wakes its
        upload workers (a pass right away instead of in 10 s)."""
        t = time.time() + 1
        os.utime(self.config, (t, t))

    def start_uploader(self, workers=2, env=None):
        """A builder of upload workers only, once its janitor's first pass
        is done: a build added during that pass (add_build writes the files
        before the record) was taken for a leftover and its files deleted,
        and the test waited in vain for its upload (seen once in a run)."""
        p = self.start(args=["--build-workers", "0", "--upload-workers",
                             str(workers)], env=env)
        check(wait_for(lambda: "Cleanup pass done" in self.log(p), 30,
                       "the janitor's first pass"),
              "%s: the janitor's first pass" % self.name)
        return p

    def add_build(self, image="img", formats=("qcow2",), files=None,
                  size=4096, state="ready", t=None, **fields):
        """A build record (and its files FILES, default FORMATS, of SIZE
        bytes) as a builder on this host would have left it."""
        bid = uuid.uuid4().hex
        rec = {"state": state, "state_time": t or time.time(),
               "builder": "here", "builder_id": "x",
               "formats": ",".join(sorted(formats)), "username": "zuul",
               "python_path": "/usr/bin/python3", "shell_type": None}
        rec.update(fields)
        os.makedirs(self.images_dir, exist_ok=True)
        for ext in (formats if files is None else files):
            with open(os.path.join(self.images_dir, "%s-%s.%s"
                                   % (image, bid, ext)), "wb") as f:
                f.write(os.urandom(size))
        self.kz.create("/nodepool/images/%s/builds/%s" % (image, bid),
                       json.dumps(rec).encode(), makepath=True)
        return bid


    def wait_upload(self, image, bid, provider, state="ready",
                    timeout=60):
        """The first upload in STATE; (id, record) or (None, None)."""
        def find():
            for k, v in self.uploads(image, bid, provider).items():
                if v.get("state") == state:
                    return (k, v)
            return None
        r = wait_for(find, timeout, "%s upload of %s-%s to %s"
                     % (state, image, bid, provider))
        return r or (None, None)

    def cloud(self):
        """{image id: record} of the fake cloud's uploaded images."""
        d = os.path.join(self.state_dir, "images")
        out = {}
        for n in os.listdir(d) if os.path.isdir(d) else []:
            if n.endswith(".json"):
                with open(os.path.join(d, n)) as f:
                    rec = json.load(f)
                out[rec["id"]] = rec
        return out

    def cloud_files(self):
        d = os.path.join(self.state_dir, "images")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def hook(self, fail=False):
        """A post-upload-hook recording its arguments in hook.calls; it
        exits 3 while hook.fail exists."""
        path = os.path.join(self.dir, "hook.sh")
        self.hook_calls = os.path.join(self.dir, "hook.calls")
        self.hook_fail = os.path.join(self.dir, "hook.fail")
        with open(path, "w") as f:
            f.write("#!/bin/sh\necho \"$@\" >> %s\necho hook-out\n"
                    "echo hook-err >&2\n[ -e %s ] && exit 3\nexit 0\n"
                    % (self.hook_calls, self.hook_fail))
        os.chmod(path, 0o755)
        if fail:
            open(self.hook_fail, "w").close()
        return path

    def calls(self):
        try:
            with open(self.hook_calls) as f:
                return [line.split() for line in f.read().splitlines()]
        except FileNotFoundError:
            return []


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def test_upload_records_names_metadata(zk):
    s = UploadScenario(zk, "up-records")
    sd = ll.Statsd()
    try:
        s.write_upload_config(
            images={"img": {"metadata": {"a": "1", "b": "2"}}},
            providers=[
                {"name": "fake-a", "keys": {
                    "image-name-format": "{image_name}-{upload_id}-x"},
                 "images": {"img": {"meta": {"b": "over", "c": "3"}}}},
                {"name": "fake-b"}])
        p = s.start_uploader(env=sd.env())
        t0 = int(time.time())
        bid = s.add_build(shell_type="sh")
        ua, ra = s.wait_upload("img", bid, "fake-a")
        ub, rb = s.wait_upload("img", bid, "fake-b")
        t1 = int(time.time()) + 1
        if not check(ra and rb, "both providers got a ready upload"):
            return
        check(ua == "0000000001" and ub == "0000000001",
              "10-digit sequential ids (%s, %s)" % (ua, ub))
        check(ra["external_name"] == "img-0000000001-x",
              "image-name-format with upload_id (%s)" % ra["external_name"])
        ts = rb["external_name"].rpartition("-")[2]
        check(rb["external_name"].startswith("img-") and ts.isdigit()
              and t0 <= int(ts) <= t1,
              "default {image_name}-{timestamp} (%s)" % rb["external_name"])
        for r in (ra, rb):
            check(r["format"] == "qcow2" and r["username"] == "zuul" and
                  r["python_path"] == "/usr/bin/python3" and
                  r["shell_type"] == "sh",
                  "format and the build's connection fields: %s" % r)
        cloud = s.cloud()
        ca, cb = cloud.get(ra["external_id"]), cloud.get(rb["external_id"])
        check(ca and cb, "both images are in the shared cloud")
        if ca and cb:
            check(ca["name"] == ra["external_name"], "cloud name")
            check(ca["metadata"] == {
                "a": "1", "b": "over", "c": "3", "nodepool_build_id": bid,
                "nodepool_upload_id": ua,
                "nodepool_provider_name": "fake-a"},
                "metadata: diskimage's overlaid by the provider's meta, "
                "plus ours: %s" % ca["metadata"])
            check(cb["metadata"]["b"] == "2" and
                  cb["metadata"]["nodepool_provider_name"] == "fake-b",
                  "fake-b's metadata: %s" % cb["metadata"])
            src = os.path.join(s.images_dir, "img-%s.qcow2" % bid)
            dst = os.path.join(s.state_dir, "images", "%s.qcow2"
                               % ra["external_id"])
            check(same_bytes(src, dst), "the cloud's copy is the image")
        key = "nodepool.image_update.img.fake-a"
        wait_for(lambda: sd.values(key, "c"), 10, "statsd counter")
        check(sd.values(key, "c") == [1.0] and len(sd.values(key, "ms")) == 1,
              "statsd %s: one timer and one counter" % key)
        # Another pass uploads nothing more.
        s.kick()
        time.sleep(2.5)
        check(len(s.uploads("img", bid, "fake-a")) == 1 and
              len(s.uploads("img", bid, "fake-b")) == 1,
              "a build with a ready upload is not uploaded again")
        rc, out, err = s.cli("image-list")
        check(rc == 0 and ra["external_id"] in out,
              "image-list shows the upload")
        s.stop(p)
    finally:
        sd.close()
        s.close()


def test_skipped_and_newest_only(zk):
    s = UploadScenario(zk, "up-skip")
    try:
        s.write_upload_config(
            images={"img": {}, "raw-only": {"formats": ["raw"]},
                    "paused": {}, "other": {}},
            providers=[{"name": "fake-a", "images": {
                "img": {}, "raw-only": {}, "other": {},
                "paused": {"pause": True}}}])
        # Files missing here (built on another host); a format the build
        # lacks; a paused provider image; an older ready build.
        nofile = s.add_build("img", files=(), t=time.time() - 100)
        raw = s.add_build("raw-only", formats=("raw",))
        paused = s.add_build("paused")
        old = s.add_build("other", t=time.time() - 50)
        new = s.add_build("other")
        lock = Lock(s.kz, "/nodepool/images/img/builds/%s/providers/fake-a/"
                    "images/lock" % nofile)
        p = s.start_uploader()
        s.wait_upload("other", new, "fake-a")
        s.kick()
        time.sleep(2.5)
        check(not s.uploads("img", nofile, "fake-a"),
              "no upload without the local file")
        check(not s.uploads("raw-only", raw, "fake-a"),
              "no upload when the build lacks the provider's image-type")
        check(not s.uploads("paused", paused, "fake-a"),
              "no upload of a paused provider image")
        check(not s.uploads("other", old, "fake-a"),
              "only the newest ready build is uploaded")
        # The file appears, but someone holds the upload lock.
        with open(os.path.join(s.images_dir, "img-%s.qcow2" % nofile),
                  "wb") as f:
            f.write(b"x" * 100)
        check(lock.acquire(timeout=10), "the test holds the upload lock")
        s.kick()
        time.sleep(2.5)
        check(not s.uploads("img", nofile, "fake-a"),
              "no upload while another holds the upload lock")
        lock.release()
        s.kick()
        check(s.wait_upload("img", nofile, "fake-a")[0],
              "uploaded once the lock is free")
        # Unpaused: uploaded.
        s.write_upload_config(
            images={"img": {}, "raw-only": {"formats": ["raw"]},
                    "paused": {}, "other": {}},
            providers=[{"name": "fake-a", "images": [
                "img", "raw-only", "other", "paused"]}])
        check(s.wait_upload("paused", paused, "fake-a")[0],
              "uploaded once the provider image is unpaused")
        s.stop(p)
    finally:
        s.close()


def test_hook(zk):
    s = UploadScenario(zk, "up-hook")
    try:
        hook = s.hook(fail=True)
        s.write_upload_config(providers=[{
            "name": "fake-a", "keys": {"post-upload-hook": hook}}])
        p = s.start_uploader(workers=1)
        bid = s.add_build()
        uid, rec = s.wait_upload("img", bid, "fake-a", "failed")
        if not check(rec, "a failing hook fails the upload"):
            return
        check(set(rec) >= {"state", "state_time"} and
              all(rec.get(k) is None for k in
                  ("external_id", "external_name", "format", "username",
                   "python_path", "shell_type")),
              "a bare failed record: %s" % rec)
        calls = s.calls()
        src = os.path.join(s.images_dir, "img-%s.qcow2" % bid)
        # (A wake-up that came during the pass may have retried already.)
        check(len(calls) >= 1 and calls[0][0] == "fake-a" and
              len(calls[0][1]) == 32 and calls[0][2] == src,
              "hook run as <hook> <provider> <external_id> <file>: %s"
              % calls)
        check(wait_for(lambda: not s.cloud(), 10, "cloud image deleted"),
              "the failed upload's cloud image is deleted")
        log = s.log(p)
        check("Post upload hook failed with exit code 3" in log and
              "hook-out" in log and "hook-err" in log,
              "the hook's exit code and output are logged")
        # Retried: the next pass uploads again and the hook passes.
        os.unlink(s.hook_fail)
        s.kick()
        uid2, rec2 = s.wait_upload("img", bid, "fake-a")
        check(rec2 and uid2 != uid, "retried as a new upload (%s)" % uid2)
        if rec2:
            check(list(s.cloud()) == [rec2["external_id"]],
                  "only the good image is in the cloud")
            check(s.calls()[-1][1] == rec2["external_id"],
                  "the hook saw the new image")
            check("Post upload hook success with exit code 0" in s.log(p),
                  "hook success logged")
        s.stop(p)
    finally:
        s.close()


def test_timeout_and_retry(zk):
    s = UploadScenario(zk, "up-timeout")
    try:
        s.write_upload_config(providers=[{
            "name": "fake-a", "keys": {"image-upload-timeout": 1},
            "fake": {"upload-delay": 30}}])
        p = s.start_uploader(workers=1)
        bid = s.add_build()
        t0 = time.monotonic()
        uid, rec = s.wait_upload("img", bid, "fake-a", "failed")
        check(rec, "an upload over image-upload-timeout fails")
        check(time.monotonic() - t0 < 20, "after the timeout, not the delay")
        # (A retry may be copying already: at most its partial file.)
        parts = [n for n in s.cloud_files() if n.endswith(".part")]
        busy = [u for u in s.uploads("img", bid, "fake-a").values()
                if u["state"] == "uploading"]
        check(not s.cloud() and len(parts) <= len(busy),
              "nothing of it is left in the cloud: %s" % s.cloud_files())
        check("Timeout waiting for image" in s.log(p), "timeout logged")
        # A cloud that fails uploads; then one that does not: retried.
        s.write_upload_config(providers=[{
            "name": "fake-a", "fake": {"upload-failure-rate": 1}}])
        wait_for(lambda: len([u for u in s.uploads("img", bid,
                                                    "fake-a").values()
                              if u["state"] == "failed"]) >= 2, 30,
                 "a second failed upload")
        s.write_upload_config(providers=[{"name": "fake-a"}])
        uid3, rec3 = s.wait_upload("img", bid, "fake-a")
        check(rec3, "retried after failures and ready")
        if rec3:
            check(list(s.cloud()) == [rec3["external_id"]],
                  "one image in the cloud")
        s.stop(p)
    finally:
        s.close()


def test_stop_mid_upload(zk):
    s = UploadScenario(zk, "up-stop")
    try:
        s.write_upload_config(providers=[{
            "name": "fake-a", "fake": {"upload-delay": 60}}])
        p = s.start_uploader(workers=1)
        bid = s.add_build()
        uid, rec = s.wait_upload("img", bid, "fake-a", "uploading")
        check(rec, "upload in progress")
        t0 = time.monotonic()
        s.stop(p)
        check(time.monotonic() - t0 < 15, "SIGINT does not wait for uploads")
        u = s.uploads("img", bid, "fake-a")
        check(u.get(uid, {}).get("state") == "uploading",
              "the abandoned record stays uploading for the janitor: %s" % u)
        lock = Lock(s.kz, "/nodepool/images/img/builds/%s/providers/fake-a/"
                    "images/lock" % bid)
        check(lock.acquire(blocking=False), "its upload lock is free")
        lock.release()
        check(not s.cloud() and not [n for n in s.cloud_files()
                                     if n.endswith(".part")],
              "nothing left in the cloud")
    finally:
        s.close()


def vm_hwm_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def test_large_sparse_image(zk):
    s = UploadScenario(zk, "up-big")
    try:
        s.write_upload_config(providers=[{"name": "fake-a"}])
        p = s.start_uploader(workers=1)
        time.sleep(1)
        before = vm_hwm_kb(p.pid)
        bid = uuid.uuid4().hex
        path = os.path.join(s.images_dir, "img-%s.qcow2" % bid)
        size = 2 << 30
        os.makedirs(s.images_dir, exist_ok=True)
        with open(path, "wb") as f:
            # 1 MiB of data every 128 MiB, holes between.
            for off in range(0, size, 128 << 20):
                f.seek(off)
                f.write(os.urandom(1 << 20))
            f.truncate(size)
        s.kz.create("/nodepool/images/img/builds/%s" % bid, json.dumps({
            "state": "ready", "state_time": time.time(),
            "formats": "qcow2"}).encode(), makepath=True)
        uid, rec = s.wait_upload("img", bid, "fake-a", timeout=120)
        after = vm_hwm_kb(p.pid)
        check(rec, "a 2 GiB sparse image is uploaded")
        if rec:
            dst = os.path.join(s.state_dir, "images", "%s.qcow2"
                               % rec["external_id"])
            st = os.stat(dst)
            check(st.st_size == size, "full size")
            check(st.st_blocks * 512 < 64 << 20, "holes stay holes")
            check(same_bytes(path, dst), "same bytes")
        print("builder VmHWM %s kB before, %s kB after a %d MiB upload"
              % (before, after, size >> 20))
        check(after is not None and before is not None and
              after - before < 16 * 1024,
              "the builder's peak memory hardly moves (%s -> %s kB)"
              % (before, after))
        s.stop(p)
    finally:
        s.close()


def test_after_real_build(zk):
    s = UploadScenario(zk, "up-dib")
    try:
        s.write_upload_config(providers=[{"name": "fake-a"}], dib=True)
        p = s.start(args=["--upload-workers", "1"])
        builds = s.wait_builds("img", "ready", timeout=60)
        if not check(builds, "fake-dib-cmd built the image"):
            return
        bid = list(builds)[0]
        uid, rec = s.wait_upload("img", bid, "fake-a")
        check(rec and rec["external_id"] in s.cloud(),
              "the build is uploaded to the cloud")
        s.stop(p)
    finally:
        s.close()


if __name__ == "__main__":
    sys.exit(ll.run([test_upload_records_names_metadata,
                     test_skipped_and_newest_only, test_hook,
                     test_timeout_and_retry, test_stop_mid_upload,
                     test_large_sparse_image, test_after_real_build]))
