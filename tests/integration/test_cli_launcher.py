#!/usr/bin/python3
# test_cli_launcher.py: the CLI commands that work with a running launcher,
# against real nodepool-launcher processes, the fake driver's state-dir
# cloud (shared by the launcher and the CLI) and a real TLS ZooKeeper
# (launcherlib.py):
#  - `delete --now ID`: the instance is gone from the state dir and the
#    znode from ZooKeeper when the command returns; a static slot is
#    registered again; an instance already gone, a provider missing from
#    the config, one whose driver does not start, an unknown id;
#  - `request LABEL...` (our extension): the request as Zuul-2025 writes
#    it, fulfilled -> nodes printed with their host keys and returned (the
#    launcher deletes them), --hold, failed, timeout, a request deleted by
#    someone else, SIGINT and SIGTERM; the request is gone in every case.
#
# env: NP_BUILD, NP_TEST_ZK_TLS and NP_TEST_ZK_CA/_CERT/_KEY (else a
# ZooKeeper is started). Test names on the command line run only those.
import json
import os
import re
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launcherlib as L  # noqa: E402
from launcherlib import (NODEPOOL, STATIC, STATIC_KEY, check,  # noqa: E402
                         nodepool, table_rows, wait_for)

ZUUL_REQUEST_KEYS = ["requestor_data", "node_types", "requestor",
                     "created_time", "provider", "state", "state_time",
                     "relative_priority", "event_id", "tenant_name"]


# A provider whose driver does not start: its cloud is in no clouds.yaml.
LOST = """  - name: lost
    driver: openstack
    cloud: not-in-clouds-yaml
"""


def start_nodepool(cfg, *args):
    return subprocess.Popen([NODEPOOL, "-c", cfg] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def ready_nodes(s, label):
    return sorted(nid for nid, n in s.nodes().items()
                  if n["state"] == "ready" and label in n["type"])


def our_requests(s):
    out = []
    if not s.kz.exists("/nodepool/requests"):
        return out
    for rid in s.kz.get_children("/nodepool/requests"):
        r = s.get_request(rid)
        if r and str(r.get("requestor", "")).startswith("nodepool-cli:"):
            out.append(rid)
    return out


def add_node(s, **fields):
    """A node record written as a launcher would; returns its id."""
    d = {k: None for k in L.NODE_KEYS}
    d.update(type=[], host_keys=[], connection_port=22, ssh_port=22,
             username="zuul", state_time=0.0, created_time=0.0)
    d.update(fields)
    path = s.kz.create("/nodepool/nodes/", json.dumps(d).encode("utf8"),
                       sequence=True, makepath=True)
    return path.split("/")[-1]


# ---- delete --now ----

def test_delete_now(zk):
    s = L.Scenario(zk, "delnow")
    cfg = s.write_config([L.PROVIDER], [("small", 1), ("big", 0),
                                        ("static", 0)], extra=STATIC)
    s.start(cfg)
    try:
        small = wait_for(lambda: ready_nodes(s, "small"), what="min-ready")
        static = wait_for(lambda: ready_nodes(s, "static"),
                          what="static slot")
        if not check(small and static, "delnow: ready nodes"):
            return
        nid = small[0]
        ext = s.get_node(nid)["external_id"]
        check(ext + ".json" in s.instances(),
              "delnow: the launcher's instance is in the state dir")

        rc, out, err = nodepool(cfg, "delete", "--now", nid)
        check(rc == 0, "delnow: exit 0 (%d, %r)" % (rc, err))
        check(out.startswith("+----+") and table_rows(out) == [],
              "delnow: the empty node table is printed: %r" % out)
        check("Deleting ZK node id=%s, state=deleting, external_id=%s"
              % (nid, ext) in err, "delnow: logged as upstream: %r" % err)
        # Synchronous: gone when the command returns, no waiting.
        check(ext + ".json" not in s.instances(),
              "delnow: instance gone from the state dir")
        check(not s.kz.exists("/nodepool/nodes/" + nid),
              "delnow: znode gone with its lock")

        # A static slot: removed, then registered again by the CLI's
        # own manager (upstream's nodeDeletedNotification) before exit.
        sid = static[0]
        rc, out, err = nodepool(cfg, "delete", "--now", sid)
        check(rc == 0 and not s.kz.exists("/nodepool/nodes/" + sid),
              "delnow static: removed (%d, %r)" % (rc, err))
        again = ready_nodes(s, "static")
        check(len(again) == 1 and again[0] != sid,
              "delnow static: slot registered again: %r" % again)
        if again:
            n = s.get_node(again[0])
            check(n["host_keys"] == [STATIC_KEY] and n["slot"] == 0,
                  "delnow static: the new slot's record %r" % n)

        # An instance the cloud no longer has: still removed.
        gone = add_node(s, state="ready", provider="fake-provider",
                        pool="main", type=["big"], external_id="0" * 32)
        rc, out, err = nodepool(cfg, "delete", "--now", gone)
        check(rc == 0 and not s.kz.exists("/nodepool/nodes/" + gone),
              "delnow missing instance: removed (%d)" % rc)
        check("Instance %s not found in provider fake-provider" % ("0" * 32)
              in err, "delnow missing instance: logged: %r" % err)

        # A provider this config does not have: upstream's message, the
        # node untouched and unlocked.
        other = add_node(s, state="ready", provider="elsewhere",
                         pool="main", type=["small"], external_id="x")
        rc, out, err = nodepool(cfg, "delete", "--now", other)
        check(rc == 1 and "Provider elsewhere for node %s not defined on "
              "this launcher" % other in out,
              "delnow unknown provider: %d %r" % (rc, out))
        check(s.get_node(other)["state"] == "ready" and
              s.node_lock_contenders(other) == [],
              "delnow unknown provider: node untouched and unlocked")
        s.kz.delete("/nodepool/nodes/" + other, recursive=True)

        # A provider whose driver does not start (its cloud is in no
        # clouds.yaml): one line naming it once, the node untouched and
        # unlocked.
        lost_cfg = s.write_config([L.PROVIDER], [("small", 1), ("big", 0)],
                                  fname="lost.yaml", extra=LOST)
        lost = add_node(s, state="ready", provider="lost", pool="main",
                        type=["small"], external_id="x")
        rc, out, err = nodepool(lost_cfg, "delete", "--now", lost)
        line = [ln for ln in err.splitlines() if "Provider lost" in ln]
        check(rc == 1 and len(line) == 1 and
              line[0].startswith("Provider lost: driver openstack did not "
                                 "start: ") and
              line[0].count("lost") == 1,
              "delnow provider not starting: %d %r" % (rc, err))
        check(s.get_node(lost)["state"] == "ready" and
              s.node_lock_contenders(lost) == [],
              "delnow provider not starting: node untouched and unlocked")
        s.kz.delete("/nodepool/nodes/" + lost, recursive=True)

        rc, out, _ = nodepool(cfg, "delete", "--now", "0000099999")
        check(rc == 0 and out.strip() == "Node id 0000099999 not found",
              "delnow unknown id: %r" % out)
    finally:
        s.close()


# ---- request ----

def test_request(zk):
    s = L.Scenario(zk, "request")
    cfg = s.write_config([L.PROVIDER], [("small", 0), ("big", 0)])
    s.start(cfg)
    try:
        rc, out, err = nodepool(cfg, "request", "small", "big",
                                "--timeout", "60")
        check(rc == 0, "request: exit 0 (%d, %r)" % (rc, err))
        rows = table_rows(out)
        check([r[2] for r in rows] == ["small", "big"],
              "request: the nodes in node_types order: %r" % rows)
        check(all(r[6] == "ready" and r[8] == "locked" for r in rows),
              "request: printed while we hold them: %r" % rows)
        ids = [r[0] for r in rows]
        for nid in ids:
            check("# %s: zuul@fake port 22" % nid in out,
                  "request: host key header of %s" % nid)
        check(out.count("\nfake ssh-rsa FAKEKEY\n") == 2,
              "request: known_hosts lines: %r" % out)
        check(re.search(r"Request 100-\d{10} is fulfilled", err),
              "request: progress on stderr: %r" % err)
        check(our_requests(s) == [], "request: the request is deleted")
        # Returned: used, unlocked, deleted by the launcher.
        check(wait_for(lambda: not any(s.get_node(n) for n in ids) and
                       not s.instances(), what="returned nodes deleted"),
              "request: the launcher deletes the returned nodes")
        check("Returned 2 nodes: state used, the launcher deletes them"
              in err, "request: says what it returned: %r" % err)
        rc, out, err = nodepool(cfg, "request", "small", "--timeout", "60")
        check(rc == 0 and "Returned 1 node: state used, the launcher "
              "deletes it\n" in err, "request: one node is an it: %r" % err)
    finally:
        s.close()


def test_request_hold(zk):
    s = L.Scenario(zk, "reqhold")
    cfg = s.write_config([L.PROVIDER], [("small", 0), ("big", 0)])
    s.start(cfg)
    try:
        rc, out, err = nodepool(cfg, "request", "--hold", "small")
        rows = table_rows(out)
        check(rc == 0 and len(rows) == 1, "hold: exit 0 (%d, %r)" % (rc, err))
        if not rows:
            return
        nid = rows[0][0]
        n = s.get_node(nid)
        check(n["state"] == "hold" and s.node_lock_contenders(nid) == [],
              "hold: the node is held and unlocked: %r" % n)
        check(our_requests(s) == [], "hold: the request is deleted")
        ext = n["external_id"]
        rc, out, err = nodepool(cfg, "delete", "--now", nid)
        check(rc == 0 and not s.get_node(nid) and
              ext + ".json" not in s.instances(),
              "hold: delete --now removes node and instance (%d, %r)"
              % (rc, err))
    finally:
        s.close()


def test_request_failed(zk):
    s = L.Scenario(zk, "reqfail")
    cfg = s.write_config([L.PROVIDER], [("small", 0), ("big", 0),
                                        ("nosuch", 0)])
    s.start(cfg)
    try:
        rc, out, err = nodepool(cfg, "request", "nosuch", "--timeout", "60")
        check(rc == 1 and re.search(r"Request 100-\d{10} failed \(declined "
                                    r"by: .*PoolWorker\.fake-provider-main",
                                    err),
              "failed: exit 1 with the decliners (%d, %r)" % (rc, err))
        check(our_requests(s) == [], "failed: the request is deleted")
    finally:
        s.close()


def wait_our_request(s):
    return wait_for(lambda: our_requests(s), what="the CLI's request")


def test_request_no_launcher(zk):
    """The request as written, and every way out without a launcher."""
    s = L.Scenario(zk, "reqwait")
    cfg = s.write_config([L.PROVIDER], [("small", 0), ("big", 0)])
    try:
        p = start_nodepool(cfg, "request", "small", "big", "small")
        rids = wait_our_request(s)
        if check(rids, "format: request created"):
            rid = rids[0]
            raw, st = s.kz.get("/nodepool/requests/" + rid)
            d = json.loads(raw.decode("utf8"))
            check(list(d) == ZUUL_REQUEST_KEYS,
                  "format: Zuul-2025's keys in its order: %r" % list(d))
            check(raw.decode("utf8") == json.dumps(d),
                  "format: Python json.dumps formatting")
            check(re.fullmatch(r"100-\d{10}", rid) and
                  st.ephemeralOwner == 0,
                  "format: persistent sequential 100- (%s)" % rid)
            check(d["node_types"] == ["small", "big", "small"] and
                  d["state"] == "requested" and d["provider"] is None and
                  d["relative_priority"] == 0 and
                  d["tenant_name"] is None and
                  re.fullmatch(r"[0-9a-f]{32}", d["event_id"]) and
                  d["requestor"].startswith("nodepool-cli:") and
                  isinstance(d["requestor_data"], dict) and
                  isinstance(d["created_time"], float) and
                  d["state_time"] == d["created_time"],
                  "format: values %r" % d)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        check(p.returncode == 130 and "Interrupted by SIGINT" in err,
              "SIGINT: exit 130 (%d, %r)" % (p.returncode, err))
        check(our_requests(s) == [], "SIGINT: the request is deleted")

        p = start_nodepool(cfg, "request", "small")
        if check(wait_our_request(s), "SIGTERM: request created"):
            p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        check(p.returncode == 143 and our_requests(s) == [],
              "SIGTERM: exit 143, request deleted (%d, %r)"
              % (p.returncode, err))

        p = start_nodepool(cfg, "request", "small")
        rids = wait_our_request(s)
        if check(rids, "vanished: request created"):
            s.kz.delete("/nodepool/requests/" + rids[0])
        out, err = p.communicate(timeout=30)
        check(p.returncode == 1 and "was deleted by someone else" in err,
              "vanished: exit 1 (%d, %r)" % (p.returncode, err))

        rc, out, err = nodepool(cfg, "request", "small", "--timeout", "1")
        check(rc == 1 and "Timed out after 1 s waiting for request" in err
              and "(state requested)" in err,
              "timeout: exit 1 (%d, %r)" % (rc, err))
        check(our_requests(s) == [], "timeout: the request is deleted")
    finally:
        s.close()


def test_request_usage(zk):
    s = L.Scenario(zk, "requsage")
    cfg = s.write_config([L.PROVIDER], [("small", 0), ("big", 0)])
    try:
        rc, out, err = nodepool(cfg, "request")
        check(rc == 2 and "the following arguments are required: label"
              in err, "usage: no label (%d, %r)" % (rc, err))
        rc, out, err = nodepool(cfg, "request", "--timeout", "soon", "small")
        check(rc == 2 and "--timeout" in err, "usage: bad timeout %r" % err)
        rc, out, err = nodepool(cfg, "request", "-h")
        check(rc == 0 and "usage: nodepool request [-h] [--timeout SECONDS]"
              " [--hold] label [label ...]" in out,
              "usage: request -h %r" % out)
        rc, out, err = nodepool(cfg, "--help")
        check(rc == 0 and "(nodepool-c extension)" in out,
              "usage: marked as our extension in --help")
        check(our_requests(s) == [], "usage: nothing submitted")
    finally:
        s.close()


if __name__ == "__main__":
    sys.exit(L.run([test_delete_now, test_request, test_request_hold,
                    test_request_failed, test_request_no_launcher,
                    test_request_usage]))
