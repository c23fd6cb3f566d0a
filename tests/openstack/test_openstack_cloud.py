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
#    killed launcher's) is found as leaked and deleted.
# Needs OS_CLIENT_CONFIG_FILE (the cloud's clouds.yaml, cloud "osl").
import json
import os
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
             raw=None):
        data = raw if raw is not None else (
            json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(
            self.ep[svc] + path, data, method=method,
            headers={"X-Auth-Token": self.token, "Content-Type": ctype,
                     "OpenStack-API-Version": "compute 2.79"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            return e.code, None

    def servers(self):
        st, d = self.call("GET", "compute", "/servers/detail")
        return d["servers"] if st == 200 else []

    def fips(self):
        st, d = self.call("GET", "network", "/floatingips")
        return d["floatingips"] if st == 200 else []


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
    print("%d passed, %d failed" % (L.PASSED, L.FAILED))
    return 1 if L.FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
