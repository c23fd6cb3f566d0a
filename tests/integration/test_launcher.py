#!/usr/bin/python3
# test_launcher.py: nodepool-launcher end to end against a real TLS
# ZooKeeper and the fake driver (its cloud kept in a state-dir, so the test
# can see instances come and go). Requests are written the way Zuul-2025
# writes them (kazoo, persistent sequential /nodepool/requests/100-), and
# the test then plays Zuul: lock the nodes, delete the request, in-use,
# used, unlock; the launcher must delete the nodes and their instances.
#
# Each scenario runs in its own chroot with its own launcher process(es),
# stopped with SIGINT (graceful: exit 0, components unregistered). The
# shared machinery (ZooKeeper, Scenario, helpers) is in launcherlib.py.
#
# env: NP_BUILD (build dir with nodepool-launcher); NP_TEST_ZK_TLS and
# NP_TEST_ZK_CA/_CERT/_KEY for a running TLS ZooKeeper, else one is started
# through tests/harness and stopped at the end.
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launcherlib import (NODE_KEYS, PROVIDER, REQUEST_KEYS,  # noqa: E402
                         Scenario, check, run, wait_for)


def test_fulfil_and_delete(zk):
    s = Scenario(zk, "basic")
    try:
        cfg = s.write_config([PROVIDER], [("small", 0), ("big", 0)])
        p = s.start(cfg)
        wait_for(lambda: s.registered_pools(), what="pool registered")
        pools = s.registered_pools()
        check(len(pools) == 1, "basic: one pool component")
        if pools:
            c = pools[0]
            check(sorted(c) == ["hostname", "id", "kind", "model_api", "name",
                                "paused", "priority", "provider_name",
                                "state", "supported_labels", "version"],
                  "basic: pool component keys")
            check(c["kind"] == "pool" and c["state"] == "running" and
                  c["supported_labels"] == ["small", "big"] and
                  c["priority"] == 100 and c["paused"] is False,
                  "basic: pool component values")
            check("-PoolWorker.fake-provider-main-" in c["id"],
                  "basic: launcher id format")
        rid = s.request(["big", "small", "big"])
        req = s.wait_request(rid)
        check(req and req["state"] == "fulfilled", "basic: fulfilled")
        if not req:
            return
        check(list(req.keys())[:len(REQUEST_KEYS)] == REQUEST_KEYS,
              "basic: request keys in upstream order")
        check(req["requestor_data"] == {"job_name": "j"},
              "basic: requestor_data kept")
        check(len(req["nodes"]) == 3 and len(set(req["nodes"])) == 3,
              "basic: three distinct nodes")
        types = []
        for nid in req["nodes"]:
            n = s.get_node(nid)
            types.append(n["type"][0] if n else None)
            if not n:
                continue
            check(list(n.keys())[:len(NODE_KEYS)] == NODE_KEYS,
                  "basic: node %s keys in upstream order" % nid)
            check(n["state"] == "ready" and n["allocated_to"] == rid,
                  "basic: node ready and allocated")
            check(n["provider"] == "fake-provider" and n["pool"] == "main",
                  "basic: node provider/pool")
            check(n["launcher"] == pools[0]["id"] if pools else False,
                  "basic: node launcher is the pool id")
            check(n["tenant_name"] == "tenant" and
                  n["requestor"] == "zuul-system-id",
                  "basic: tenant and requestor copied")
            check(n["hostname"] is None or n["hostname"].startswith("np"),
                  "basic: hostname")
            check(n["image_id"] == "fake-image" and n["external_id"],
                  "basic: image and external id")
            check(n["connection_port"] == 22 and n["ssh_port"] == 22 and
                  n["connection_type"] == "ssh",
                  "basic: connection attributes")
            check(n["host_keys"] == ["ssh-rsa FAKEKEY"], "basic: host keys")
            check(n["attributes"] == {"executor-zone": "z1"},
                  "basic: node attributes")
            check(isinstance(n["resources"], dict) and
                  n["resources"].get("instances") == 1, "basic: resources")
            check(n["created_time"] <= n["state_time"],
                  "basic: created_time")
            check(n["az"] in ("az1", "az2"), "basic: az")
        check(types == ["big", "small", "big"], "basic: nodes in node_types "
              "order (%s)" % types)
        azs = set((s.get_node(nid) or {}).get("az") for nid in req["nodes"])
        check(len(azs) == 1, "basic: one AZ per request")
        check(len(s.instances()) == 3, "basic: three instances")
        s.use_and_return(rid, req)
        gone = wait_for(lambda: all(not s.kz.exists("/nodepool/nodes/" + n)
                                    for n in req["nodes"]),
                        what="nodes deleted")
        check(gone, "basic: used nodes deleted")
        check(wait_for(lambda: len(s.instances()) == 0,
                       what="instances deleted"), "basic: instances deleted")
        s.stop(p)
        check(s.registered_pools() == [], "basic: components unregistered")
        lock_dir = "/nodepool/requests-lock/%s" % rid
        check(not s.kz.exists(lock_dir) or
              s.kz.get_children(lock_dir) == [], "basic: request unlocked")
    finally:
        s.close()


def test_min_ready(zk):
    s = Scenario(zk, "minready")
    try:
        cfg = s.write_config([PROVIDER], [("small", 2), ("big", 0)])
        p = s.start(cfg)

        def ready_small():
            return [n for n in s.nodes().values() if n["state"] == "ready"
                    and n["type"] == ["small"] and not n["allocated_to"]]
        check(wait_for(lambda: len(ready_small()) >= 2,
                       what="min-ready nodes"), "minready: 2 ready nodes")
        # The min-ready requests are gone once done.
        check(wait_for(lambda: not [r for r in (s.kz.get_children(
            "/nodepool/requests") if s.kz.exists("/nodepool/requests")
            else []) if r.startswith("900-")], what="min-ready requests "
            "removed"), "minready: requests removed")
        time.sleep(2)
        check(len(ready_small()) == 2, "minready: no overshoot (%d)"
              % len(ready_small()))
        # A Zuul request reuses a ready node.
        before = set(n for n, v in s.nodes().items() if v["state"] == "ready")
        rid = s.request(["small"])
        req = s.wait_request(rid)
        check(req and req["state"] == "fulfilled" and
              req["nodes"][0] in before, "minready: ready node reused")
        s.stop(p)
    finally:
        s.close()


def test_decline_unknown_and_malformed(zk):
    s = Scenario(zk, "decline")
    try:
        cfg = s.write_config([PROVIDER], [("small", 0), ("big", 0),
                                          ("other", 0)])
        p = s.start(cfg)
        wait_for(lambda: s.registered_pools(), what="pool registered")
        bad = s.kz.create("/nodepool/requests/100-", b"{not json",
                          sequence=True, makepath=True).split("/")[-1]
        rid = s.request(["other"])
        req = s.wait_request(rid)
        check(req and req["state"] == "failed", "decline: unknown label fails")
        if req:
            pools = s.registered_pools()
            check(pools and req["declined_by"] == [pools[0]["id"]],
                  "decline: declined_by is our pool id")
        ok = s.request(["small"])
        req = s.wait_request(ok)
        check(req and req["state"] == "fulfilled",
              "decline: good request served after a malformed one")
        check(s.kz.get("/nodepool/requests/" + bad)[0] == b"{not json",
              "decline: malformed request left alone")
        check("node type(s) [other] not available" in s.log(p),
              "decline: reason logged")
        s.stop(p)
    finally:
        s.close()


def test_cancel_mid_launch(zk):
    s = Scenario(zk, "cancel")
    try:
        prov = dict(PROVIDER, fake={"launch-delay": 2})
        cfg = s.write_config([prov], [("small", 0), ("big", 0)])
        p = s.start(cfg)
        rid = s.request(["small"])
        wait_for(lambda: (s.get_request(rid) or {}).get("state") == "pending",
                 what="pending")
        wait_for(lambda: any(n["allocated_to"] == rid
                             for n in s.nodes().values()), what="node")
        s.kz.delete("/nodepool/requests/" + rid)

        def settled():
            ns = s.nodes()
            return ns and all(n["state"] == "ready" and not n["allocated_to"]
                              for n in ns.values())
        check(wait_for(settled, what="node freed"),
              "cancel: node ends ready and unallocated")
        check(len(s.instances()) == len(s.nodes()),
              "cancel: no instance leaked")
        s.stop(p)
    finally:
        s.close()


def test_quota_pause(zk):
    s = Scenario(zk, "quota")
    try:
        p, _, r1, req1, r2 = s.start_full_pool("quota")
        s.use_and_return(r1, req1)
        req2 = s.wait_request(r2)
        check(req2 and req2["state"] == "fulfilled",
              "quota: second fulfilled after a node was deleted")
        check(wait_for(lambda: not s.pool_paused(), what="unpaused"),
              "quota: pool unpaused")
        s.stop(p)
    finally:
        s.close()


def test_launch_failure(zk):
    s = Scenario(zk, "failure")
    try:
        prov = dict(PROVIDER, fake={"failure-rate": 1.0}, retries=2)
        cfg = s.write_config([prov], [("small", 0), ("big", 0)])
        p = s.start(cfg)
        rid = s.request(["small"])
        req = s.wait_request(rid)
        check(req and req["state"] == "failed", "failure: request failed")
        log = s.log(p)
        check("Launch attempt 2/2" in log and "Launch attempt 3/2" not in log,
              "failure: launch-retries attempts")
        check(wait_for(lambda: not s.nodes(), what="failed node deleted"),
              "failure: failed node deleted")
        check(len(s.instances()) == 0, "failure: nothing leaked")
        s.stop(p)
    finally:
        s.close()


def test_delete_with_waiter(zk):
    """Someone waits on a used node's lock while the deleter deletes its
    instance: the one transaction cannot take the lock directory, so the
    removal goes upstream's way (`deleted`, then the tree, the waiter's
    contender with it): store.h's removal plan, shared with delete --now."""
    s = Scenario(zk, "delwait")
    try:
        prov = dict(PROVIDER, fake={"delete-delay": 5})
        cfg = s.write_config([prov], [("small", 1), ("big", 0)])
        p = s.start(cfg)
        ready = wait_for(lambda: [nid for nid, n in s.nodes().items()
                                  if n["state"] == "ready"], what="min-ready")
        if not check(ready, "delwait: a ready node"):
            return
        nid = ready[0]
        ext = s.get_node(nid)["external_id"]
        lock = s.lock_node(nid)
        s.set_node(nid, state="used")
        lock.release()
        check(wait_for(lambda: (s.get_node(nid) or {}).get("state") ==
                       "deleting", what="deleting"), "delwait: deleting")
        # The deleter holds the lock while the cloud deletes (5 s).
        waiter = s.kz.create("/nodepool/nodes/%s/lock/%s__lock__"
                             % (nid, uuid.uuid4().hex), ephemeral=True,
                             sequence=True)
        check((s.get_node(nid) or {}).get("state") == "deleting",
              "delwait: the waiter came while the instance was deleted")
        check(wait_for(lambda: not s.kz.exists("/nodepool/nodes/" + nid),
                       what="node removed"),
              "delwait: the node is removed, its lock with it")
        check(not s.kz.exists(waiter), "delwait: the waiter's contender "
              "went with the tree")
        check(ext + ".json" not in s.instances(), "delwait: instance gone")
        log = s.log(p)
        check("Deleted ZK node id=%s" % nid in log, "delwait: logged")
        check("Error deleting znode" not in log, "delwait: no error: %s"
              % [ln for ln in log.splitlines() if "Error" in ln])
        s.stop(p)
    finally:
        s.close()


def test_two_launchers(zk):
    s = Scenario(zk, "two")
    try:
        pa = {"name": "fake-a", "pools": [{"name": "main",
                                           "labels": ["small", "big"]}]}
        pb = {"name": "fake-b", "pools": [{"name": "main",
                                           "labels": ["small", "other"]}]}
        labels = [("small", 0), ("big", 0), ("other", 0)]
        ca = s.write_config([pa], labels, "a.yaml")
        cb = s.write_config([pb], labels, "b.yaml")
        p1 = s.start(ca)
        p2 = s.start(cb)
        wait_for(lambda: len(s.registered_pools()) == 2, what="two pools")
        rids = []
        for i in range(30):
            rids.append(s.request([["small"], ["big"], ["other"],
                                   ["small", "small"]][i % 4]))
        seen = {}
        ok = True
        for rid in rids:
            req = s.wait_request(rid)
            if not req or req["state"] != "fulfilled":
                ok = False
                continue
            for nid in req["nodes"]:
                if nid in seen:
                    ok = False
                seen[nid] = rid
                n = s.get_node(nid)
                if not n or n["allocated_to"] != rid:
                    ok = False
        check(ok, "two: every request fulfilled with its own nodes")
        s.stop(p1)
        s.stop(p2)
    finally:
        s.close()


def test_reload(zk):
    s = Scenario(zk, "reload")
    try:
        cfg = s.write_config([PROVIDER], [("small", 0), ("big", 0)])
        p = s.start(cfg)
        wait_for(lambda: s.registered_pools(), what="pool registered")
        time.sleep(1.1)  # a new mtime
        prov2 = {"name": "fake-second",
                 "pools": [{"name": "p2", "labels": ["extra"]}]}
        s.write_config([PROVIDER, prov2], [("small", 0), ("big", 0),
                                           ("extra", 0)])
        check(wait_for(lambda: len(s.registered_pools()) == 2,
                       what="second pool"), "reload: new provider's pool")
        rid = s.request(["extra"])
        req = s.wait_request(rid)
        check(req and req["state"] == "fulfilled",
              "reload: new label served without restart")
        if req:
            n = s.get_node(req["nodes"][0])
            check(n and n["provider"] == "fake-second",
                  "reload: by the new provider")
        s.stop(p)
    finally:
        s.close()


def test_many_at_once(zk):
    # More requests and deletions at once than the deleter runs at a time
    # (128): every request is fulfilled with its own node, and once the
    # nodes are used all of them and their instances go.
    n = 300
    s = Scenario(zk, "many")
    try:
        prov = {"name": "fake-provider",
                "pools": [{"name": "main", "max": n + 10,
                           "labels": ["small"]}]}
        cfg = s.write_config([prov], [("small", 0)])
        p = s.start(cfg)
        rids = [s.request(["small"]) for _ in range(n)]
        reqs = [s.wait_request(r) for r in rids]
        ok = [r for r in reqs if r and r["state"] == "fulfilled"]
        check(len(ok) == n, "many: all %d fulfilled (%d)" % (n, len(ok)))
        ids = [r["nodes"][0] for r in ok if len(r["nodes"]) == 1]
        check(len(set(ids)) == n, "many: one node each, none shared")
        locks = []
        for rid, req in zip(rids, reqs):
            if not req or req["state"] != "fulfilled":
                continue
            nid = req["nodes"][0]
            locks.append(s.lock_node(nid))
            s.kz.delete("/nodepool/requests/" + rid)
            s.set_node(nid, state="in-use", state_time=time.time())
            s.set_node(nid, state="used", state_time=time.time())
        for lock in locks:
            lock.release()
        check(wait_for(lambda: not s.nodes() and not s.instances(),
                       timeout=60, what="all nodes deleted"),
              "many: every node and instance deleted")
        s.stop(p)
    finally:
        s.close()


def test_large_set(zk):
    """A request of more nodes than the handler marks on its stack when it
    lists the nodes (16): each node given once, in the order of the
    request's labels."""
    s = Scenario(zk, "large-set")
    try:
        cfg = s.write_config([PROVIDER], [("small", 0), ("big", 0)])
        p = s.start(cfg)
        wait_for(lambda: s.registered_pools(), what="pool registered")
        labels = ["big" if i % 3 == 0 else "small" for i in range(18)]
        rid = s.request(labels)
        req = s.wait_request(rid)
        check(req and req["state"] == "fulfilled", "large set: fulfilled")
        nodes = req["nodes"] if req else []
        check(len(nodes) == 18 and len(set(nodes)) == 18,
              "large set: eighteen distinct nodes")
        types = [(s.get_node(nid) or {}).get("type", [None])[0]
                 for nid in nodes]
        check(types == labels, "large set: nodes in the labels' order")
        s.kz.delete("/nodepool/requests/" + rid)
        s.stop(p)
    finally:
        s.close()


TESTS = [test_fulfil_and_delete, test_min_ready,
         test_decline_unknown_and_malformed, test_cancel_mid_launch,
         test_quota_pause, test_launch_failure, test_delete_with_waiter,
         test_two_launchers, test_reload, test_many_at_once, test_large_set]


if __name__ == "__main__":
    sys.exit(run(TESTS))
