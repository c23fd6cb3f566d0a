#!/usr/bin/python3
# test_cleanup.py: the launcher's CleanupWorker against a real TLS
# ZooKeeper, real launcher processes and the fake cloud's state dir:
#  - a leaked instance (our provider's metadata, a node id absent from
#    ZooKeeper) is deleted after two passes, not after one, and counted in
#    statsd; other instances are left alone;
#  - a launcher killed (-9) mid-launch: the other launcher resets its lost
#    request (deallocating the ready node it had reused), which is then
#    fulfilled; the dead launcher's building node names its instance,
#    which the other deletes by that id (slowly, while the reset waits
#    for the node's lock); in the end every instance has a node and every
#    node an instance; a lost request's `init` node is deleted;
#  - max-ready-age: a ready unallocated node goes, an allocated one stays;
#  - hold expiry by hold_expiration and by max-hold-age;
#  - an empty node znode (with a lock below it) is deleted;
#  - a stale request-lock directory is deleted, a live one is kept.
# Passes are counted from the launcher's debug log ("Finished cleanup");
# the cleanup interval and the request-lock age are shortened through
# NODEPOOL_CLEANUP_INTERVAL and NODEPOOL_REQUEST_LOCK_AGE.
#
# env: as test_launcher.py (NP_BUILD, NP_TEST_ZK_TLS/_CA/_CERT/_KEY).
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launcherlib import (PROVIDER, Scenario, Statsd, check,  # noqa: E402
                         run, wait_for)

FAST = {"NODEPOOL_CLEANUP_INTERVAL": "1"}
SESSION = "zookeeper-timeout: 4\n"


def passes(s, p):
    return s.log(p).count("Finished cleanup")


def wait_passes(s, p, n, what):
    return wait_for(lambda: passes(s, p) >= n, what="%s: %d passes"
                    % (what, n))


def test_leaked_instance(zk):
    s = Scenario(zk, "leak")
    sd = Statsd()
    try:
        cfg = s.write_config([PROVIDER], [("small", 0), ("big", 0)])
        env = dict(sd.env(), NODEPOOL_CLEANUP_INTERVAL="2")
        p = s.start(cfg, env=env, debug=True)
        check(wait_passes(s, p, 1, "leak"), "leak: first pass")
        # A real node's instance is no leak.
        req = s.wait_request(s.request(["small"]))
        check(req and req["state"] == "fulfilled", "leak: fulfilled")
        n0 = passes(s, p)
        leak = s.add_instance({"nodepool_provider_name": "fake-provider",
                               "nodepool_node_id": "0000099999",
                               "nodepool_pool_name": "main"})
        foreign = s.add_instance({"nodepool_provider_name": "other",
                                  "nodepool_node_id": "0000099998"})
        upload = s.add_instance({"nodepool_provider_name": "fake-provider",
                                 "nodepool_upload_id": "0000000001"})
        check(wait_for(lambda: leak + ".json" not in s.instances(),
                       what="leak deleted"), "leak: deleted")
        # The pass running when it appeared may have seen it once, the
        # next one twice: the deletion comes after at least one pass that
        # started after the instance existed had finished. Read from the
        # log, so a slow test process cannot miss the moment.
        log = s.log(p)
        at = log.find("Deleting leaked instance %s " % leak)
        check(at >= 0, "leak: deletion logged")
        check(log[:at].count("Finished cleanup") >= n0 + 1,
              "leak: not deleted after one pass (%d passes before, %d "
              "when created)" % (log[:at].count("Finished cleanup"), n0))
        first = log.find("Instance %s of fake-provider names node "
                         "0000099999" % leak)
        check(0 <= first < at and
              log[first:at].count("Finished cleanup") >= 1,
              "leak: suspected one pass before")
        check(wait_for(lambda: sum(sd.values(
            "nodepool.provider.fake-provider.leaked.instances", "c")) == 1,
            what="leak counter"), "leak: counted in statsd")
        n1 = passes(s, p)
        check(wait_passes(s, p, n1 + 2, "leak"), "leak: two more passes")
        left = s.instances()
        check(foreign + ".json" in left, "leak: other provider's kept")
        check(upload + ".json" in left, "leak: non-node resource kept")
        n = s.get_node(req["nodes"][0]) if req else None
        check(n and n["external_id"] + ".json" in left,
              "leak: live node's instance kept")
        s.stop(p)
    finally:
        s.close()
        sd.close()


def consistent_cloud(s):
    """Every instance has a node and every node an instance."""
    nodes = s.nodes()
    ext = set(n["external_id"] for n in nodes.values())
    inst = set(i[:-5] for i in s.instances())
    return nodes and ext == inst and None not in ext


def test_lost_request(zk):
    s = Scenario(zk, "lost")
    try:
        prov = dict(PROVIDER, fake={"launch-delay": 3, "delete-delay": 2})
        cfg = s.write_config([prov], [("small", 0), ("big", 0)],
                             extra=SESSION)
        a = s.start(cfg, env=FAST, debug=True)
        # A spare ready node: served, then its request withdrawn.
        r0 = s.request(["small"])
        req = s.wait_request(r0)
        check(req and req["state"] == "fulfilled", "lost: first request")
        if not req:
            return
        spare = req["nodes"][0]
        s.kz.delete("/nodepool/requests/" + r0)
        check(wait_for(lambda: (s.get_node(spare) or {}).get(
            "allocated_to", 1) is None, what="spare"), "lost: spare node")
        # a reuses the spare and launches a second node, slowly...
        rid = s.request(["small", "small"])
        check(wait_for(lambda: (s.get_request(rid) or {}).get("state") ==
                       "pending", what="pending"), "lost: pending on a")
        check(wait_for(lambda: [n for n in s.nodes().values()
                                if n["allocated_to"] == rid and
                                n["state"] == "building"] and
                       (s.get_node(spare) or {}).get("allocated_to") == rid,
                       what="building"), "lost: a reuses one, builds one")
        b = s.start(cfg, env=FAST, debug=True)
        check(wait_for(lambda: len(s.registered_pools()) == 2,
                       what="pool b"), "lost: b registered")
        # b's passes leave the request alone while a holds its lock.
        check(wait_passes(s, b, 2, "lost"), "lost: b runs passes")
        check((s.get_request(rid) or {}).get("state") == "pending",
              "lost: a live request stays pending")
        # ... and dies. Once its session expires, b resets the request
        # (the spare is deallocated on the way) and serves it.
        s.kill(a)
        req = s.wait_request(rid, timeout=90)
        check(req and req["state"] == "fulfilled",
              "lost: fulfilled after the reset")
        log = s.log(b)
        check("Reset lost request" in log, "lost: reset logged")
        check("Deallocated node %s for lost request" % spare in log,
              "lost: the spare node was deallocated")
        # The building node named its instance (the fake reports the id
        # when a launch takes a while): b deletes it through the node,
        # slowly (delete-delay) while the reset waits for the node's
        # lock, so the node's tree goes the slow way (a waiter's
        # contender in it).
        check("Deleting building instance" in log,
              "lost: the dead launcher's building node's instance "
              "deleted by its id")
        check(wait_for(lambda: consistent_cloud(s), timeout=60,
                       what="consistent cloud"),
              "lost: every instance has a node and every node an "
              "instance (%s / %s)" % (sorted(s.instances()),
                                     sorted(s.nodes())))
        if req:
            for nid in req["nodes"]:
                n = s.get_node(nid)
                check(n and n["state"] == "ready" and
                      n["allocated_to"] == rid,
                      "lost: node %s ready and allocated" % nid)
        s.stop(b)
    finally:
        s.close()


def test_lost_request_init_node(zk):
    """A launcher that died between creating a node (init) and locking
    it: the node goes (deleting), the request is served again."""
    s = Scenario(zk, "lostinit")
    try:
        cfg = s.write_config([PROVIDER], [("small", 0), ("big", 0)])
        rid = s.request(["small"], state="pending")
        node = {"state": "init", "state_time": time.time(),
                "provider": "fake-provider", "pool": "main",
                "type": ["small"], "allocated_to": rid,
                "launcher": "dead-PoolWorker.fake-provider-main-x",
                "created_time": time.time(), "external_id": None}
        path = s.kz.create("/nodepool/nodes/",
                           json.dumps(node).encode("utf8"), sequence=True,
                           makepath=True)
        nid = path.split("/")[-1]
        p = s.start(cfg, env=FAST, debug=True)
        req = s.wait_request(rid)
        check(req and req["state"] == "fulfilled", "lostinit: fulfilled")
        check(req and nid not in req["nodes"], "lostinit: by a new node")
        check(wait_for(lambda: s.get_node(nid) is None, what="init node"),
              "lostinit: the init node is deleted")
        check("Reset lost request" in s.log(p), "lostinit: reset logged")
        check(wait_for(lambda: consistent_cloud(s), what="consistent"),
              "lostinit: cloud and nodes agree")
        s.stop(p)
    finally:
        s.close()


def test_max_ready_age(zk):
    s = Scenario(zk, "readyage")
    try:
        cfg = s.write_config([PROVIDER], [("small", 1, {"max-ready-age": 3}),
                                          ("big", 0)])
        p = s.start(cfg, env=FAST, debug=True)

        def ready():
            return {nid: n for nid, n in s.nodes().items()
                    if n["state"] == "ready" and not n["allocated_to"]}
        first = wait_for(ready, what="min-ready node")
        check(first, "readyage: a ready node")
        if not first:
            return
        nid, node = list(first.items())[0]
        check(wait_for(lambda: (s.get_node(nid) or {}).get("state") !=
                       "ready", what="aged out"), "readyage: aged out")
        check(time.time() >= node["state_time"] + 3,
              "readyage: not before max-ready-age")
        check(wait_for(lambda: [i for i in ready() if i != nid],
                       what="replacement"), "readyage: replaced (min-ready)")
        # An allocated ready node stays, however old.
        rid = s.request(["small"])
        req = s.wait_request(rid)
        check(req and req["state"] == "fulfilled", "readyage: fulfilled")
        if not req:
            return
        held = req["nodes"][0]
        t0 = time.time()
        wait_for(lambda: time.time() > t0 + 4, what="4 s")
        n0 = passes(s, p)
        check(wait_passes(s, p, n0 + 2, "readyage"), "readyage: passes")
        n = s.get_node(held)
        check(n and n["state"] == "ready" and n["allocated_to"] == rid,
              "readyage: allocated node kept")
        s.stop(p)
    finally:
        s.close()


def hold(s, nid, expiration):
    lock = s.lock_node(nid)
    n = s.set_node(nid, state="hold", state_time=time.time(),
                   hold_job="tenant project job", comment="testing",
                   hold_expiration=expiration)
    lock.release()
    return n


def test_hold_expiration(zk):
    s = Scenario(zk, "hold")
    try:
        cfg = s.write_config([PROVIDER], [("small", 0), ("big", 0)])
        p = s.start(cfg, env=FAST, debug=True)
        req = s.wait_request(s.request(["small", "small"]))
        check(req and req["state"] == "fulfilled", "hold: fulfilled")
        if not req:
            return
        short, forever = req["nodes"]
        n = hold(s, short, 2)
        hold(s, forever, None)
        check(wait_for(lambda: s.get_node(short) is None,
                       what="expired hold"), "hold: expired node deleted")
        check(time.time() >= n["state_time"] + 2,
              "hold: not before hold_expiration")
        n0 = passes(s, p)
        check(wait_passes(s, p, n0 + 2, "hold"), "hold: passes")
        check((s.get_node(forever) or {}).get("state") == "hold",
              "hold: no expiration, no max-hold-age: kept")
        s.stop(p)
    finally:
        s.close()


def test_max_hold_age(zk):
    s = Scenario(zk, "holdage")
    try:
        cfg = s.write_config([PROVIDER], [("small", 0), ("big", 0)],
                             extra="max-hold-age: 2\n")
        p = s.start(cfg, env=FAST, debug=True)
        req = s.wait_request(s.request(["small"]))
        check(req and req["state"] == "fulfilled", "holdage: fulfilled")
        if not req:
            return
        nid = req["nodes"][0]
        # max-hold-age is the smaller limit here.
        n = hold(s, nid, 3600)
        check(wait_for(lambda: s.get_node(nid) is None,
                       what="max-hold-age"), "holdage: deleted")
        check(time.time() >= n["state_time"] + 2,
              "holdage: not before max-hold-age")
        check(wait_for(lambda: not s.instances(), what="instance gone"),
              "holdage: instance deleted")
        s.stop(p)
    finally:
        s.close()


def test_empty_node(zk):
    s = Scenario(zk, "empty")
    try:
        cfg = s.write_config([PROVIDER], [("small", 0), ("big", 0)])
        p = s.start(cfg, env=FAST, debug=True)
        check(wait_passes(s, p, 1, "empty"), "empty: first pass")
        s.kz.create("/nodepool/nodes/0000088888", b"", makepath=True)
        s.kz.create("/nodepool/nodes/0000088888/lock/x__lock__0000000000",
                    b"", makepath=True)
        s.kz.create("/nodepool/nodes/0000088887", b"{not json")
        check(wait_for(lambda: not s.kz.exists("/nodepool/nodes/0000088888"),
                       what="empty node"), "empty: deleted with its lock")
        n0 = passes(s, p)
        check(wait_passes(s, p, n0 + 1, "empty"), "empty: a pass")
        check(s.kz.exists("/nodepool/nodes/0000088887"),
              "empty: a node with data is kept")
        s.stop(p)
    finally:
        s.close()


def test_request_locks(zk):
    s = Scenario(zk, "reqlock")
    try:
        cfg = s.write_config([PROVIDER], [("small", 0), ("big", 0)])
        env = dict(FAST, NODEPOOL_REQUEST_LOCK_AGE="3")
        p = s.start(cfg, env=env, debug=True)
        check(wait_passes(s, p, 1, "reqlock"), "reqlock: first pass")
        # A request that stays (failed: nobody serves the label) has a
        # lock directory left by its handler.
        live = s.request(["nope"])
        req = s.wait_request(live)
        check(req and req["state"] == "failed", "reqlock: request failed")
        stale = "/nodepool/requests-lock/100-0000055555"
        t0 = time.time()
        s.kz.create(stale + "/x__lock__0000000000", b"", makepath=True)
        check(wait_for(lambda: not s.kz.exists(stale), what="stale lock"),
              "reqlock: stale lock dir deleted")
        check(time.time() >= t0 + 3, "reqlock: not before its age")
        n0 = passes(s, p)
        check(wait_passes(s, p, n0 + 2, "reqlock"), "reqlock: passes")
        check(s.kz.exists("/nodepool/requests-lock/" + live),
              "reqlock: a live request's lock dir is kept")
        s.stop(p)
    finally:
        s.close()


TESTS = [test_leaked_instance, test_lost_request,
         test_lost_request_init_node, test_max_ready_age,
         test_hold_expiration, test_max_hold_age, test_empty_node,
         test_request_locks]

if __name__ == "__main__":
    sys.exit(run(TESTS))
