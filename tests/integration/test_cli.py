#!/usr/bin/python3
# test_cli.py: the `nodepool` CLI against a real TLS ZooKeeper. Records are
# written with kazoo exactly as upstream Python Nodepool writes them
# (json.dumps of its dicts, in its key order); every listing's output and
# exit code is checked, and what our write commands store is read back with
# kazoo and compared with what upstream would have written.
#
# env: NP_TEST_ZK_TLS, NP_TEST_ZK_CA/_CERT/_KEY (tests/run-all.sh), NP_BUILD.
import json
import os
import http.server
import re
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from kazoo.client import KazooClient
from kazoo.recipe.lock import Lock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launcherlib import NODE_KEYS, STATIC  # noqa: E402

PASSED = 0
FAILED = 0


def check(cond, what):
    global PASSED, FAILED
    if cond:
        PASSED += 1
    else:
        FAILED += 1
        print("FAIL: %s" % what, file=sys.stderr)


# Upstream's toDict key orders (nodepool/zk/zookeeper.py); the node's
# are launcherlib's.
UPLOAD_KEYS = ["state", "state_time", "external_id", "external_name",
               "format", "username", "python_path", "shell_type"]


def node_dict(**kw):
    d = {k: None for k in NODE_KEYS}
    d.update(type=[], host_keys=[], connection_port=22, ssh_port=22,
             username="zuul")
    d.update(kw)
    return d


def upload_dict(**kw):
    d = {k: None for k in UPLOAD_KEYS}
    d.update(kw)
    return d


def build_dict(state, state_time, builder=None, formats=None):
    d = {"state": state, "state_time": state_time}
    if builder:
        d["builder"] = builder
        d["builder_id"] = str(uuid.uuid4())
    if formats:
        d["formats"] = ",".join(sorted(formats))
    d.update(username="zuul", python_path="auto", shell_type=None)
    return d


def enc(d):
    return json.dumps(d).encode("utf8")


class Env:
    def __init__(self):
        self.hosts = os.environ["NP_TEST_ZK_TLS"]
        self.ca = os.environ["NP_TEST_ZK_CA"]
        self.cert = os.environ["NP_TEST_ZK_CERT"]
        self.key = os.environ["NP_TEST_ZK_KEY"]
        self.nodepool = os.path.join(os.environ.get("NP_BUILD", "build"),
                                     "nodepool")
        self.chroot = "/cli-test-%d-%s" % (os.getpid(), uuid.uuid4().hex[:6])
        self.tmp = tempfile.mkdtemp(prefix="np-cli-")
        host, port = self.hosts.rsplit(":", 1)
        self.config = os.path.join(self.tmp, "nodepool.yaml")
        with open(self.config, "w") as f:
            f.write(CONFIG % dict(host=host, port=port, chroot=self.chroot,
                                  ca=self.ca, cert=self.cert, key=self.key))
        self.zk = KazooClient(hosts=self.hosts + self.chroot, use_ssl=True,
                              ca=self.ca, certfile=self.cert,
                              keyfile=self.key, verify_certs=False)
        self.zk.start(timeout=15)

    def run(self, *args, stdin=None, config=None, env=None):
        p = subprocess.run([self.nodepool, "-c", config or self.config]
                           + list(args), input=stdin, capture_output=True,
                           text=True, timeout=60,
                           env=dict(os.environ, **env) if env else None)
        return p.returncode, p.stdout, p.stderr

    def read(self, path):
        data, _ = self.zk.get(path)
        return data.decode("utf8")

    def close(self):
        try:
            self.zk.delete(self.chroot and "/", recursive=True)
        except Exception:
            pass
        self.zk.stop()
        self.zk.close()
        root = KazooClient(hosts=self.hosts, use_ssl=True, ca=self.ca,
                           certfile=self.cert, keyfile=self.key,
                           verify_certs=False)
        root.start(timeout=15)
        root.delete(self.chroot, recursive=True)
        root.stop()
        root.close()
        subprocess.run(["rm", "-rf", self.tmp])


# The ZooKeeper part of the test's configs.
ZK_CONFIG = """
zookeeper-servers:
  - host: %(host)s
    port: %(port)s
    chroot: %(chroot)s
zookeeper-tls:
  ca: %(ca)s
  cert: %(cert)s
  key: %(key)s
"""

CONFIG = ZK_CONFIG + """labels:
  - name: small
providers:
  - name: fake
    driver: openstack
    cloud: fake
    diskimages:
      - name: fake-image
    pools:
      - name: main
        labels:
          - name: small
            diskimage: fake-image
            min-ram: 1
diskimages:
  - name: fake-image
  - name: paused-image
    pause: true
"""

AGE = r"\d\d:\d\d:\d\d:\d\d"


def table_rows(out):
    """Rows of a PrettyTable as lists of stripped cells (header first)."""
    rows = []
    for line in out.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def populate(e):
    z = e.zk
    now = time.time()
    z.create("/nodepool/nodes/0000000001", enc(node_dict(
        state="ready", state_time=now - 62, provider="fake", pool="main",
        type=["small"], external_id="srv-1", public_ipv4="203.0.113.7",
        launcher="nl01-PoolWorker.fake-main-abc", created_time=now - 100,
        user_data={"zuul_system": "5f0e"})), makepath=True)
    # Written by Zuul: extra "id" key that must survive our rewrite.
    zd = node_dict(state="in-use", state_time=now, provider="fake",
                   type="small", connection_port={"token": "secret"},
                   ssh_port={"token": "secret"}, external_id="srv-2")
    zd["id"] = "0000000002"
    z.create("/nodepool/nodes/0000000002", enc(zd))
    z.create("/nodepool/nodes/0000000003", enc(node_dict(
        state="ready", state_time=now, provider="other", type=["small"])))
    z.create("/nodepool/nodes/0000000004", b"{broken json")
    z.create("/nodepool/requests/200-0000000005", enc({
        "requestor_data": {"job_name": "tox"}, "node_types": ["small", "small"],
        "requestor": "zuul-sys", "created_time": now, "provider": None,
        "state": "requested", "state_time": now, "relative_priority": 3,
        "event_id": "ev1", "tenant_name": "t"}), makepath=True)
    z.create("/nodepool/requests/100-0000000006", enc({
        "state": "fulfilled", "state_time": now, "declined_by": ["l1", "l2"],
        "node_types": ["small"], "nodes": ["0000000001"], "reuse": True,
        "requestor": None, "requestor_data": None, "provider": None,
        "relative_priority": 0, "event_id": None, "created_time": None,
        "tenant_name": None}))
    b = "/nodepool/images/fake-image/builds"
    z.create(b + "/aaaa", enc(build_dict("ready", now - 3600, "nb01",
                                         ["raw", "qcow2"])), makepath=True)
    z.create(b + "/bbbb", enc(build_dict("building", now, "nb01")))
    z.create(b + "/aaaa/providers/fake/images/0000000001", enc(upload_dict(
        state="ready", state_time=now, external_id="img-1",
        external_name="fake-image-1", format="qcow2", username="zuul",
        python_path="auto")), makepath=True)
    z.create(b + "/aaaa/providers/fake/images/0000000002", enc(upload_dict(
        state="uploading", state_time=now, username="zuul")))
    z.ensure_path(b + "/aaaa/providers/fake/images/lock")
    z.ensure_path("/nodepool/images/paused-image/pause")
    z.ensure_path("/nodepool/images/fake-image/request-build")


def test_listings(e):
    rc, out, err = e.run("list")
    check(rc == 0, "list exit code")
    rows = table_rows(out)
    check(rows and rows[0] == ["ID", "Provider", "Label", "Server ID",
                               "Public IPv4", "IPv6", "State", "Age",
                               "Locked"], "list header: %r" % rows[:1])
    byid = {r[0]: r for r in rows[1:]}
    check(set(byid) == {"0000000001", "0000000002", "0000000003"},
          "list skips the broken node: %r" % sorted(byid))
    r1 = byid.get("0000000001", [""] * 9)
    check(r1[1:7] == ["fake", "small", "srv-1", "203.0.113.7", "", "ready"],
          "node 1 row %r" % r1)
    check(re.match(r"00:00:01:0[23]$", r1[7]) is not None, "age %r" % r1[7])
    check(r1[8] == "unlocked", "node 1 unlocked")
    check("/nodepool/nodes/0000000004" in err, "bad record logged: %r" % err)
    # PrettyTable layout: borders as wide as the columns
    lines = out.splitlines()
    check(lines[0] == lines[2] == lines[-1] and lines[0].startswith("+-"),
          "table borders")

    rc, out, _ = e.run("list", "--detail")
    rows = table_rows(out)
    check(rows[0][9:] == ["Pool", "Hostname", "Private IPv4", "AZ",
                          "Username", "Port", "Launcher", "Allocated To",
                          "Hold Job", "Comment", "User Data", "Driver Data"],
          "detail header %r" % rows[0])
    byid = {r[0]: r for r in rows[1:]}
    check(byid["0000000002"][14] == "redacted", "k8s port redacted")
    check(byid["0000000001"][14] == "22", "port 22")
    check(byid["0000000001"][19] == "{'zuul_system': '5f0e'}",
          "user data repr %r" % byid["0000000001"][19])

    rc, out, _ = e.run("request-list")
    rows = table_rows(out)
    check(rc == 0 and rows[0] == ["Request ID", "Priority", "State",
                                  "Requestor", "Node Types", "Nodes",
                                  "Declined By", "Event ID"], "request hdr")
    check(rows[1:] == [
        ["100-0000000006", "0", "fulfilled", "", "small", "0000000001",
         "l1,l2", ""],
        ["200-0000000005", "3", "requested", "zuul-sys", "small,small", "",
         "", "ev1"]], "request rows %r" % rows[1:])

    rc, out, _ = e.run("dib-image-list")
    rows = table_rows(out)
    check(rows[0] == ["ID", "Image", "Builder", "Formats", "State", "Age"],
          "dib header")
    byid = {r[0]: r for r in rows[1:]}
    check(byid.get("fake-image-aaaa", [""] * 6)[1:5] ==
          ["fake-image", "nb01", "qcow2,raw", "ready"], "dib row %r" % byid)
    check(re.match(r"00:01:00:0\d$", byid["fake-image-aaaa"][5]) is not None,
          "dib age")

    rc, out, _ = e.run("image-list")
    rows = table_rows(out)
    check(rows[0] == ["Build ID", "Upload ID", "Provider", "Image",
                      "Provider Image Name", "Provider Image ID", "State",
                      "Age"], "image-list header")
    check(sorted(r[:7] for r in rows[1:]) == [
        ["aaaa", "0000000001", "fake", "fake-image", "fake-image-1",
         "img-1", "ready"],
        ["aaaa", "0000000002", "fake", "fake-image", "", "", "uploading"]],
        "image-list rows %r" % rows[1:])

    rc, out, _ = e.run("image-status")
    rows = table_rows(out)
    check(rows[0] == ["Image", "Paused", "Build Request",
                      "Build Request Age"], "image-status header")
    check(rows[1][:3] == ["fake-image", "False", "pending"] and
          re.match(AGE, rows[1][3]), "image-status fake %r" % rows[1])
    check(rows[2] == ["paused-image", "True", "", ""], "image-status paused")

    rc, out, _ = e.run("info", "fake")
    check(rc == 0 and out.startswith("ZooKeeper data for provider fake\n\n"
                                     "Image data:\n"), "info head %r" % out)
    rows = table_rows(out)
    check(["fake-image", "aaaa", "0000000001,0000000002"] in rows,
          "info image row %r" % rows)
    check(["0000000001", "srv-1"] in rows and ["0000000002", "srv-2"] in rows
          and not any(r[0] == "0000000003" for r in rows), "info nodes")


def test_node_writes(e):
    z = e.zk
    before = json.loads(e.read("/nodepool/nodes/0000000002"))
    rc, out, _ = e.run("hold", "0000000002")
    check(rc == 0 and "| 0000000002 |" in out and "hold" in out,
          "hold prints the row: %r" % out)
    raw = e.read("/nodepool/nodes/0000000002")
    after = json.loads(raw)
    check(after["state"] == "hold" and after["state_time"] > before["state_time"],
          "hold state")
    # Upstream's key order, then the key we keep (Zuul's "id").
    check(list(after) == NODE_KEYS + ["id"], "node key order %r" % list(after))
    expect = dict(before, state="hold", state_time=after["state_time"])
    expect["type"] = ["small"]
    check(after == expect, "hold changes only state: %r" % after)
    check(raw == json.dumps(after), "Python json.dumps formatting")

    rc, out, _ = e.run("delete", "0000000001")
    d = json.loads(e.read("/nodepool/nodes/0000000001"))
    check(rc == 0 and d["state"] == "deleting", "delete sets deleting")
    check(list(d) == NODE_KEYS, "delete keeps upstream keys")

    rc, out, _ = e.run("delete", "0000009999")
    check(rc == 0 and out.strip() == "Node id 0000009999 not found",
          "delete unknown: %r" % out)

    lock = Lock(z, "/nodepool/nodes/0000000003/lock")
    check(lock.acquire(timeout=5), "kazoo lock")
    rc, out, _ = e.run("list")
    row = [r for r in table_rows(out) if r[0] == "0000000003"]
    check(row and row[0][8] == "locked", "locked column %r" % row)
    t0 = time.time()
    rc, out, err = e.run("delete", "0000000003")
    check(rc == 1 and "Timeout trying to acquire lock "
          "/nodepool/nodes/0000000003/lock" in err,
          "delete of a locked node times out: %d %r" % (rc, err))
    check(4.5 < time.time() - t0 < 15, "lock timeout ~5 s")
    check(json.loads(e.read("/nodepool/nodes/0000000003"))["state"] ==
          "ready", "locked node untouched")
    lock.release()


def test_image_writes(e):
    z = e.zk
    rc, _, _ = e.run("image-pause", "fake-image")
    check(rc == 0 and z.exists("/nodepool/images/fake-image/pause"), "pause")
    check(z.get("/nodepool/images/fake-image/pause")[0] == b"", "empty")
    rc, out, _ = e.run("dib-image-list")
    check("| paused " in out, "paused state in dib-image-list")
    rc, _, _ = e.run("image-unpause", "fake-image")
    check(rc == 0 and not z.exists("/nodepool/images/fake-image/pause"),
          "unpause")

    z.delete("/nodepool/images/fake-image/request-build")
    rc, _, _ = e.run("image-build", "fake-image")
    check(rc == 0 and z.exists("/nodepool/images/fake-image/request-build"),
          "image-build marker")
    rc, _, err = e.run("image-build", "nope")
    check(rc == 1 and "Trying to build a non disk-image-builder image: nope"
          in err, "image-build unknown: %r" % err)
    rc, _, err = e.run("image-build", "paused-image")
    check(rc == 1 and "paused" in err, "image-build paused")

    b = "/nodepool/images/fake-image/builds"
    rc, out, _ = e.run("dib-image-delete", "fake-image-bbbb")
    check(out.strip() == "Cannot delete a build in progress", "in progress")
    rc, out, _ = e.run("dib-image-delete", "fake-image-zzzz")
    check(out.strip() == "Build fake-image-zzzz not found", "build not found")
    rc, out, _ = e.run("dib-image-delete", "fake-image-aaaa")
    d = json.loads(e.read(b + "/aaaa"))
    check(rc == 0 and d["state"] == "deleting" and
          list(d) == ["state", "state_time", "builder", "builder_id",
                      "formats", "username", "python_path", "shell_type"],
          "dib-image-delete: %r" % d)

    up = b + "/aaaa/providers/fake/images/"
    args = ["image-delete", "--provider", "fake", "--image", "fake-image",
            "--build-id", "aaaa", "--upload-id"]
    rc, out, _ = e.run(*(args + ["0000000002"]))
    check(out.strip() == "Cannot delete because image upload in progress",
          "upload in progress")
    rc, out, _ = e.run(*(args + ["0000000009"]))
    check(out.strip() == "Image upload not found", "upload not found")
    rc, out, _ = e.run(*(args + ["0000000001"]))
    raw = e.read(up + "0000000001")
    d = json.loads(raw)
    check(rc == 0 and d["state"] == "deleting" and list(d) == UPLOAD_KEYS
          and raw == json.dumps(d), "image-delete: %r" % raw)
    rc, _, err = e.run("image-delete", "--provider", "fake")
    check(rc == 2 and "the following arguments are required" in err,
          "image-delete usage")


def test_export_erase_import(e):
    z = e.zk
    path = os.path.join(e.tmp, "export.json")
    rc, _, _ = e.run("export-image-data", path)
    check(rc == 0 and stat.S_IMODE(os.stat(path).st_mode) == 0o600,
          "export file mode")
    with open(path) as f:
        data = json.load(f)
    b = "/nodepool/images/fake-image/builds"
    expect = {
        b + "/aaaa": e.read(b + "/aaaa"),
        b + "/bbbb": e.read(b + "/bbbb"),
        b + "/aaaa/providers/fake/images/0000000001":
            e.read(b + "/aaaa/providers/fake/images/0000000001"),
        b + "/aaaa/providers/fake/images/0000000002":
            e.read(b + "/aaaa/providers/fake/images/0000000002"),
        "/nodepool/images/paused-image/pause": "",
    }
    check(data == expect, "export content %r" % data)

    rc, out, _ = e.run("erase", "fake", stdin="n\n")
    check(rc == 0 and "Aborting. No data erased." in out and
          z.exists(b + "/aaaa/providers/fake"), "erase aborted")
    rc, out, _ = e.run("erase", "fake", "--force")
    check(rc == 0 and out == "Erasing build data for fake...\n"
          "Erasing node data for fake...\n", "erase output %r" % out)
    check(not z.exists(b + "/aaaa/providers/fake"), "provider data erased")
    check(sorted(z.get_children("/nodepool/nodes")) ==
          ["0000000003", "0000000004"], "only other nodes left")

    rc, _, err = e.run("import-image-data", path)
    check(rc == 0, "import rc %r" % err)
    for p, v in expect.items():
        check(z.exists(p) and e.read(p) == v, "imported %s" % p)
    # A new upload gets a number after the imported ones.
    new = z.create(b + "/aaaa/providers/fake/images/", b"", sequence=True)
    check(int(new.rsplit("/", 1)[1]) > 2, "sequence bumped: %s" % new)


def test_config_validate(e):
    rc, _, err = e.run("config-validate")
    check(rc == 0, "config-validate of a valid config: %d %r" % (rc, err))
    bad = os.path.join(e.tmp, "unknown-key.yaml")
    with open(e.config) as f:
        lines = f.read().split("\n")
    # An unknown key inside the first label, at a line we know.
    at = lines.index("  - name: small") + 1
    lines.insert(at, "    min-redy: 2")
    with open(bad, "w") as f:
        f.write("\n".join(lines))
    rc, _, err = e.run("config-validate", config=bad)
    check(rc == 1, "config-validate of an unknown key exits 1: %d" % rc)
    check("%s:%d" % (bad, at + 1) in err and "min-redy" in err,
          "the error names file, line and key: %r" % err)


def test_logconfig(e):
    rc, _, err = e.run("-l", os.path.join(e.tmp, "missing.conf"), "list")
    check(rc == 1 and "Unable to read logging config file at" in err,
          "-l with a missing file: %d %r" % (rc, err))
    log = os.path.join(e.tmp, "np.log")
    ini = os.path.join(e.tmp, "logging.conf")
    with open(ini, "w") as f:
        f.write("[loggers]\nkeys=root,nodepool\n[handlers]\nkeys=file\n"
                "[formatters]\nkeys=simple\n"
                "[logger_root]\nlevel=WARNING\nhandlers=file\n"
                "[logger_nodepool]\nlevel=DEBUG\nhandlers=file\n"
                "qualname=nodepool\n"
                "[handler_file]\nclass=handlers.WatchedFileHandler\n"
                "level=DEBUG\nformatter=simple\nargs=('%s',)\n"
                "[formatter_simple]\nformat=%%(message)s\n" % log)
    rc, out, err = e.run("-l", ini, "request-list")
    check(rc == 0 and out.startswith("+-"), "-l ini: listing works")
    with open(log) as f:
        text = f.read()
    check(" INFO nodepool.zk: connected to " in text,
          "-l ini: nodepool.zk INFO reaches the file: %r" % text)
    check("WARNING nodepool.logconfig: %s: ignored: formatter simple" % ini
          in text, "-l ini: the ignored formatter is named: %r" % text)
    check("connected to" not in err, "-l ini: nothing on stderr %r" % err)
    yml = os.path.join(e.tmp, "logging.yaml")
    with open(yml, "w") as f:
        f.write("version: 1\nhandlers:\n  console:\n"
                "    class: logging.StreamHandler\n"
                "    stream: ext://sys.stderr\n"
                "loggers:\n  nodepool:\n    handlers: [console]\n"
                "    level: INFO\n")
    rc, out, err = e.run("-l", yml, "request-list")
    check(rc == 0 and " INFO nodepool.zk: connected to " in err,
          "-l yaml: nodepool INFO on stderr: %r" % err)
    quiet = os.path.join(e.tmp, "quiet.yaml")
    with open(quiet, "w") as f:
        f.write("version: 1\nroot: {level: CRITICAL}\n")
    rc, out, err = e.run("-l", quiet, "request-list")
    check(rc == 0 and err == "", "-l quiet: nothing logged: %r" % err)
    rc, out, err = e.run("--debug", "-l", quiet, "request-list")
    check(rc == 0 and " INFO nodepool.zk: connected to " in err,
          "--debug wins over -l: %r" % err)


# alien-image-list's providers: two fake clouds (state dirs the test
# writes images into), an OpenStack cloud nobody listens for, two served
# by the test's Glance (GlanceHandler: one lists, one answers an error),
# one that is not in clouds.yaml, and a static provider (no images:
# skipped).
ALIEN_CONFIG = ZK_CONFIG + """labels:
  - name: small
  - name: static
providers:
  - name: fake-a
    driver: openstack
    cloud: fake
    fake:
      state-dir: %(tmp)s/cloud-a
    diskimages:
      - name: fake-image
  - name: unreachable
    driver: openstack
    cloud: unreachable
    diskimages:
      - name: fake-image
  - name: glance
    driver: openstack
    cloud: glance
    diskimages:
      - name: fake-image
  - name: glance-error
    driver: openstack
    cloud: glance-error
%(static)s  - name: lost
    driver: openstack
    cloud: not-in-clouds-yaml
  - name: fake-b
    driver: openstack
    cloud: fake
    fake:
      state-dir: %(tmp)s/cloud-b
    diskimages:
      - name: fake-image
diskimages:
  - name: fake-image
  - name: other-image
"""


class GlanceHandler(http.server.BaseHTTPRequestHandler):
    """Keystone's token and Glance's image list, as much of them as the
    OpenStack driver's list_images reads. User "demo" gets a catalog whose
    Glance lists IMAGES in two pages; any other user's Glance answers 500.
    Glance gives an image's properties as keys of the image itself."""
    IMAGES = []

    def answer(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        auth = json.loads(self.rfile.read(n))
        user = auth["auth"]["identity"]["password"]["user"]["name"]
        root = "http://%s:%d/%s" % (self.server.server_address + (
            "image" if user == "demo" else "broken",))
        self.answer(201, {"token": {
            "expires_at": "2099-01-01T00:00:00.000000Z",
            "project": {"id": "p1"},
            "catalog": [{"type": "image", "endpoints": [
                {"interface": "public", "region_id": "R1", "url": root}]}]}},
            [("X-Subject-Token", "tok-" + user)])

    def do_GET(self):
        if self.path == "/image/v2/images?limit=100":
            self.answer(200, {"images": self.IMAGES[:2],
                              "next": "/v2/images?marker=%s&limit=100"
                              % self.IMAGES[1]["id"]})
        elif self.path.startswith("/image/v2/images?marker="):
            self.answer(200, {"images": self.IMAGES[2:]})
        else:
            self.answer(500, {"message": "Glance is down for maintenance"})

    def log_message(self, *args):
        pass


def glance_image(name, **props):
    iid = str(uuid.uuid4())
    GlanceHandler.IMAGES.append(dict(id=iid, name=name, status="active",
                                     visibility="private", **props))
    return iid


def fake_cloud_image(state_dir, name, metadata):
    """An image in a fake cloud's state dir, as the fake driver's upload
    leaves it; returns its id."""
    iid = uuid.uuid4().hex
    os.makedirs(os.path.join(state_dir, "images"), exist_ok=True)
    with open(os.path.join(state_dir, "images", iid + ".json"), "w") as f:
        json.dump({"id": iid, "name": name, "status": "READY",
                   "format": "qcow2", "size": 0, "metadata": metadata}, f)
    return iid


def test_alien_image_list(e):
    host, port = e.hosts.rsplit(":", 1)
    config = os.path.join(e.tmp, "alien.yaml")
    with open(config, "w") as f:
        f.write(ALIEN_CONFIG % dict(host=host, port=port, chroot=e.chroot,
                                    ca=e.ca, cert=e.cert, key=e.key,
                                    tmp=e.tmp, static=STATIC))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    glance = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             GlanceHandler)
    threading.Thread(target=glance.serve_forever, daemon=True).start()
    clouds = os.path.join(e.tmp, "clouds.yaml")
    with open(clouds, "w") as f:
        f.write("clouds:\n")
        for cloud, cport, user in (
                ("unreachable", closed, "demo"),
                ("glance", glance.server_address[1], "demo"),
                ("glance-error", glance.server_address[1], "admin")):
            f.write("  %s:\n    auth:\n"
                    "      auth_url: http://127.0.0.1:%d/v3\n"
                    "      username: %s\n      password: secret\n"
                    "      project_name: demo\n" % (cloud, cport, user))
    try:
        alien_image_list(e, config, {"OS_CLIENT_CONFIG_FILE": clouds})
    finally:
        glance.shutdown()
        glance.server_close()


def alien_image_list(e, config, env):
    z = e.zk
    cloud_a = os.path.join(e.tmp, "cloud-a")
    cloud_b = os.path.join(e.tmp, "cloud-b")

    def tagged(provider, bid, uid):
        return {"nodepool_provider_name": provider,
                "nodepool_build_id": bid, "nodepool_upload_id": uid}

    # fake-a: no upload record; a ready one; untagged; a record that is
    # not ready; a ready record of an image the provider does not list.
    a_none = fake_cloud_image(cloud_a, "fake-image-a1",
                              tagged("fake-a", "cccc", "0000000009"))
    a_ready = fake_cloud_image(cloud_a, "fake-image-a2",
                               tagged("fake-a", "cccc", "0000000001"))
    fake_cloud_image(cloud_a, "someone-elses", {"owner": "ops"})
    fake_cloud_image(cloud_a, "no-metadata", None)
    a_deleting = fake_cloud_image(cloud_a, "fake-image-a3",
                                  tagged("fake-a", "cccc", "0000000002"))
    a_other = fake_cloud_image(cloud_a, "other-image-a4",
                               tagged("fake-a", "dddd", "0000000001"))
    b_none = fake_cloud_image(cloud_b, "fake-image-b1",
                              tagged("fake-b", "cccc", "0000000001"))
    # glance: the same cases across two pages, and an image without a name.
    g_none = glance_image("fake-image-g1", **tagged("glance", "cccc",
                                                    "0000000009"))
    g_ready = glance_image("fake-image-g2", **tagged("glance", "cccc",
                                                     "0000000001"))
    glance_image("cirros")
    g_noname = glance_image(None, nodepool_build_id="cccc")
    now = time.time()
    b = "/nodepool/images/fake-image/builds/cccc"
    z.create(b, enc(build_dict("ready", now, "nb01", ["qcow2"])),
             makepath=True)
    for path, state, iid in (
            (b + "/providers/fake-a/images/0000000001", "ready", a_ready),
            (b + "/providers/fake-a/images/0000000002", "deleting",
             a_deleting),
            (b + "/providers/glance/images/0000000001", "ready", g_ready),
            # Another provider's record of fake-a's image: still alien.
            (b + "/providers/fake-b/images/0000000001", "ready", a_none),
            ("/nodepool/images/other-image/builds/dddd/providers/fake-a/"
             "images/0000000001", "ready", a_other)):
        z.create(path, enc(upload_dict(state=state, state_time=now,
                                       external_id=iid, format="qcow2")),
                 makepath=True)
    z.ensure_path("/nodepool/nodes")
    nodes_before = sorted(z.get_children("/nodepool/nodes"))

    rc, out, err = e.run("alien-image-list", config=config, env=env)
    rows = table_rows(out)
    check(rc == 0 and rows[:1] == [["Provider", "Name", "Image ID"]],
          "alien-image-list: %d header %r %r" % (rc, rows[:1], err))
    check(sorted(rows[1:]) == sorted([
        ["fake-a", "fake-image-a1", a_none],
        ["fake-a", "fake-image-a3", a_deleting],
        ["fake-a", "other-image-a4", a_other],
        ["glance", "fake-image-g1", g_none],
        ["glance", "None", g_noname],
        ["fake-b", "fake-image-b1", b_none]]),
        "alien images: tagged, no ready upload of the provider's images: "
        "%r" % rows[1:])
    check([r[0] for r in rows[1:]] == ["fake-a"] * 3 + ["glance"] * 2 +
          ["fake-b"], "providers in config order: %r" % rows[1:])
    check([r[2] for r in rows[4:6]] == [g_none, g_noname],
          "in the cloud's order: %r" % rows[4:6])
    check(re.search(r"Exception listing alien images for glance-error: .*"
                    r"Glance is down for maintenance", err) is not None,
          "a cloud's error answer: a warning: %r" % err)
    check(re.search(r"WARNING nodepool\.cmd\.nodepoolcmd: Exception listing "
                    r"alien images for unreachable: .+", err) is not None,
          "unreachable cloud: a warning: %r" % err)
    lost = [ln for ln in err.splitlines()
            if "alien images for lost: " in ln]
    check(len(lost) == 1 and "Exception listing alien images for lost: "
          "driver openstack did not start: " in lost[0] and
          "no cloud named not-in-clouds-yaml" in lost[0],
          "unknown cloud: a warning: %r" % err)
    check(lost and lost[0].count("lost") == 1,
          "unknown cloud: the warning names the provider once: %r" % lost)
    check("static-provider" not in err, "static provider skipped: %r" % err)
    check(sorted(z.get_children("/nodepool/nodes")) == nodes_before,
          "no static node registered by the listing")

    rc, out, err = e.run("alien-image-list", "fake-b", config=config,
                         env=env)
    check(rc == 0 and table_rows(out)[1:] ==
          [["fake-b", "fake-image-b1", b_none]] and "Exception" not in err,
          "provider filter: %d %r %r" % (rc, out, err))
    rc, out, err = e.run("alien-image-list", "unreachable", config=config,
                         env=env)
    check(rc == 0 and table_rows(out) == [["Provider", "Name", "Image ID"]]
          and "alien images for unreachable: " in err,
          "filter on the failing provider: %d %r %r" % (rc, out, err))
    for only in ("static-provider", "nope"):
        rc, out, err = e.run("alien-image-list", only, config=config,
                             env=env)
        check(rc == 0 and out == "+----------+------+----------+\n"
              "| Provider | Name | Image ID |\n"
              "+----------+------+----------+\n"
              "+----------+------+----------+\n" and err == "",
              "%s: an empty table, nothing logged: %r %r" % (only, out, err))


def test_errors(e):
    bad = os.path.join(e.tmp, "notls.yaml")
    with open(e.config) as f:
        text = f.read()
    with open(bad, "w") as f:
        f.write(re.sub(r"zookeeper-tls:\n(  .*\n)+", "", text))
    rc, _, err = e.run("list", config=bad)
    check(rc == 1 and err.startswith(
        bad + ": A TLS ZooKeeper connection is required; please supply the "
        "zookeeper-tls config values."), "TLS required, file named: %r" % err)
    test_config_validate(e)
    rc, out, _ = e.run("--version")
    check(rc == 0 and out.startswith("Nodepool version: "), "version")
    p = subprocess.run([e.nodepool], capture_output=True, text=True)
    check(p.returncode == 1 and p.stdout.startswith("usage: nodepool"),
          "no command: help, exit 1")
    # `request` is ours: its own --help says so (an operator may read
    # only that); upstream's subcommands have no description paragraph.
    rc, out, _ = e.run("request", "--help")
    check(rc == 0 and "\nA nodepool-c extension (upstream Nodepool has no "
          "such command)" in out, "request --help marks it ours: %r" % out)
    rc, out, _ = e.run("list", "--help")
    check(rc == 0 and out.split("\n")[1:3] == ["", "options:"],
          "list --help: no description, as upstream: %r" % out)


def main():
    if not os.environ.get("NP_TEST_ZK_TLS"):
        print("SKIP: NP_TEST_ZK_TLS not set", file=sys.stderr)
        print("0 passed, 0 failed, 1 skipped")
        return 0
    e = Env()
    try:
        populate(e)
        for t in (test_listings, test_node_writes, test_image_writes,
                  test_export_erase_import, test_logconfig, test_errors,
                  test_alien_image_list):
            try:
                t(e)
            except Exception as ex:
                check(False, "%s raised %r" % (t.__name__, ex))
    finally:
        e.close()
    print("%d passed, %d failed" % (PASSED, FAILED))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
