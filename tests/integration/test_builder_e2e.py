#!/usr/bin/python3
# test_builder_e2e.py: nodepool-builder end to end with real processes on
# a real (TLS) ZooKeeper: our builder, our launcher and our CLI, the
# project's fake dib-cmd (tests/fixtures/dib/fake-dib-cmd) and the fake
# cloud in a state directory that the builder uploads to and the launcher
# boots from (issue 4, "Shown end to end in tests"):
#   1. test_flow: `nodepool image-build` -> build -> upload -> the launcher
#      boots nodes (min-ready and a Zuul request) from the newest upload ->
#      a second build is used -> rollback with `nodepool image-delete` ->
#      the previous upload is used -> the janitor keeps the 2 newest builds
#      and deletes the rest (ZooKeeper, cloud, local files);
#   2. test_two_builders: two builder processes (own images-dirs, one
#      ZooKeeper, one cloud) share the images without building twice;
#   3. test_kill_mid_build, test_kill_mid_upload: SIGKILL while DIB runs
#      or while an upload is in flight; once restarted nothing is stuck;
#   4. test_failures, test_full_disk: a bad dib-cmd, a missing element, a
#      failing post-upload-hook and a full images-dir (a small tmpfs) each
#      end in a `failed` record with the reason logged, and the other
#      images still build and upload;
#   and test_stack_dump: SIGUSR2 mid-build names every thread and what
#   each worker does.
#
# Every wait is on a condition with a generous timeout (slow machines, the
# sanitizer build); nothing sleeps a fixed time. env: as launcherlib.
import json
import os
import re
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import builderlib as bl  # noqa: E402
import launcherlib as ll  # noqa: E402
from launcherlib import check, wait_for  # noqa: E402

PROVIDER = "fake-provider"
LABEL = "dib-small"	# requests (no min-ready: every one a new boot)
MIN_LABEL = "dib-min"	# min-ready
LONG = 120.0		# a build, an upload, a launch on a loaded machine
EXPIRY = 60.0		# a killed process's session expires (4 s) and more
ZK_TIMEOUT = 4.0	# zookeeper-timeout of these tests' daemons


def upload_path(image, bid, uid, provider=PROVIDER):
    return "/nodepool/images/%s/builds/%s/providers/%s/images/%s" % (
        image, bid, provider, uid)


class E2E(bl.BuilderScenario):
    """A BuilderScenario whose config also serves a launcher (labels,
    pools), with Zuul's side of the protocol from launcherlib."""

    request = ll.Scenario.request
    get_request = ll.Scenario.get_request
    wait_request = ll.Scenario.wait_request
    get_node = ll.Scenario.get_node
    set_node = ll.Scenario.set_node
    nodes = ll.Scenario.nodes
    instances = ll.Scenario.instances
    instance_records = ll.Scenario.instance_records
    lock_node = ll.Scenario.lock_node
    use_and_return = ll.Scenario.use_and_return

    def __init__(self, zk, name):
        super().__init__(zk, name)
        self.record = os.path.join(self.dir, "dib.rec")

    def e2e_config(self, images, providers, min_ready=0, fname="nodepool.yaml",
                   images_dir=None, log_dir=None):
        """IMAGES: image_yaml() texts. PROVIDERS: dicts with name, images
        (names; the first one's label is LABEL), and optional keys (more
        provider keys), fake (fake: options), pdi (more keys of every
        provider diskimage)."""
        lines = self.config_head(images_dir, log_dir) + [
            "zookeeper-timeout: %.1f" % ZK_TIMEOUT,
            "labels:", "  - name: %s" % LABEL, "    min-ready: 0",
            "  - name: %s" % MIN_LABEL,
            "    min-ready: %d" % min_ready, "diskimages:"]
        lines += images
        lines.append("providers:")
        for p in providers:
            lines += ["  - name: %s" % p["name"], "    cloud: fake"]
            for k, v in p.get("keys", {}).items():
                lines.append("    %s: %s" % (k, v))
            lines += ["    fake:", "      state-dir: %s" % self.state_dir]
            for k, v in p.get("fake", {}).items():
                lines.append("      %s: %s" % (k, v))
            lines.append("    diskimages:")
            for i in p["images"]:
                lines.append("      - name: %s" % i)
                for k, v in p.get("pdi", {}).items():
                    lines.append("        %s: %s" % (k, v))
            lines += ["    pools:", "      - name: main",
                      "        max-servers: 20", "        labels:"]
            for label in (LABEL, MIN_LABEL):
                lines += ["          - name: %s" % label,
                          "            diskimage: %s" % p["images"][0],
                          "            min-ram: 1024"]
        path = ll.write_file(os.path.join(self.dir, fname),
                             "\n".join(lines) + "\n")
        if fname == "nodepool.yaml":
            self.config = path
        return path

    def start_builder(self, config=None, cleanup_ms=None, args=()):
        env = {}
        if cleanup_ms:
            env["NODEPOOL_BUILDER_TEST_CLEANUP_MS"] = str(cleanup_ms)
        return self.start(config=config, args=args, env=env,
                          interval_ms=500)

    def start_launcher(self, config=None):
        return self.spawn("launcher", [ll.LAUNCHER, "-d", "--no-webapp",
                                       "-c", config or self.config])

    # ---- records ----

    def uploads(self, image, bid, provider=PROVIDER):
        """{upload id: record} of build BID of IMAGE to PROVIDER."""
        return super().uploads(image, bid, provider)

    def uploads_in(self, image, bid, state, provider=PROVIDER):
        return {k: v for k, v in self.uploads(image, bid, provider).items()
                if v.get("state") == state}

    def wait_upload(self, image, bid, provider=PROVIDER, state="ready",
                    timeout=LONG):
        """The (id, record) of an upload of build BID in STATE."""
        r = wait_for(lambda: sorted(self.uploads_in(image, bid, state,
                                                    provider).items()),
                     timeout, "a %s upload of %s-%s to %s"
                     % (state, image, bid, provider))
        return r[-1] if r else (None, {})

    def cloud_image(self, iid):
        """The fake cloud's record of image IID, or None."""
        try:
            with open(os.path.join(self.state_dir, "images",
                                   iid + ".json")) as f:
                return json.load(f)
        except (OSError, ValueError, TypeError):
            return None

    def cloud_images(self):
        d = os.path.join(self.state_dir, "images")
        try:
            return sorted(f[:-5] for f in os.listdir(d)
                          if f.endswith(".json"))
        except FileNotFoundError:
            return []

    def dib_starts(self):
        """The fake dib-cmd's start records: (time, pid, pgid, args)."""
        try:
            with open(self.record) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for ln in lines:
            t, pid, pgid, args = (ln.split(" ", 3) + ["", "", ""])[:4]
            out.append((float(t), int(pid), int(pgid or 0), args))
        return out

    def reloads(self, p):
        return self.log(p).count("Configuration changed; reloading")

    def wait_reload(self, p, before):
        return check(wait_for(lambda: self.reloads(p) > before, LONG,
                              "config reload"), "%s: the builder reloads "
                     "its config" % self.name)

    # ---- nodes ----

    def node_of(self, rid, req=None):
        req = req or self.get_request(rid)
        if not req or not req.get("nodes"):
            return None, None
        nid = req["nodes"][0]
        return nid, self.get_node(nid)

    def instance_image(self, node):
        """What the fake cloud says node NODE boots (as seen before the
        node was returned, when launch_one gave it)."""
        if "_booted" in node:
            return node["_booted"]
        rec = self.instance_records().get(node.get("external_id") or "")
        return rec.get("image") if rec else None

    def launch_one(self, what):
        """A Zuul request for LABEL, fulfilled; its node returned to the
        pool (used) afterwards. Returns the node record."""
        rid = self.request([LABEL])
        req = self.wait_request(rid, timeout=LONG)
        check(req is not None and req["state"] == "fulfilled",
              "%s: request %s fulfilled (%s)" % (what, rid, req))
        if not req or req["state"] != "fulfilled":
            return {}
        _, node = self.node_of(rid, req)
        node = node or {}
        # Read the server now: once the node is used the launcher deletes
        # it.
        node["_booted"] = self.instance_image(node)
        self.use_and_return(rid, req)
        return node


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def fake_images(sc, names, **env):
    e = {"FAKE_DIB_RECORD": sc.record}
    e.update(env)
    return [bl.image_yaml(n, formats=None, env=e) for n in names]


# ---- 1. the whole flow ----

def check_boot(sc, node, image, bid, uid, ext, what):
    check(node.get("image_id") == upload_path(image, bid, uid),
          "%s: node image_id is the upload %s-%s/%s (%s)"
          % (what, bid, uid, image, node.get("image_id")))
    check(sc.instance_image(node) == ext,
          "%s: the cloud boots image %s (%s)"
          % (what, ext, sc.instance_image(node)))


def launch_on(sc, image, bid, uid, what):
    """Zuul requests until one gets a node booted from upload UID of
    build BID: the launcher learns of a new or deleted upload through its
    cache, a moment after ZooKeeper has it. {} if none in time."""
    want = upload_path(image, bid, uid)
    return wait_for(lambda: (lambda n: n if n.get("image_id") == want
                             else None)(sc.launch_one(what)),
                    LONG, "a node on %s-%s" % (image, bid)) or {}


def test_flow(zk):
    sc = E2E(zk, "flow")
    try:
        _flow(sc)
    finally:
        sc.close()


def _flow(sc):
    img = "img"
    prov = {"name": PROVIDER, "images": [img]}
    sc.e2e_config(fake_images(sc, [img]), [prov], min_ready=1)

    # The request comes first: the builder's first pass finds it.
    rc, out, err = sc.cli("image-build", img)
    check(rc == 0 and out == "", "image-build exits 0 silently (%d %r %r)"
          % (rc, out, err))
    check(sc.requested(img), "image-build writes request-build")
    b = sc.start_builder(cleanup_ms=1000)
    la = sc.start_launcher()

    b1 = sorted(sc.wait_builds(img, "ready", 1, LONG) or {"?": 0})[0]
    check(wait_for(lambda: not sc.requested(img), LONG, "request gone"),
          "the request-build marker goes once the build is ready")
    check(len(sc.dib_starts()) == 1, "one DIB run so far (%d)"
          % len(sc.dib_starts()))
    files = sc.image_files(img, b1)
    check("%s-%s.qcow2" % (img, b1) in files,
          "the qcow2 image is in images-dir (%s)" % files)
    check("Exit code: 0" in sc.build_log(img, b1), "build log: Exit code 0")
    u1, rec1 = sc.wait_upload(img, b1)
    e1 = rec1.get("external_id")
    ci = sc.cloud_image(e1) or {}
    md = ci.get("metadata", {})
    check(md.get("nodepool_build_id") == b1 and
          md.get("nodepool_upload_id") == u1 and
          md.get("nodepool_provider_name") == PROVIDER,
          "the cloud image of upload %s carries its ids (%s)" % (u1, md))
    rc, out, _ = sc.cli("image-list")
    rows = [r for r in ll.table_rows(out) if r[:2] == [b1, u1]]
    check(rc == 0 and rows and rows[0][2:4] == [PROVIDER, img] and
          rows[0][5] == e1 and rows[0][6] == "ready",
          "image-list shows the upload (%r)" % rows)

    # min-ready: a ready node from that upload, without any request.
    ready = wait_for(lambda: [n for n in sc.nodes().values()
                              if n.get("state") == "ready" and
                              MIN_LABEL in n.get("type", [])], LONG,
                     "a min-ready node")
    check(bool(ready), "min-ready: a ready %s node" % MIN_LABEL)
    if ready:
        check_boot(sc, ready[0], img, b1, u1, e1, "min-ready node")
    node = sc.launch_one("first build")
    check_boot(sc, node, img, b1, u1, e1, "request on the first build")

    # A second build, asked for while the builder runs (its watch).
    rc, _, _ = sc.cli("image-build", img)
    check(rc == 0, "second image-build exits 0")
    builds = sc.wait_builds(img, "ready", 2, LONG) or {}
    b2 = [k for k in builds if k != b1]
    b2 = b2[0] if b2 else "?"
    u2, rec2 = sc.wait_upload(img, b2)
    e2 = rec2.get("external_id")
    check(e2 and e2 != e1, "the second build is a new cloud image")
    node = launch_on(sc, img, b2, u2, "second build")
    check_boot(sc, node, img, b2, u2, e2, "request on the second build")

    # Rollback: pause uploads of the image (else the newest build would be
    # uploaded again, as upstream does), delete the newest upload.
    n = sc.reloads(b)
    prov_paused = dict(prov, pdi={"pause": "true"})
    sc.e2e_config(fake_images(sc, [img]), [prov_paused], min_ready=1)
    sc.wait_reload(b, n)
    rc, out, err = sc.cli("image-delete", "--provider", PROVIDER, "--image",
                          img, "--build-id", b2, "--upload-id", u2)
    check(rc == 0, "image-delete exits 0 (%r %r)" % (out, err))
    check(wait_for(lambda: not sc.uploads(img, b2) and
                   sc.cloud_image(e2) is None, LONG, "upload 2 deleted"),
          "rollback: upload %s and its cloud image deleted" % u2)
    node = launch_on(sc, img, b1, u1, "rollback")
    check_boot(sc, node, img, b1, u1, e1, "request after the rollback")
    check(not sc.uploads(img, b2), "paused: build %s not uploaded again"
          % b2)

    # Uploads again, two more builds: the janitor keeps the 2 newest.
    n = sc.reloads(b)
    sc.e2e_config(fake_images(sc, [img]), [prov], min_ready=1)
    sc.wait_reload(b, n)
    for i in (3, 4):
        rc, _, _ = sc.cli("image-build", img)
        check(rc == 0, "image-build %d exits 0" % i)
        check(wait_for(lambda: len(sc.dib_starts()) >= i and
                       not sc.requested(img), LONG, "build %d" % i),
              "build %d done" % i)
    builds = sc.builds_in(img, "ready")
    newest = sorted(builds, key=lambda k: builds[k]["state_time"])[-2:]
    b3, b4 = (newest + ["?", "?"])[:2]
    u4, rec4 = sc.wait_upload(img, b4)
    sc.wait_upload(img, b3)

    def cleaned():
        left = set(sc.builds(img))
        return left == {b3, b4} and not sc.image_files(img, b1) and \
            not sc.image_files(img, b2) and sc.cloud_image(e1) is None
    check(wait_for(cleaned, LONG, "old builds cleaned"),
          "janitor: only the 2 newest builds remain (%s), the old ones' "
          "files and cloud images are gone" % sorted(sc.builds(img)))
    imgs = sc.cloud_images()
    check(sorted(imgs) == sorted([r.get("external_id") for b_ in (b3, b4)
                                  for r in sc.uploads(img, b_).values()]),
          "the cloud holds exactly the kept builds' images (%s)" % imgs)
    check(sc.image_files(img, b3) and sc.image_files(img, b4),
          "the kept builds' files stay")
    node = launch_on(sc, img, b4, u4, "newest build")
    check_boot(sc, node, img, b4, u4, rec4.get("external_id"),
               "request on the newest build")
    check(len(sc.dib_starts()) == 4, "4 DIB runs in all (%d)"
          % len(sc.dib_starts()))
    sc.stop(la)
    sc.stop(b)


# ---- 2. two builders ----

def test_two_builders(zk):
    sc = E2E(zk, "two")
    try:
        _two_builders(sc)
    finally:
        sc.close()


def builder_dirs(sc, tag):
    d = os.path.join(sc.dir, tag)
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, "images"), os.path.join(d, "logs")


def build_passes(sc, p):
    return sc.log(p).count("Checking for manual image build requests")


def _two_builders(sc):
    names = ["img-a", "img-b", "img-c"]
    imgs = fake_images(sc, names, FAKE_DIB_SLEEP=1)
    prov = [{"name": PROVIDER, "images": names}]
    cfgs, procs = [], []
    for tag in ("A", "B"):
        idir, ldir = builder_dirs(sc, tag)
        cfgs.append(sc.e2e_config(imgs, prov, fname="%s.yaml" % tag,
                                  images_dir=idir, log_dir=ldir))
    sc.config = cfgs[0]
    for c in cfgs:
        procs.append(sc.start_builder(config=c))

    def all_uploaded():
        for n in names:
            r = sc.builds_in(n, "ready")
            if not r or not sc.uploads_in(n, list(r)[0], "ready"):
                return False
        return True
    check(wait_for(all_uploaded, LONG, "every image built and uploaded"),
          "two builders: every image built and uploaded")
    check(len(sc.dib_starts()) == len(names),
          "each image built once (%d DIB runs)" % len(sc.dib_starts()))
    ids = {}
    for n in names:
        bs = sc.builds(n)
        check(len(bs) == 1, "%s: one build record (%s)" % (n, bs))
        for bid, rec in bs.items():
            ids[n] = bid
            ups = sc.uploads(n, bid)
            check(len(ups) == 1, "%s: one upload (%s)" % (n, ups))
            # The upload came from the builder that has the files.
            has = [t for t in ("A", "B")
                   if os.path.exists(os.path.join(builder_dirs(sc, t)[0],
                                                  "%s-%s.qcow2" % (n, bid)))]
            check(len(has) == 1, "%s: the image is on one builder's disk "
                  "only (%s)" % (n, has))
    # A manual request both builders see: one build.
    rc, _, _ = sc.cli("image-build", "img-a")
    check(rc == 0, "image-build img-a")
    check(wait_for(lambda: len(sc.builds_in("img-a", "ready")) == 2 and
                   not sc.requested("img-a"), LONG, "the requested build"),
          "the requested build is done")
    # Both builders look again (two more passes each) and build nothing.
    marks = [build_passes(sc, p) for p in procs]
    check(wait_for(lambda: all(build_passes(sc, p) >= m + 2
                               for p, m in zip(procs, marks)), LONG,
                   "two more passes of both builders"),
          "both builders keep passing")
    check(len(sc.dib_starts()) == len(names) + 1,
          "the request built once (%d DIB runs)" % len(sc.dib_starts()))
    check(len(sc.builds("img-a")) == 2, "img-a: two builds (%s)"
          % sc.builds("img-a"))
    new = [b_ for b_ in sc.builds("img-a") if b_ != ids.get("img-a")]
    if new:
        sc.wait_upload("img-a", new[0])
        check(len(sc.uploads("img-a", new[0])) == 1,
              "the new build uploaded once")
    for p in procs:
        sc.stop(p)


# ---- 3. SIGKILL mid-build and mid-upload ----

def lock_free(sc, path):
    try:
        return not sc.kz.get_children(path)
    except Exception:
        return True		# no lock znode at all


def test_kill_mid_build(zk):
    sc = E2E(zk, "killbuild")
    try:
        _kill_mid_build(sc)
    finally:
        sc.close()


def _kill_mid_build(sc):
    img = "slow"
    prov = [{"name": PROVIDER, "images": [img]}]
    sc.e2e_config(fake_images(sc, [img], FAKE_DIB_SLEEP=600,
                              FAKE_DIB_PARTIAL=1), prov)
    b = sc.start_builder(cleanup_ms=1000)
    building = sc.wait_builds(img, "building", 1, LONG) or {}
    starts = wait_for(lambda: sc.dib_starts(), LONG, "DIB started")
    old = list(building)[0] if building else "?"
    check(wait_for(lambda: sc.image_files(img, old), LONG, "partial files"),
          "DIB wrote partial files")
    sc.kill(b)
    # The host "reboots": the orphaned DIB dies too.
    for s in starts or []:
        kill_group(s[2])
    check(sc.builds(img).get(old, {}).get("state") == "building",
          "the killed build's record is left `building`")

    sc.e2e_config(fake_images(sc, [img]), prov)
    b = sc.start_builder(cleanup_ms=1000)

    def settled():
        bs = sc.builds(img)
        ready = [k for k, v in bs.items() if v["state"] == "ready"]
        return (old not in bs and len(ready) == 1 and
                sc.uploads_in(img, ready[0], "ready") and ready)
    new = wait_for(settled, LONG + EXPIRY, "a new build, the old one gone")
    check(bool(new), "after the restart: the killed build is cleaned and a "
          "new one is ready and uploaded (%s)" % sc.builds(img))
    check(not [v for v in sc.builds(img).values()
               if v["state"] in ("building", "failed")],
          "no build left building or failed")
    check(not sc.image_files(img, old), "the partial files are gone (%s)"
          % sc.image_files(img, old))
    check(wait_for(lambda: lock_free(sc, "/nodepool/images/%s/builds/lock"
                                     % img), LONG, "build lock free"),
          "the image's build lock is free")
    sc.stop(b)


def test_kill_mid_upload(zk):
    sc = E2E(zk, "killupload")
    try:
        _kill_mid_upload(sc)
    finally:
        sc.close()


def _kill_mid_upload(sc):
    img = "up"
    prov = {"name": PROVIDER, "images": [img]}
    sc.e2e_config(fake_images(sc, [img]),
                  [dict(prov, fake={"upload-delay": 600})])
    b = sc.start_builder(cleanup_ms=1000)
    bid = sorted(sc.wait_builds(img, "ready", 1, LONG) or {"?": 0})[0]
    uid, _ = sc.wait_upload(img, bid, state="uploading")
    sc.kill(b)
    check(sc.uploads(img, bid).get(uid, {}).get("state") == "uploading",
          "the killed upload's record is left `uploading`")
    cloud_dir = os.path.join(sc.state_dir, "images")

    def parts():
        return [n for n in os.listdir(cloud_dir) if n.endswith(".part")]
    check(len(parts()) == 1, "the killed upload's partial file is left "
          "in the cloud (%s)" % parts())

    sc.e2e_config(fake_images(sc, [img]), [prov])
    b = sc.start_builder(cleanup_ms=1000)

    def settled():
        ups = sc.uploads(img, bid)
        return (uid not in ups and len(ups) == 1 and
                list(ups.values())[0]["state"] == "ready" and ups)
    ups = wait_for(settled, LONG + EXPIRY, "the upload redone")
    check(bool(ups), "after the restart: the killed upload's record is "
          "cleaned and the build uploaded again (%s)" % sc.uploads(img, bid))
    check(list(sc.builds(img)) == [bid], "the build was not rebuilt")
    check(sc.image_files(img, bid), "the build's files stay")
    check(len(sc.cloud_images()) == 1, "one image in the cloud (%s)"
          % sc.cloud_images())
    check(parts() == [], "the cloud forgot the killed upload's partial "
          "file (%s)" % parts())
    lock = "/nodepool/images/%s/builds/%s/providers/%s/images/lock" % (
        img, bid, PROVIDER)
    check(wait_for(lambda: lock_free(sc, lock), LONG, "upload lock free"),
          "the upload lock is free")
    sc.stop(b)


# ---- 4. failures ----

HOOK = """#!/bin/sh
echo "hook: refusing $1 $2" >&2
exit 3
"""


def test_failures(zk):
    sc = E2E(zk, "fail")
    try:
        _failures(sc)
    finally:
        sc.close()


def _failures(sc):
    hook = os.path.join(sc.dir, "hook.sh")
    with open(hook, "w") as f:
        f.write(HOOK)
    os.chmod(hook, 0o755)
    e = {"FAKE_DIB_RECORD": sc.record}
    imgs = [bl.image_yaml("good", formats=None, env=e),
            bl.image_yaml("baddib", formats=None, env=e,
                          dib_cmd="/nonexistent/disk-image-create"),
            bl.image_yaml("noelem", formats=None, env=e,
                          elements=("fake-base", "no-such-element"))]
    provs = [{"name": PROVIDER, "images": ["good", "baddib", "noelem"]},
             {"name": "fake-hooked", "images": ["good"],
              "keys": {"post-upload-hook": hook}}]
    sc.e2e_config(imgs, provs)
    # Failed records stay until the janitor's pass: none during the test.
    b = sc.start_builder(cleanup_ms=3600000)

    bad = sc.wait_builds("baddib", "failed", 1, LONG) or {}
    for bid in bad:
        log = sc.build_log("baddib", bid)
        check("Failed to exec" in log and "/nonexistent" in log,
              "bad dib-cmd: the reason is in the build log (%r)" % log)
    noel = sc.wait_builds("noelem", "failed", 1, LONG) or {}
    for bid in noel:
        log = sc.build_log("noelem", bid)
        check("Element 'no-such-element' not found" in log and
              "Exit code: 1" in log,
              "missing element: the reason is in the build log (%r)" % log)
        check(not sc.image_files("noelem", bid), "no files of a failed "
              "build (%s)" % sc.image_files("noelem", bid))

    good = sc.wait_builds("good", "ready", 1, LONG) or {}
    gid = list(good)[0] if good else "?"
    sc.wait_upload("good", gid)
    fu, frec = sc.wait_upload("good", gid, provider="fake-hooked",
                              state="failed")
    check(fu is not None, "failing hook: the upload is `failed`")
    log = sc.log(b)
    check("Post upload hook failed with exit code 3" in log,
          "failing hook: the exit code is in the builder log")
    check(fu is None or sc.cloud_image(frec.get("external_id") or "-")
          is None, "failing hook: the cloud image is not kept as ready")
    check(not sc.builds_in("baddib", "ready") and
          not sc.builds_in("noelem", "ready"), "nothing bad became ready")
    check(sc.uploads_in("good", gid, "ready"), "the good image is still "
          "uploaded to the working provider")
    sc.stop(b)


def mount_tmpfs(path, size):
    """Mount a tmpfs of SIZE at PATH; None, or the reason it cannot."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        return "not root"
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size,
                        "tmpfs", path], capture_output=True, text=True)
    if p.returncode != 0:
        return "mount -t tmpfs failed: %s" % p.stderr.strip()
    return None


def test_full_disk(zk):
    sc = E2E(zk, "full")
    mnt = os.path.join(sc.dir, "images-tmpfs")
    why = mount_tmpfs(mnt, "2m")
    if why:
        print("SKIP test_full_disk: %s" % why)
        sc.close()
        return
    try:
        _full_disk(sc, mnt)
    finally:
        for p in sc.procs:
            sc.stop(p)
        r = subprocess.run(["umount", mnt], capture_output=True, text=True)
        check(r.returncode == 0, "umount %s: %s" % (mnt, r.stderr.strip()))
        sc.close()


def _full_disk(sc, mnt):
    e = {"FAKE_DIB_RECORD": sc.record}
    big = dict(e, FAKE_DIB_SIZE=8 * 1024 * 1024)
    small = dict(e, FAKE_DIB_SIZE=64 * 1024)
    imgs = [bl.image_yaml("big", formats=None, env=big),
            bl.image_yaml("small", formats=None, env=small)]
    sc.e2e_config(imgs, [{"name": PROVIDER, "images": ["big", "small"]}],
                  images_dir=mnt)
    b = sc.start_builder(cleanup_ms=3600000)
    failed = sc.wait_builds("big", "failed", 1, LONG) or {}
    for bid in failed:
        log = sc.build_log("big", bid)
        check("No space left on device" in log,
              "full disk: the reason is in the build log (%r)" % log)
    ok = sc.wait_builds("small", "ready", 1, LONG) or {}
    for bid in ok:
        check(sc.wait_upload("small", bid)[0] is not None,
              "full disk: the other image is still built and uploaded")
    # Pause the big one so its retries stop filling the disk, then look.
    n = sc.reloads(b)
    imgs[0] = bl.image_yaml("big", formats=None, env=big,
                            extra={"pause": "true"})
    sc.e2e_config(imgs, [{"name": PROVIDER, "images": ["big", "small"]}],
                  images_dir=mnt)
    sc.wait_reload(b, n)
    check(wait_for(lambda: not sc.builds_in("big", "building"), LONG,
                   "no big build running"), "big: no build running")
    left = [f for f in os.listdir(mnt) if f.startswith("big-")]
    check(not left, "full disk: no partial file of a failed build left (%s)"
          % left)
    check(not sc.builds_in("big", "ready"), "big never became ready")
    sc.stop(b)


# ---- SIGUSR2 ----

def test_stack_dump(zk):
    sc = E2E(zk, "dump")
    try:
        _stack_dump(sc)
    finally:
        sc.close()


def _stack_dump(sc):
    img = "slow"
    sc.e2e_config(fake_images(sc, [img], FAKE_DIB_SLEEP=600),
                  [{"name": PROVIDER, "images": [img]}])
    b = sc.start_builder(args=("--upload-workers", "2"))
    sc.wait_builds(img, "building", 1, LONG)
    wait_for(lambda: sc.dib_starts(), LONG, "DIB started")
    before = len(sc.log(b))
    b.send_signal(signal.SIGUSR2)
    want = ["NodePoolBuilder", "BuildWorker.0", "UploadWorker.0",
            "UploadWorker.1", "CleanupWorker"]

    def dumped():
        text = sc.log(b)[before:]
        lines = [ln for ln in text.splitlines() if "nodepool.stack_dump" in ln]
        return lines if all(any(w in ln for ln in lines) for w in want) \
            and any("BuildWorker.0: building %s" % img in ln
                    for ln in lines) else None
    lines = wait_for(dumped, LONG, "the stack dump")
    check(bool(lines), "SIGUSR2: every thread and the building worker's "
          "status are dumped")
    text = "\n".join(lines or [])
    for w in want:
        check(w in text, "SIGUSR2 dump names %s" % w)
    # Every thread answers with its frames: the main loop too, though it
    # starts the dump's helper thread (glibc's pthread_create() blocks all
    # signals for a moment), and any thread a library started (listed as
    # "(unregistered)" under its kernel name).
    heads = re.findall(r"nodepool\.stack_dump: Thread: (\d+) (\S+)(.*)", text)
    check(any(name == "NodePoolBuilder" for _, name, _ in heads),
          "SIGUSR2: the main loop's message")
    for tid, name, rest in heads:
        frames = re.search(r"Thread: %s .*\n((?:.*nodepool\.stack_dump:   "
                           r"#.*\n)*)" % tid, text + "\n").group(1)
        check("no stack captured" not in rest and "#0 " in frames,
              "SIGUSR2: %s %s%s has its frames" % (name, tid, rest))
    check(b.poll() is None, "the builder keeps running after SIGUSR2")
    check(sc.builds_in(img, "building"), "the build goes on")
    # SIGINT would wait for the 600 s build (and the next one): kill the
    # builder and every DIB it started.
    sc.kill(b)
    for s in sc.dib_starts():
        kill_group(s[2])


TESTS = [test_flow, test_two_builders, test_kill_mid_build,
         test_kill_mid_upload, test_failures, test_full_disk,
         test_stack_dump]

if __name__ == "__main__":
    sys.exit(ll.run(TESTS))
