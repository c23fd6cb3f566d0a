#!/usr/bin/python3
# test_launcher_drivers.py: nodepool-launcher against drivers that fail,
# and against a real sshd, each scenario in its own chroot with real
# processes (launcherlib.py):
#  - quota-failure-rate: the refused nodes are aborted and relaunched
#    without counting an attempt (launch-retries 1 is enough), every
#    request fulfilled, the aborted nodes removed;
#  - launch-timeout shorter than the fake's launch-delay: each attempt
#    times out, the node fails after launch-retries attempts, no instance
#    is left (a cancelled create removes its server);
#  - boot-timeout with host-key-checking on, loopback addresses and no
#    sshd: the scan fails (error.keyscan per attempt in statsd), the
#    instance of each attempt is deleted, the node fails and nothing is
#    left, loopback addresses included;
#  - host-key-checking false: no scan, the node is ready at once;
#  - the static provider against a real sshd (tests/harness/sshd.sh):
#    slots registered with the sshd's own host keys (max-parallel-jobs 2:
#    two), a host whose configured host-key is wrong is not registered,
#    a request fulfilled, returned (in-use -> used) and the slot
#    registered again ready.
#
# env: NP_BUILD, NP_TEST_ZK_TLS and NP_TEST_ZK_CA/_CERT/_KEY (else a
# ZooKeeper is started). Test names on the command line run only those.
import os
import subprocess
import sys
import tempfile
import shutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launcherlib as L  # noqa: E402
from launcherlib import PROVIDER, Scenario, check, wait_for  # noqa: E402

FAST = {"NODEPOOL_CLEANUP_INTERVAL": "1"}


def consistent_cloud(s):
    nodes = s.nodes()
    ext = set(n["external_id"] for n in nodes.values())
    inst = set(i[:-5] for i in s.instances())
    return ext == inst and None not in ext


def addresses(s):
    d = os.path.join(s.state_dir, "addresses")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


# ---- 4. driver errors ----

def test_quota_failures(zk):
    s = Scenario(zk, "quotafail")
    try:
        prov = dict(PROVIDER, retries=1,
                    fake={"quota-failure-rate": 0.5, "seed": 7})
        cfg = s.write_config([prov], [("small", 0), ("big", 0)])
        p = s.start(cfg, env=FAST)
        rids = [s.request(l) for l in (["small"], ["big", "small"],
                                       ["small"], ["big"])]
        reqs = [s.wait_request(r, timeout=60) for r in rids]
        check(all(r and r["state"] == "fulfilled" for r in reqs),
              "quotafail: every request fulfilled (%r)"
              % [r and r["state"] for r in reqs])
        log = s.log(p)
        check("due to quota failure" in log,
              "quotafail: quota refusals happened and were logged")
        check("Launch attempt" not in log,
              "quotafail: no attempt counted (launch-retries 1)")
        check(wait_for(lambda: not [n for n in s.nodes().values()
                                    if n["state"] == "aborted"],
                       what="aborted nodes gone"),
              "quotafail: aborted nodes removed")
        check(wait_for(lambda: consistent_cloud(s), what="consistent"),
              "quotafail: every node has its instance and no more")
        check(len(s.nodes()) == 5, "quotafail: five nodes (%d)"
              % len(s.nodes()))
        s.stop(p)
    finally:
        s.close()


def test_launch_timeout(zk):
    s = Scenario(zk, "launchtimeout")
    try:
        prov = dict(PROVIDER, retries=2, keys={"launch-timeout": 1},
                    fake={"launch-delay": 3})
        cfg = s.write_config([prov], [("small", 0), ("big", 0)])
        p = s.start(cfg, env=FAST, debug=True)
        rid = s.request(["small"])
        req = s.wait_request(rid)
        check(req and req["state"] == "failed", "launchtimeout: failed")
        log = s.log(p)
        check(log.count("Timeout waiting for instance creation") == 2,
              "launchtimeout: two attempts timed out")
        check("Launch attempt 2/2" in log and "attempt 3/2" not in log,
              "launchtimeout: launch-retries attempts")
        check(wait_for(lambda: not s.nodes(), what="node deleted"),
              "launchtimeout: the failed node deleted")
        check(wait_for(lambda: not s.instances(), what="no instance"),
              "launchtimeout: no instance left (%r)" % s.instances())
        # The cloud finishes nothing later for the cancelled creates.
        n0 = s.log(p).count("Finished cleanup")
        wait_for(lambda: s.log(p).count("Finished cleanup") >= n0 + 3,
                 what="passes")
        check(not s.instances() and not s.nodes(),
              "launchtimeout: still nothing after the launch-delay")
        s.stop(p)
    finally:
        s.close()


def test_keyscan_failure(zk):
    s = Scenario(zk, "keyscan")
    sd = L.Statsd()
    try:
        # Nothing listens on this port of any loopback address.
        port = L.free_port()
        prov = dict(PROVIDER, retries=2, keys={"boot-timeout": 2},
                    fake={"ip-style": "loopback"},
                    image={"connection-port": port})
        cfg = s.write_config([prov], [("small", 0), ("big", 0)])
        p = s.start(cfg, env=dict(FAST, **sd.env()))
        rid = s.request(["small"])
        req = s.wait_request(rid, timeout=60)
        check(req and req["state"] == "failed", "keyscan: failed (%r)"
              % req)
        log = s.log(p)
        check(log.count("Error scanning keys") == 2,
              "keyscan: two scans failed")
        check("Launch attempt 2/2" in log and "attempt 3/2" not in log,
              "keyscan: launch-retries attempts")
        check(wait_for(lambda: sum(sd.values(
            "nodepool.launch.error.keyscan", "c")) == 2, what="stats"),
            "keyscan: error.keyscan counted per attempt (%r)"
            % sd.values("nodepool.launch.error.keyscan", "c"))
        check(wait_for(lambda: not s.nodes() and not s.instances(),
                       what="cleaned"),
              "keyscan: node and instances deleted (%r, %r)"
              % (s.nodes(), s.instances()))
        check(wait_for(lambda: not addresses(s), what="addresses"),
              "keyscan: loopback addresses released (%r)" % addresses(s))
        s.stop(p)
    finally:
        s.close()
        sd.close()


def test_no_host_key_checking(zk):
    s = Scenario(zk, "nohkc")
    try:
        port = L.free_port()
        prov = {"name": "fake-provider", "fake": {"ip-style": "loopback"},
                "keys": {"boot-timeout": 60},
                "image": {"connection-port": port},
                "pools": [{"name": "main", "labels": ["small", "big"],
                           "keys": {"host-key-checking": "false"}}]}
        cfg = s.write_config([prov], [("small", 0), ("big", 0)])
        p = s.start(cfg, debug=True)
        rid = s.request(["small", "big"])
        req = s.wait_request(rid, timeout=20)
        check(req and req["state"] == "fulfilled",
              "nohkc: fulfilled without an sshd")
        for nid in (req or {}).get("nodes", []):
            n = s.get_node(nid)
            check(n and n["host_keys"] == [] and
                  n["interface_ip"].startswith("127.10.0."),
                  "nohkc: node %s unscanned, loopback address (%r)"
                  % (nid, n))
        check("Submitting nodescan request" not in s.log(p),
              "nohkc: no scan")
        s.stop(p)
    finally:
        s.close()


# ---- 5. the static provider against a real sshd ----

def sshd_keys(d):
    """'type base64' of each host key sshd.sh made in D."""
    out = set()
    for f in os.listdir(d):
        if f.startswith("ssh_host_") and f.endswith("_key.pub"):
            with open(os.path.join(d, f)) as fh:
                out.add(" ".join(fh.read().split()[:2]))
    return out


WRONG_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBZ8yhtBqRVd3pXo3UiJWk"
             "Jm7lgTq2ZUqJ+1MvU6JgEW")


def static_provider(port, ed25519):
    return """  - name: static-provider
    driver: static
    pools:
      - name: main
        node-attributes: {executor-zone: z2}
        nodes:
          - name: 127.0.0.1
            labels: [static]
            connection-port: %d
            max-parallel-jobs: 2
            host-key: %s
          - name: 127.0.0.1
            username: other
            labels: [static-bad]
            connection-port: %d
            host-key: %s
""" % (port, ed25519, port, WRONG_KEY)


def static_ready(s):
    return {nid: n for nid, n in s.nodes().items()
            if n["state"] == "ready" and n["provider"] == "static-provider"}


def test_static_sshd(zk):
    s = Scenario(zk, "static")
    sdir = tempfile.mkdtemp(prefix="np-sshd.")
    sshd = os.path.join(L.TOP, "tests/harness/sshd.sh")
    try:
        out = subprocess.check_output(["bash", sshd, "start", sdir,
                                       "127.0.0.1"], text=True)
        port = int(out.split()[1])
        keys = sshd_keys(sdir)
        ed = [k for k in keys if k.startswith("ssh-ed25519 ")][0]
        cfg = s.write_config([], [("static", 0), ("static-bad", 0)],
                             extra=static_provider(port, ed))
        p = s.start(cfg, env=FAST)
        two = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(
            static_ready(s)), what="two slots")
        check(two, "static: max-parallel-jobs 2 gives two ready nodes")
        for nid, n in (two or {}).items():
            check(set(n["host_keys"]) == keys,
                  "static: node %s has the sshd's host keys (%r vs %r)"
                  % (nid, n["host_keys"], keys))
            check(n["hostname"] == "127.0.0.1" and
                  n["interface_ip"] == "127.0.0.1" and
                  n["connection_port"] == port and
                  n["type"] == ["static"] and
                  n["attributes"] == {"executor-zone": "z2"} and
                  n["username"] == "zuul",
                  "static: node %s's record %r" % (nid, n))
        check(sorted(n["slot"] for n in (two or {}).values()) == [0, 1],
              "static: slots 0 and 1")
        check(wait_for(lambda: "Couldn't sync static node: NodeTuple("
                       "hostname='127.0.0.1', username='other', port=%d): "
                       "host key mismatches" % port in s.log(p),
                       what="mismatch"),
              "static: the wrong host-key refused and logged")
        check(not [n for n in s.nodes().values()
                   if n["type"] == ["static-bad"]],
              "static: no node for the host with the wrong key")
        # A request for one slot: fulfilled, used, returned.
        rid = s.request(["static"])
        req = s.wait_request(rid)
        check(req and req["state"] == "fulfilled", "static: fulfilled")
        if not req:
            return
        used = req["nodes"][0]
        check(used in (two or {}), "static: a registered slot is used")
        slot = s.get_node(used)["slot"]
        s.use_and_return(rid, req)
        check(wait_for(lambda: s.get_node(used) is None, what="deleted"),
              "static: the used node is removed")
        again = wait_for(lambda: (lambda r: r if len(r) == 2 and
                                  used not in r else None)(static_ready(s)),
                         what="re-registered")
        check(again, "static: the slot registered again ready")
        fresh = [n for nid, n in (again or {}).items() if nid not in two]
        check(len(fresh) == 1 and fresh[0]["slot"] == slot and
              set(fresh[0]["host_keys"]) == keys,
              "static: the same slot with the same keys (%r)" % fresh)
        # Both slots at once.
        rid = s.request(["static", "static"])
        req = s.wait_request(rid)
        check(req and req["state"] == "fulfilled" and
              len(set(req["nodes"])) == 2, "static: two slots, one request")
        s.stop(p)
    finally:
        s.close()
        subprocess.call(["bash", sshd, "stop", sdir])
        shutil.rmtree(sdir, ignore_errors=True)


def test_static_host_down(zk):
    """The static host's sshd stops: the reuse probe fails, the slot is
    deregistered and the request waits; the sshd starts again (same
    port, same keys): the slot comes back and the request is served."""
    s = Scenario(zk, "staticdown")
    sdir = tempfile.mkdtemp(prefix="np-sshd.")
    sshd = os.path.join(L.TOP, "tests/harness/sshd.sh")
    try:
        out = subprocess.check_output(["bash", sshd, "start", sdir,
                                       "127.0.0.1"], text=True)
        port = int(out.split()[1])
        keys = sshd_keys(sdir)
        extra = """  - name: static-provider
    driver: static
    pools:
      - name: main
        nodes:
          - name: 127.0.0.1
            labels: [static]
            connection-port: %d
            timeout: 2
""" % port
        cfg = s.write_config([], [("static", 0)], extra=extra)
        p = s.start(cfg, env=FAST)
        first = wait_for(lambda: static_ready(s), what="slot")
        check(first, "staticdown: slot registered")
        subprocess.call(["bash", sshd, "stop", sdir])
        rid = s.request(["static"])
        check(wait_for(lambda: "is not reusable" in s.log(p),
                       what="probe"), "staticdown: the probe failed")
        check(wait_for(lambda: not s.nodes(), what="deregistered"),
              "staticdown: the dead host's slot deregistered")
        r = s.get_request(rid)
        check(r and r["state"] in ("requested", "pending") and
              not r.get("nodes"), "staticdown: the request waits (%r)" % r)
        subprocess.check_call(["bash", sshd, "start", sdir, "127.0.0.1",
                               str(port)], stdout=subprocess.DEVNULL)
        req = s.wait_request(rid, timeout=60)
        check(req and req["state"] == "fulfilled",
              "staticdown: served once the host is back (%r)" % req)
        if req:
            n = s.get_node(req["nodes"][0])
            check(n and set(n["host_keys"]) == keys and
                  n["allocated_to"] == rid,
                  "staticdown: by the re-registered slot (%r)" % n)
        s.stop(p)
    finally:
        s.close()
        subprocess.call(["bash", sshd, "stop", sdir])
        shutil.rmtree(sdir, ignore_errors=True)


TESTS = [test_quota_failures, test_launch_timeout, test_keyscan_failure,
         test_no_host_key_checking, test_static_sshd,
         test_static_host_down]

if __name__ == "__main__":
    sys.exit(L.run(TESTS))
