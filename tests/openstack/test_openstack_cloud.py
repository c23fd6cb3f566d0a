#!/usr/bin/python3
# test_openstack_cloud.py: the launcher against a real OpenStack (the cloud
# tests/openstack/run.sh starts: Keystone, Nova with the fake virt driver,
# Neutron, Glance on loopback). Real ZooKeeper, real nodepool-launcher
# processes, a real sshd on 0.0.0.0 answering the host-key scans of the
# servers' addresses (127.10.0.x fixed, 127.20.0.x floating: all
# loopback). Scenarios:
#  - requests written as Zuul writes them -> servers on Nova (with a
#    floating IP, auto-floating-ip) -> host keys gathered -> nodes used and
#    deleted -> servers and floating IPs gone from the cloud; a min-ready
#    label served without a request;
#  - the project's instance quota lowered to 1: the second request waits
#    (the pool pauses) and is served once the first node is gone;
#  - launch-timeout shorter than the boot: every attempt times out, the
#    request fails and the cloud keeps no server of it;
#  - a server carrying our metadata for a node ZooKeeper does not have (a
#    killed launcher's) is found as leaked and deleted;
#  - a launcher SIGKILLed while Nova builds its server (nova-compute held
#    with SIGSTOP): the building node already names the server (the id is
#    stored once Nova answers the create), and a second launcher deletes
#    the server through that node, by id, not as a leak, and serves the
#    request again;
#  - the builder against Glance: nodepool-builder with the fake dib-cmd
#    builds an image, uploads it to Glance (checksums and properties as
#    upstream's openstacksdk call leaves them), the launcher boots
#    servers from it through a min-ready label and a Zuul request, host
#    keys gathered, nodes used and deleted, servers gone from Nova; a
#    second build is booted from, a third makes the janitor delete the
#    first's upload from Glance, and an image carrying our metadata that
#    no upload record explains is deleted as leaked.
# Needs OS_CLIENT_CONFIG_FILE (the cloud's clouds.yaml, cloud "osl").
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "integration"))
import launcherlib as L  # noqa: E402
from launcherlib import Scenario, check, wait_for  # noqa: E402
import builderlib as bl  # noqa: E402
from test_builder_e2e import E2E, upload_path  # noqa: E402

KEYSTONE = "http://127.0.0.1:5000/v3"
PASSWORD = os.environ.get("OSL_PASSWORD", "secret")
# A generous wait for anything the cloud does: on a loaded 2-core machine
# one server create took 20 s and one floating IP 50 s (NP_OS_WAIT).
BOOT = float(os.environ.get("NP_OS_WAIT", "900"))


class Cloud:
    """A few REST calls as one user (the test's own view of the cloud)."""

    def __init__(self, user, project):
        body = {"auth": {"identity": {"methods": ["password"], "password": {
            "user": {"name": user, "domain": {"name": "Default"},
                     "password": PASSWORD}}},
            "scope": {"project": {"name": project,
                                  "domain": {"name": "Default"}}}}}
        req = urllib.request.Request(
            KEYSTONE + "/auth/tokens", json.dumps(body).encode(),
            {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            self.token = r.headers["X-Subject-Token"]
            tok = json.loads(r.read())["token"]
        self.project_id = tok["project"]["id"]
        self.ep = {}
        for svc in tok["catalog"]:
            for e in svc["endpoints"]:
                if e["interface"] == "public":
                    self.ep[svc["type"]] = e["url"].rstrip("/")
        self.ep["network"] += "/v2.0"
        self.ep["image"] += "/v2"

    def call(self, method, svc, path, body=None, ctype="application/json",
             raw=None, timeout=60):
        data = raw if raw is not None else (
            json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(
            self.ep[svc] + path, data, method=method,
            headers={"X-Auth-Token": self.token, "Content-Type": ctype,
                     "OpenStack-API-Version": "compute 2.79"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            return e.code, None

    def listing(self, svc, path, key, tries=5):
        """The list KEY of GET PATH. An error answer is not an empty
        list (a server "gone" because Nova answered 500 would pass a
        test that should fail): asked again up to TRIES times, then an
        exception (wait_cloud goes on polling; elsewhere the test
        fails)."""
        for i in range(tries):
            try:
                st, d = self.call("GET", svc, path)
            except OSError as e:  # timeouts, refused connections
                st, d = str(e), None
            if st == 200 and d is not None:
                return d[key]
            time.sleep(2)
        raise RuntimeError("GET %s %s: %s" % (svc, path, st))

    def servers(self):
        return self.listing("compute", "/servers/detail", "servers")

    def fips(self):
        return self.listing("network", "/floatingips", "floatingips")


def ours(cloud, provider):
    return [s for s in cloud.servers()
            if s["metadata"].get("nodepool_provider_name") == provider]


def upload_image(cloud, name):
    st, img = cloud.call("POST", "image", "/images", {
        "name": name, "disk_format": "raw", "container_format": "bare"})
    st2, _ = cloud.call("PUT", "image", "/images/%s/file" % img["id"],
                        ctype="application/octet-stream",
                        raw=b"\0" * 65536)
    check(st == 201 and st2 == 204, "image %s uploaded (%s, %s)"
          % (name, st, st2))
    return img["id"]


def config(s, name, port, keys="", pool_keys="", labels=None):
    host, zport = s.zk.hosts.split(":")
    labels = labels or [("small", 0)]
    out = ["zookeeper-servers:", "  - host: %s" % host,
           "    port: %s" % zport, "    chroot: %s" % s.chroot,
           "zookeeper-tls:", "  ca: %s" % s.zk.ca,
           "  cert: %s" % s.zk.cert, "  key: %s" % s.zk.key, "labels:"]
    for lname, mr in labels:
        out += ["  - name: %s" % lname, "    min-ready: %d" % mr]
    out += ["providers:", "  - name: %s" % name, "    driver: openstack",
            "    cloud: osl", "    region-name: RegionOne",
            "    rate: 0.01", "    boot-timeout: 60"]
    out += ["    " + k for k in keys.splitlines() if k]
    out += ["    cloud-images:", "      - name: test-image",
            "        image-name: np-test-image",
            "        connection-port: %d" % port,
            "    pools:", "      - name: main", "        max-servers: 20",
            "        networks: [private]"]
    out += ["        " + k for k in pool_keys.splitlines() if k]
    out += ["        labels:"]
    for lname, _ in labels:
        out += ["          - name: %s" % lname,
                "            cloud-image: test-image",
                "            min-ram: 512", "            flavor-name: osl"]
    path = os.path.join(s.dir, "nodepool.yaml")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path


def sshd_keys(d):
    out = set()
    for f in os.listdir(d):
        if f.startswith("ssh_host_") and f.endswith("_key.pub"):
            with open(os.path.join(d, f)) as fh:
                out.add(" ".join(fh.read().split()[:2]))
    return out


FAST = {"NODEPOOL_CLEANUP_INTERVAL": "2"}


def wait_cloud(fn, timeout=BOOT, what="condition"):
    """wait_for, polling once a second: the cloud is slow and shared."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            v = fn()
        except Exception:
            v = None
        if v:
            return v
        time.sleep(1)
    print("timed out waiting for %s" % what, file=sys.stderr)
    return None


def test_request_use_delete(zk, demo, port, keys):
    s = Scenario(zk, "os-basic")
    try:
        cfg = config(s, "osl-basic", port,
                     labels=[("small", 0), ("warm", 1)])
        p = s.start(cfg, env=FAST, debug=True)
        rid = s.request(["small", "small"])
        req = s.wait_request(rid, timeout=BOOT)
        check(req and req["state"] == "fulfilled",
              "basic: request fulfilled (%s)" % (req and req["state"]))
        nodes = [(nid, s.get_node(nid)) for nid in (req or {}).get("nodes", [])]
        by_id = {sv["id"]: sv for sv in demo.servers()}
        for nid, n in nodes:
            check(n["state"] == "ready" and n["provider"] == "osl-basic",
                  "basic: node ready on the provider")
            srv = by_id.get(n["external_id"])
            check(srv is not None and srv["status"] == "ACTIVE",
                  "basic: node %s is an ACTIVE server on Nova" % n["external_id"])
            check(srv and srv["metadata"].get("nodepool_node_id") == nid and
                  srv["metadata"].get("groups") ==
                  "osl-basic,test-image,small",
                  "basic: the server carries the node's metadata")
            check(srv and srv["name"] == "np" + nid, "basic: hostname np<id>")
            check(set(n["host_keys"]) == keys,
                  "basic: host keys from the sshd (%r)" % n["host_keys"])
            check(n["interface_ip"].startswith("127.20.0.") and
                  n["public_ipv4"] == n["interface_ip"] and
                  n["private_ipv4"].startswith("127.10.0."),
                  "basic: floating IP for the interface, fixed private (%s %s)"
                  % (n["interface_ip"], n["private_ipv4"]))
            check(n["cloud"] == "osl" and n["region"] == "RegionOne",
                  "basic: cloud and region recorded")
        warm = wait_for(lambda: [n for n in s.nodes().values()
                                 if n["type"] == ["warm"] and
                                 n["state"] == "ready"] or None,
                        timeout=BOOT, what="min-ready node")
        check(warm, "basic: min-ready label served without a request")
        ext = [n["external_id"] for _, n in nodes]
        s.use_and_return(rid, req)
        gone = wait_cloud(lambda: not (set(ext) & set(
            sv["id"] for sv in demo.servers())), timeout=BOOT,
            what="servers deleted")
        check(gone, "basic: used nodes' servers gone from Nova")
        check(wait_for(lambda: not any(nid in s.nodes() for nid in
                                       req["nodes"]), what="znodes gone"),
              "basic: used nodes deleted from ZooKeeper")
        # The min-ready node: no longer wanted (reload with min-ready 0),
        # then used, so its server goes too.
        config(s, "osl-basic", port, labels=[("small", 0), ("warm", 0)])
        time.sleep(2)
        for nid, n in s.nodes().items():
            if n["type"] == ["warm"] and n["state"] == "ready":
                lock = s.lock_node(nid)
                s.set_node(nid, state="used", state_time=time.time())
                lock.release()
        check(wait_cloud(lambda: not ours(demo, "osl-basic") or None,
                         what="warm server gone"),
              "basic: the min-ready node's server gone once used")
        s.stop(p)
    finally:
        s.close()


def test_quota_pause(zk, demo, admin, port):
    s = Scenario(zk, "os-quota")
    base = len(demo.servers())
    try:
        st, _ = admin.call("PUT", "compute", "/os-quota-sets/%s" %
                           demo.project_id,
                           {"quota_set": {"instances": base + 1}})
        check(st == 200, "quota: instances lowered to %d (%s)" % (base + 1, st))
        cfg = config(s, "osl-quota", port)
        p = s.start(cfg, env=FAST)
        r1 = s.request(["small"])
        req1 = s.wait_request(r1, timeout=BOOT)
        check(req1 and req1["state"] == "fulfilled", "quota: first served")
        r2 = s.request(["small"])
        # The second does not fit: it stays pending while the first
        # node exists (checked after the launcher saw it and paused).
        paused = wait_cloud(lambda: "Not enough quota remaining" in s.log(p)
                            or None, timeout=60, what="pause")
        check(paused, "quota: the launcher found the quota exhausted")
        req2 = s.get_request(r2)
        check(req2 and req2["state"] in ("requested", "pending"),
              "quota: second request waits at quota (%s)"
              % (req2 and req2["state"]))
        s.use_and_return(r1, req1)
        req2 = s.wait_request(r2, timeout=BOOT)
        check(req2 and req2["state"] == "fulfilled",
              "quota: second served once the first node is gone (%s)"
              % (req2 and req2["state"]))
        if req2 and req2["state"] == "fulfilled":
            s.use_and_return(r2, req2)
        wait_cloud(lambda: not ours(demo, "osl-quota") or None, timeout=BOOT,
                 what="quota servers gone")
        s.stop(p)
    finally:
        admin.call("PUT", "compute", "/os-quota-sets/%s" % demo.project_id,
                   {"quota_set": {"instances": 50}})
        s.close()


def test_launch_timeout(zk, demo, port):
    s = Scenario(zk, "os-timeout")
    try:
        cfg = config(s, "osl-timeout", port,
                     keys="launch-timeout: 1\nlaunch-retries: 2")
        p = s.start(cfg, env=FAST, debug=True)
        rid = s.request(["small"])
        req = s.wait_request(rid, timeout=BOOT)
        check(req and req["state"] == "failed",
              "timeout: request failed after every attempt timed out (%s)"
              % (req and req["state"]))
        check("Timeout waiting for instance creation" in s.log(p),
              "timeout: the launcher logged the launch timeout")
        # A create cancelled while Nova still answers its POST deletes
        # the server once the answer names it: every server created is
        # deleted, and then none is left.
        def cleaned():
            lines = [ln for ln in s.log(p).splitlines()
                     if "Cancelled launch of node" in ln]
            started = sum("cleaning up its server" in ln for ln in lines)
            ended = sum(("no server was made" in ln or
                         ln.endswith(" deleted") or
                         ": deleting server" in ln) for ln in lines)
            return (started == ended and
                    not ours(demo, "osl-timeout")) or None
        clean = wait_cloud(cleaned, timeout=BOOT,
                           what="timed-out servers deleted")
        check(clean, "timeout: no server of the timed-out launches is left "
              "(%s)" % [sv["id"] for sv in ours(demo, "osl-timeout")])
        s.stop(p)
    finally:
        s.close()


def test_leak(zk, demo, port, image_id):
    s = Scenario(zk, "os-leak")
    try:
        st, d = demo.call("GET", "compute", "/flavors/detail")
        flavor = [f for f in d["flavors"] if f["name"] == "osl.small"][0]
        st, d = demo.call("GET", "network", "/networks?name=private")
        net = d["networks"][0]["id"]
        st, srv = demo.call("POST", "compute", "/servers", {"server": {
            "name": "np0000099999", "imageRef": image_id,
            "flavorRef": flavor["id"], "networks": [{"uuid": net}],
            "metadata": {"nodepool_provider_name": "osl-leak",
                         "nodepool_node_id": "0000099999",
                         "nodepool_pool_name": "main"}}})
        check(st == 202, "leak: a killed launcher's server exists (%s)" % st)
        sid = srv["server"]["id"] if srv else None
        cfg = config(s, "osl-leak", port)
        p = s.start(cfg, env=FAST, debug=True)
        gone = wait_cloud(lambda: sid not in [sv["id"] for sv in
                                            demo.servers()] or None,
                        timeout=BOOT, what="leaked server deleted")
        check(gone, "leak: the leaked server was deleted")
        check("leaked instance" in s.log(p),
              "leak: the launcher logged the leaked instance")
        s.stop(p)
    finally:
        s.close()


def test_killed_launcher(zk, demo, port):
    s = Scenario(zk, "os-kill")
    try:
        _killed_launcher(s, demo, port)
    finally:
        s.close()


def compute_pid():
    """The process group of the cloud's nova-compute (start.sh makes
    each service the leader of its own group)."""
    with open(os.path.join(os.environ.get("OSL_DIR", "/tmp/osl"), "run",
                           "nova-compute.pid")) as f:
        return int(f.read().strip())


def _killed_launcher(s, demo, port):
    cfg = config(s, "osl-kill", port)
    # nova-compute stopped (SIGSTOP): Nova answers the POST and lists the
    # server, which stays BUILD until compute runs again (the fake virt
    # driver has no delay of its own). Kept short: a compute silent for
    # service_down_time (60 s) would be taken for down.
    cpid = compute_pid()
    os.killpg(cpid, signal.SIGSTOP)
    try:
        p1 = s.start(cfg, env=FAST, debug=True)
        rid = s.request(["small"])

        def named():
            for nid, n in s.nodes().items():
                if n.get("provider") == "osl-kill" and n.get("external_id"):
                    return nid, n
            return None
        got = wait_for(named, 60, "the node to name its server")
        s.kill(p1)
        srv = None
        if got:
            srv = [sv for sv in ours(demo, "osl-kill")
                   if sv["id"] == got[1]["external_id"]]
            srv = srv[0] if srv else None
    finally:
        os.killpg(cpid, signal.SIGCONT)
    check(got is not None, "kill: the building node names its server "
          "before the server is ACTIVE (the id stored once Nova answered)")
    if not got:
        return
    nid, node = got
    sid = node["external_id"]
    check(node.get("state") == "building" and srv is not None and
          srv["status"] == "BUILD" and
          srv["metadata"].get("nodepool_node_id") == nid,
          "kill: launcher killed with node %s building (%s), external id "
          "%s, the server BUILD in Nova (%s)"
          % (nid, node.get("state"), sid, srv and srv["status"]))
    t0 = time.monotonic()
    p2 = s.start(cfg, env=FAST, debug=True)
    gone = wait_cloud(lambda: sid not in [sv["id"] for sv in
                                          demo.servers()] or None,
                      what="the killed launcher's server deleted")
    check(gone, "kill: the killed launcher's server is deleted")
    print("kill: server %s gone from Nova %.1f s after the second "
          "launcher started" % (sid, time.monotonic() - t0))
    log = s.log(p2)
    # Through the node, by its id, not as a leak (a leak takes two
    # cleanup passes after the node is gone; this node is not).
    check(("Deleting building instance %s from osl-kill" % sid) in log,
          "kill: the second launcher deleted the server through the "
          "dead launcher's node, by its id")
    check("Instance %s of osl-kill names node" % sid not in log and
          "leaked instance %s" % sid not in log,
          "kill: the server was never taken for a leak")
    req = s.wait_request(rid, timeout=BOOT)
    check(req and req["state"] == "fulfilled" and nid not in req["nodes"],
          "kill: the restarted launcher serves the request with a new "
          "node (%s)" % ((req and (req["state"], req["nodes"])),))
    if req and req["state"] == "fulfilled":
        s.use_and_return(rid, req)
    check(wait_cloud(lambda: not ours(demo, "osl-kill") or None,
                     what="kill servers gone"),
          "kill: no server of the scenario is left")
    check(wait_for(lambda: s.get_node(nid) is None, BOOT, "dead node gone"),
          "kill: the dead launcher's node is gone from ZooKeeper")
    s.stop(p2)


# ---- the builder against Glance ----

IMG = "np-dib"
BPROV = "osl-build"


class OsBuild(E2E):
    """test_builder_e2e's scenario (builder, launcher, Zuul's side) with
    an OpenStack provider on the lane's cloud instead of the fake one."""

    def __init__(self, zk, name, demo, port):
        super().__init__(zk, name)
        self.demo = demo
        self.port = port

    def os_config(self, min_ready=1):
        host, zport = self.zk.hosts.split(":")
        env = {"FAKE_DIB_RECORD": self.record,
               "FAKE_DIB_SIZE": str(1 << 20)}
        out = ["zookeeper-servers:", "  - host: %s" % host,
               "    port: %s" % zport, "    chroot: %s" % self.chroot,
               "zookeeper-tls:", "  ca: %s" % self.zk.ca,
               "  cert: %s" % self.zk.cert, "  key: %s" % self.zk.key,
               "images-dir: %s" % self.images_dir,
               "build-log-dir: %s" % self.log_dir,
               "elements-dir: %s" % self.elements_dir,
               "labels:", "  - name: dib-req", "    min-ready: 0",
               "  - name: dib-min", "    min-ready: %d" % min_ready,
               "diskimages:",
               # no formats: the provider's image type (clouds.yaml's
               # image_format, else qcow2) is what DIB makes
               bl.image_yaml(IMG, formats=None, env=env,
                             extra={"metadata": "{distro: fake}"}),
               "providers:", "  - name: %s" % BPROV,
               "    driver: openstack", "    cloud: osl",
               "    region-name: RegionOne", "    rate: 0.01",
               "    boot-timeout: 120",
               "    diskimages:", "      - name: %s" % IMG,
               "        connection-port: %d" % self.port,
               "        meta: {owner-team: ci}",
               "    pools:", "      - name: main",
               "        max-servers: 10", "        networks: [private]",
               "        labels:"]
        for lname in ("dib-req", "dib-min"):
            out += ["          - name: %s" % lname,
                    "            diskimage: %s" % IMG,
                    "            min-ram: 512",
                    "            flavor-name: osl"]
        path = os.path.join(self.dir, "nodepool.yaml")
        with open(path + ".tmp", "w") as f:
            f.write("\n".join(out) + "\n")
        os.rename(path + ".tmp", path)
        self.config = path
        return path

    def instance_image(self, node):
        """The image Nova says NODE's server boots."""
        if "_booted" in node:
            return node["_booted"]
        for sv in self.demo.servers():
            if sv["id"] == node.get("external_id"):
                return (sv.get("image") or {}).get("id")
        return None

    def glance(self, iid):
        st, img = self.demo.call("GET", "image", "/images/%s" % iid)
        return img if st == 200 else None

    def glance_ours(self):
        st, d = self.demo.call("GET", "image", "/images?limit=1000")
        return [i for i in (d or {}).get("images", [])
                if i.get("nodepool_provider_name") == BPROV]


def file_sums(path):
    out = {}
    for algo in ("md5", "sha256", "sha512"):
        h = hashlib.new(algo)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 16), b""):
                h.update(chunk)
        out[algo] = h.hexdigest()
    return out


def check_glance(sc, bid, uid, rec, what):
    """Glance's record of upload UID of build BID is what upstream's
    openstacksdk call leaves."""
    ext = rec.get("external_id")
    img = sc.glance(ext) or {}
    path = os.path.join(sc.images_dir, "%s-%s.qcow2" % (IMG, bid))
    sums = file_sums(path) if os.path.exists(path) else {}
    check(img.get("status") == "active" and
          img.get("disk_format") == "qcow2" and
          img.get("container_format") == "bare" and
          img.get("visibility") == "private",
          "%s: Glance image %s active, qcow2, bare, private (%s %s %s %s)"
          % (what, ext, img.get("status"), img.get("disk_format"),
             img.get("container_format"), img.get("visibility")))
    check(img.get("name") == rec.get("external_name") and
          (img.get("name") or "").startswith(IMG + "-"),
          "%s: the image-name-format name (%s)" % (what, img.get("name")))
    check(sums and img.get("size") == os.path.getsize(path) and
          img.get("checksum") == sums["md5"] and
          img.get("os_hash_algo") == "sha512" and
          img.get("os_hash_value") == sums["sha512"],
          "%s: Glance's size and checksums are the file's" % what)
    want = {"nodepool_build_id": bid, "nodepool_upload_id": uid,
            "nodepool_provider_name": BPROV, "distro": "fake",
            "owner-team": "ci",
            "owner_specified.openstack.md5": sums.get("md5"),
            "owner_specified.openstack.sha256": sums.get("sha256"),
            "owner_specified.openstack.object": "images/%s"
            % img.get("name")}
    bad = {k: (v, img.get(k)) for k, v in want.items() if img.get(k) != v}
    check(not bad, "%s: the image's properties as upstream (%s)"
          % (what, bad))
    return ext


def test_builder_glance(zk, demo, port, keys):
    sc = OsBuild(zk, "os-build", demo, port)
    try:
        _builder_glance(sc, demo, keys)
    finally:
        for img in sc.glance_ours():
            demo.call("DELETE", "image", "/images/%s" % img["id"])
        sc.close()


def _builder_glance(sc, demo, keys):
    sc.os_config(min_ready=1)
    b = sc.start_builder(cleanup_ms=1000)
    la = sc.start_launcher()
    b1 = sorted(sc.wait_builds(IMG, "ready", 1, BOOT) or {"?": 0})[0]
    check("%s-%s.qcow2" % (IMG, b1) in sc.image_files(IMG, b1),
          "build: the qcow2 image is in images-dir (%s)"
          % sc.image_files(IMG, b1))
    u1, rec1 = sc.wait_upload(IMG, b1, BPROV, timeout=BOOT)
    check(rec1.get("format") == "qcow2", "upload record: format qcow2")
    e1 = check_glance(sc, b1, u1, rec1, "first upload")

    # min-ready: a node from that upload without any request.
    warm = wait_cloud(lambda: [n for n in sc.nodes().values()
                               if n.get("state") == "ready" and
                               "dib-min" in n.get("type", [])],
                      what="a min-ready node")
    check(bool(warm), "min-ready: a ready dib-min node")
    if warm:
        n = warm[0]
        check(n.get("image_id") == upload_path(IMG, b1, u1, BPROV) and
              sc.instance_image(n) == e1,
              "min-ready: the node boots upload %s (Glance %s; %s)"
              % (u1, e1, sc.instance_image(n)))
        check(set(n.get("host_keys", [])) == keys,
              "min-ready: host keys from the sshd")

    # A request as Zuul writes it, on the first build.
    rid = sc.request(["dib-req"])
    req = sc.wait_request(rid, timeout=BOOT)
    check(req and req["state"] == "fulfilled",
          "request: fulfilled (%s)" % (req and req["state"]))
    if req and req["state"] == "fulfilled":
        nid = req["nodes"][0]
        n = sc.get_node(nid)
        ext = n.get("external_id")
        check(n.get("image_id") == upload_path(IMG, b1, u1, BPROV) and
              sc.instance_image(n) == e1,
              "request: the node boots Glance image %s (%s)"
              % (e1, sc.instance_image(n)))
        check(set(n.get("host_keys", [])) == keys and
              n.get("interface_ip", "").startswith("127.20.0."),
              "request: host keys gathered over the floating IP (%s)"
              % n.get("interface_ip"))
        sc.use_and_return(rid, req)
        check(wait_cloud(lambda: ext not in [sv["id"] for sv in
                                             demo.servers()],
                         what="used server gone"),
              "request: the used node's server is gone from Nova")
        check(wait_for(lambda: sc.get_node(nid) is None, BOOT,
                       "node gone"), "request: the used node is deleted")

    # A second build, booted from once the launcher sees it.
    rc, _, _ = sc.cli("image-build", IMG)
    check(rc == 0, "image-build exits 0")
    builds = sc.wait_builds(IMG, "ready", 2, BOOT) or {}
    b2 = ([k for k in builds if k != b1] + ["?"])[0]
    u2, rec2 = sc.wait_upload(IMG, b2, BPROV, timeout=BOOT)
    e2 = check_glance(sc, b2, u2, rec2, "second upload")
    check(e2 and e2 != e1, "the second build is a new Glance image")

    def on_second():
        r = sc.request(["dib-req"])
        q = sc.wait_request(r, timeout=BOOT)
        if not q or q["state"] != "fulfilled":
            return None
        node = sc.get_node(q["nodes"][0]) or {}
        node["_booted"] = sc.instance_image(node)
        sc.use_and_return(r, q)
        return node if node.get("image_id") == upload_path(
            IMG, b2, u2, BPROV) else None
    node = wait_cloud(on_second, what="a node on the second build")
    check(node and node["_booted"] == e2,
          "second build: a request's node boots Glance image %s (%s)"
          % (e2, node and node["_booted"]))

    # An image with our metadata that no upload record explains (a
    # builder killed before writing its record): leaked.
    st, leak = demo.call("POST", "image", "/images", {
        "name": "np-dib-leaked", "disk_format": "qcow2",
        "container_format": "bare", "nodepool_provider_name": BPROV,
        "nodepool_build_id": "0000009999", "nodepool_upload_id": "0000000001"})
    check(st == 201, "a leaked image is in Glance (%s)" % st)

    # A third build: the janitor keeps the two newest and deletes the
    # first's upload from Glance and its files.
    rc, _, _ = sc.cli("image-build", IMG)
    check(rc == 0, "third image-build exits 0")
    check(wait_for(lambda: len(sc.dib_starts()) >= 3 and
                   not sc.requested(IMG), BOOT, "third build"),
          "third build done")
    builds = sc.builds_in(IMG, "ready")
    b3 = sorted(builds, key=lambda k: builds[k]["state_time"])[-1]
    u3, rec3 = sc.wait_upload(IMG, b3, BPROV, timeout=BOOT)
    e3 = rec3.get("external_id")

    def cleaned():
        return (set(sc.builds(IMG)) == {b2, b3} and sc.glance(e1) is None
                and not sc.image_files(IMG, b1)) or None
    check(wait_cloud(cleaned, what="old upload deleted"),
          "janitor: build %s's upload deleted from Glance and its files "
          "gone; builds %s left" % (b1, sorted(sc.builds(IMG))))
    check(wait_cloud(lambda: leak and sc.glance(leak["id"]) is None,
                     what="leaked image deleted"),
          "janitor: the leaked image is deleted from Glance")
    check("Deleting leaked image %s" % (leak or {}).get("id") in sc.log(b),
          "janitor: logged the leaked image")
    left = sorted(i["id"] for i in sc.glance_ours())
    check(left == sorted([e2, e3]), "Glance holds the kept builds' images "
          "only (%s, want %s)" % (left, sorted([e2, e3])))

    # The min-ready node: no longer wanted, used; its server goes.
    sc.os_config(min_ready=0)
    time.sleep(2)
    for nid, n in sc.nodes().items():
        if "dib-min" in n.get("type", []) and n.get("state") == "ready":
            lock = sc.lock_node(nid)
            sc.set_node(nid, state="used", state_time=time.time())
            lock.release()
    check(wait_cloud(lambda: not ours(demo, BPROV) or None,
                     what="servers gone"),
          "every server of the builder test is gone from Nova")
    sc.stop(la)
    sc.stop(b)


def main():
    demo = Cloud("demo", "demo")
    admin = Cloud("admin", "admin")
    admin.call("PUT", "compute", "/os-quota-sets/%s" % demo.project_id,
               {"quota_set": {"instances": 50, "cores": 200, "ram": 512000}})
    image_id = upload_image(demo, "np-test-image")
    sdir = tempfile.mkdtemp(prefix="np-os-sshd.")
    sshd = os.path.join(L.TOP, "tests/harness/sshd.sh")
    out = subprocess.check_output(["bash", sshd, "start", sdir, "0.0.0.0"],
                                  text=True)
    port = int(out.split()[1])
    keys = sshd_keys(sdir)
    only = sys.argv[1:]
    zk = L.ZK()
    try:
        tests = [
            ("test_request_use_delete",
             lambda: test_request_use_delete(zk, demo, port, keys)),
            ("test_quota_pause",
             lambda: test_quota_pause(zk, demo, admin, port)),
            ("test_launch_timeout",
             lambda: test_launch_timeout(zk, demo, port)),
            ("test_leak", lambda: test_leak(zk, demo, port, image_id)),
            ("test_killed_launcher",
             lambda: test_killed_launcher(zk, demo, port)),
            ("test_builder_glance",
             lambda: test_builder_glance(zk, demo, port, keys)),
        ]
        for name, t in tests:
            if only and name not in only:
                continue
            t0 = time.time()
            try:
                t()
            except Exception:
                import traceback
                traceback.print_exc()
                check(False, "%s raised" % name)
            print("%s: %.1f s" % (name, time.time() - t0))
        left = [sv["id"] for sv in demo.servers()]
        check(not left, "no server left in the cloud (%s)" % left)
        fips = [f["floating_ip_address"] for f in demo.fips()]
        check(not fips, "no floating IP left in the cloud (%s)" % fips)
    finally:
        zk.stop()
        subprocess.call(["bash", sshd, "stop", sdir])
        shutil.rmtree(sdir, ignore_errors=True)
    print("%d passed, %d failed" % (L.PASSED, L.FAILED))
    return 1 if L.FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
