#!/usr/bin/python3
# test_stats.py: the launcher's statsd metrics, received by a real UDP
# socket: a launch cycle (launch timers and counters by provider, AZ and
# normalised requestor; the leader's node, label, provider and
# addressable-request gauges; max_servers and tenant limits; the local
# zk gauges), the error paths (error.unknown per failed attempt,
# error.servercreatetimeout), and the stats election between two launchers
# (only the leader sends the global gauges; kill -9 it and the other takes
# over once the dead session expires).
#
# env: as test_launcher.py (NP_BUILD, NP_TEST_ZK_TLS/_CA/_CERT/_KEY).
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launcherlib import (Scenario, Statsd, check, run,  # noqa: E402
                         wait_for)

# A short session timeout, so a killed launcher's election contender (an
# ephemeral znode) goes soon.
SESSION = "zookeeper-timeout: 4\n"
TENANTS = ("tenant-resource-limits:\n"
           "  - tenant-name: ten.ant:x\n"
           "    max-cores: 10\n"
           "    max-servers: 5\n")


def counter(sd, key):
    return sum(sd.values(key, "c"))


def test_launch_cycle(zk):
    s = Scenario(zk, "stats-cycle")
    sd = Statsd()
    try:
        prov = {"name": "fake-provider",
                "pools": [{"name": "main", "max": 7, "azs": ["az1"],
                           "labels": ["small", "big"]}]}
        cfg = s.write_config([prov], [("small", 0), ("big", 0)],
                             extra=TENANTS)
        p = s.start(cfg, env=sd.env())
        host = socket.gethostname()
        # Local gauges come at once, then every 10 s.
        check(wait_for(lambda: sd.values(
            "nodepool.launcher.%s.zk.node_cache.event_queue" % host, "g"),
            what="local gauges"), "cycle: local zk gauges")
        for key in ("zk.client.connection_queue",
                    "zk.request_cache.event_queue",
                    "zk.image_cache.playback_queue"):
            check(sd.values("nodepool.launcher.%s.%s" % (host, key), "g"),
                  "cycle: local gauge %s" % key)
        # Pool worker passes.
        check(wait_for(lambda: sd.last(
            "nodepool.provider.fake-provider.max_servers") == 7,
            what="max_servers"), "cycle: max_servers gauge")
        check(wait_for(lambda: sd.last(
            "nodepool.tenant_limits.ten_ant_x.cores") == 10,
            what="tenant limit"), "cycle: tenant cores limit, normalised")
        check(sd.last("nodepool.tenant_limits.ten_ant_x.instances") == 5,
              "cycle: tenant instances limit")
        check(sd.last("nodepool.tenant_limits.ten_ant_x.ram") ==
              float("inf"), "cycle: unlimited tenant ram is inf")
        # The only launcher wins the election and reports at once.
        check(wait_for(lambda: sd.values("nodepool.nodes.ready", "g"),
                       what="leader gauges"), "cycle: leader gauges")
        check(sd.last("nodepool.nodes.ready") == 0, "cycle: 0 ready")

        rid = s.request(["small"], requestor="zuul.sys:1")
        req = s.wait_request(rid)
        check(req and req["state"] == "fulfilled", "cycle: fulfilled")
        if not req:
            return
        for key in ("nodepool.launch.ready",
                    "nodepool.launch.provider.fake-provider.ready",
                    "nodepool.launch.provider.fake-provider.az1.ready",
                    "nodepool.launch.requestor.zuul_sys_1.ready"):
            check(wait_for(lambda: counter(sd, key) == 1, what=key),
                  "cycle: counter %s" % key)
            t = sd.values(key, "ms")
            check(len(t) == 1 and t[0] >= 0, "cycle: timer %s" % key)
        check(not [k for k in sd.keys() if k.startswith("nodepool.launch.")
                   and ".error." in k], "cycle: no launch errors")
        gauges = {
            "nodepool.nodes.ready": 1,
            "nodepool.nodes.building": 0,
            "nodepool.provider.fake-provider.nodes.ready": 1,
            "nodepool.label.small.nodes.ready": 1,
            "nodepool.label.big.nodes.ready": 0,
            "nodepool.provider.fake-provider.pool.main."
            "addressable_requests": 1,
        }
        for key, want in gauges.items():
            check(wait_for(lambda: sd.last(key) == want, what=key),
                  "cycle: gauge %s == %s (%s)" % (key, want, sd.last(key)))
        # Every known state is reported, at 0 when there is none.
        for st in ("testing", "in-use", "used", "hold", "deleting", "failed",
                   "init", "aborted", "deleted"):
            check(sd.values("nodepool.nodes.%s" % st, "g"),
                  "cycle: state %s reported" % st)
        # Zuul uses the node and returns it: the gauges follow.
        s.use_and_return(rid, req)
        check(wait_for(lambda: not s.nodes(), what="node deleted"),
              "cycle: node deleted")
        check(wait_for(lambda: sd.last("nodepool.nodes.ready") == 0 and
                       sd.last("nodepool.provider.fake-provider.pool.main."
                               "addressable_requests") == 0,
                       what="gauges back to 0"), "cycle: gauges back to 0")
        s.stop(p)
    finally:
        s.close()
        sd.close()


def test_launch_errors(zk):
    s = Scenario(zk, "stats-errors")
    sd = Statsd()
    try:
        broken = {"name": "fake-broken", "retries": 2,
                  "fake": {"failure-rate": 1.0},
                  "pools": [{"name": "main", "labels": ["small"]}]}
        slow = {"name": "fake-slow", "retries": 1,
                "keys": {"launch-timeout": 1},
                "fake": {"launch-delay": 30},
                "pools": [{"name": "main", "labels": ["big"]}]}
        cfg = s.write_config([broken, slow], [("small", 0), ("big", 0)])
        p = s.start(cfg, env=sd.env())
        wait_for(lambda: len(s.registered_pools()) == 2, what="pools")
        r1 = s.request(["small"])
        r2 = s.request(["big"])
        for rid in (r1, r2):
            req = s.wait_request(rid)
            check(req and req["state"] == "failed",
                  "errors: request %s failed" % rid)
        # One error per failed attempt, as upstream.
        check(wait_for(lambda: counter(sd, "nodepool.launch.error.unknown")
                       == 2, what="error.unknown"),
              "errors: error.unknown per attempt (%s)"
              % counter(sd, "nodepool.launch.error.unknown"))
        check(counter(sd, "nodepool.launch.provider.fake-broken.error.unknown")
              == 2, "errors: per provider")
        check(wait_for(lambda: counter(
            sd, "nodepool.launch.provider.fake-slow.error.servercreatetimeout")
            == 1, what="timeout"), "errors: error.servercreatetimeout")
        check(counter(sd, "nodepool.launch.requestor.zuul-system-id."
                      "error.unknown") == 2, "errors: per requestor")
        check(counter(sd, "nodepool.launch.ready") == 0, "errors: no ready")
        s.stop(p)
    finally:
        s.close()
        sd.close()


def election_contenders(s):
    path = "/nodepool/elections/stats"
    out = []
    if not s.kz.exists(path):
        return out
    for c in sorted(s.kz.get_children(path), key=lambda n: n[-10:]):
        try:
            out.append(s.kz.get(path + "/" + c)[0].decode("utf8"))
        except Exception:
            pass
    return out


def test_election(zk):
    s = Scenario(zk, "stats-election")
    sds = [Statsd(), Statsd()]
    try:
        pa = {"name": "fake-a", "pools": [{"name": "main",
                                           "labels": ["small"]}]}
        pb = {"name": "fake-b", "pools": [{"name": "main",
                                           "labels": ["small"]}]}
        labels = [("small", 0)]
        procs = [s.start(s.write_config([pa], labels, "a.yaml", SESSION),
                         env=sds[0].env()),
                 s.start(s.write_config([pb], labels, "b.yaml", SESSION),
                         env=sds[1].env())]
        host = socket.gethostname()
        idents = ["%s-%d" % (host, p.pid) for p in procs]
        check(wait_for(lambda: sorted(election_contenders(s)) ==
                       sorted(idents), what="contenders"),
              "election: both stand, as <hostname>-<pid> (%s)"
              % election_contenders(s))
        check(wait_for(lambda: any(sd.values("nodepool.nodes.ready", "g")
                                   for sd in sds), what="a leader"),
              "election: a leader reports")
        leader = 0 if sds[0].values("nodepool.nodes.ready", "g") else 1
        other = 1 - leader
        check(election_contenders(s)[0] == idents[leader],
              "election: the leader is the first contender")
        # Node changes: the leader reports them, the other stays quiet.
        for _ in range(3):
            req = s.wait_request(s.request(["small"]))
            check(req and req["state"] == "fulfilled", "election: served")
        check(wait_for(lambda: sds[leader].last("nodepool.nodes.ready") == 3,
                       what="3 ready"), "election: leader counts 3 ready")
        check(wait_for(lambda: sds[other].values(
            "nodepool.launcher.%s.zk.node_cache.event_queue" % host, "g"),
            what="local gauges"), "election: the other sends local gauges")
        check(not [k for k in sds[other].keys()
                   if k.startswith("nodepool.nodes.") or
                   k.startswith("nodepool.label.") or
                   k.endswith(".addressable_requests")],
              "election: only the leader sends the global gauges")
        # kill -9: the contender goes with the session, then the other
        # one wins and reports.
        s.kill(procs[leader])
        check(wait_for(lambda: sds[other].last("nodepool.nodes.ready") == 3,
                       timeout=60, what="takeover"),
              "election: the other takes over")
        check("Won stats reporter election" in s.log(procs[other]),
              "election: takeover logged")
        check(election_contenders(s) == [idents[other]],
              "election: one contender left")
        s.stop(procs[other])
    finally:
        s.close()
        for sd in sds:
            sd.close()


TESTS = [test_launch_cycle, test_launch_errors, test_election]

if __name__ == "__main__":
    sys.exit(run(TESTS))
