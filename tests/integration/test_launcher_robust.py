#!/usr/bin/python3
# test_launcher_robust.py: nodepool-launcher under the conditions a
# production launcher meets and the happy-path tests do not, each scenario
# in its own chroot with real processes (launcherlib.py):
#  - SIGUSR2 with launches in flight: every registered thread's stack (the
#    loop, a web app connection thread) and each worker's request, node and
#    state under nodepool.stack_dump; the requests still complete;
#  - ZooKeeper stopped and started again (same ports, same data) while
#    requests are in flight: each ends fulfilled or failed, every fake
#    instance has a node and every node an instance after the cleanup
#    passes, suspended/resumed logged;
#  - requests written as Zuul-2019 did (ephemeral sequential, fewer keys):
#    fulfilled, and the requestor's session closing (before and after the
#    request is fulfilled) leaves no node allocated and nothing leaked;
#  - configuration changes while running: max-servers changed (the
#    restarted provider keeps serving), a provider removed (its pool
#    unregistered, its label's requests no longer taken), a label removed;
#  - tenant-resource-limits: a tenant at its max-servers waits for nodes to
#    be returned, another tenant is served meanwhile;
#  - max-concurrency 0 (no request taken) and 1 (one launch at a time);
#  - malformed data written by others (a node with garbage JSON, requests
#    with wrong types, a garbage component): logged with their path,
#    skipped, and the launcher keeps serving;
#  - the web app inside the launcher: /ready 503 then 200, /node-list as
#    `nodepool list` shows it, /label-list the pool's labels.
#
# env: NP_BUILD (build dir with nodepool-launcher and nodepool);
# NP_TEST_ZK_TLS and NP_TEST_ZK_CA/_CERT/_KEY for a running TLS ZooKeeper,
# else one is started (the restart scenario always starts its own).
# Test names on the command line run only those.
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launcherlib as L  # noqa: E402
from launcherlib import PROVIDER, Scenario, check, wait_for  # noqa: E402

NODEPOOL = os.path.join(L.BUILD, "nodepool")
FAST = {"NODEPOOL_CLEANUP_INTERVAL": "1"}


def webapp_extra(port):
    return "webapp:\n  port: %d\n  listen_address: 127.0.0.1\n" % port


def http_get(port, path, accept=None, conn=None):
    """(status, body) of GET PATH; CONN: a kept-alive connection."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path, headers={"Accept": accept} if accept else {})
        r = c.getresponse()
        return r.status, r.read().decode("utf8")
    finally:
        if not conn:
            c.close()


def requests_of(s):
    if not s.kz.exists("/nodepool/requests"):
        return []
    return s.kz.get_children("/nodepool/requests")


def consistent_cloud(s):
    """Every instance has a node and every node an instance; no node is
    left allocated to a request that does not exist."""
    nodes = s.nodes()
    ext = set(n["external_id"] for n in nodes.values())
    inst = set(i[:-5] for i in s.instances())
    reqs = set(requests_of(s))
    return (ext == inst and None not in ext and
            all(not n["allocated_to"] or n["allocated_to"] in reqs
                for n in nodes.values()))


# ---- 1. SIGUSR2 ----

def dump_text(log, nth):
    """The NTH (0-based) stack dump of LOG, or None before it ended."""
    starts = [log.rfind("\n", 0, m.start()) + 1
              for m in re.finditer("Beginning stack dump", log)]
    if len(starts) <= nth:
        return None
    end = log.find("End stack dump", starts[nth])
    return log[starts[nth]:end] if end >= 0 else None


def test_stack_dump(zk):
    s = Scenario(zk, "stackdump")
    port = L.free_port()
    try:
        prov = dict(PROVIDER, fake={"launch-delay": 3})
        cfg = s.write_config([prov], [("small", 0), ("big", 0)],
                             extra=webapp_extra(port))
        p = s.start(cfg, webapp=True)
        check(wait_for(lambda: http_get(port, "/ready")[0] == 200,
                       what="ready"), "stackdump: launcher ready")
        # A kept-alive connection keeps its web app thread (registered
        # on its first request) for the dump.
        web = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        check(http_get(port, "/label-list", conn=web)[0] == 200,
              "stackdump: web request on a kept-alive connection")
        rids = [s.request(["small"]), s.request(["big", "small"])]

        def building():
            ns = [n for n in s.nodes().values() if n["allocated_to"] in rids]
            return len(ns) == 3 and all(n["state"] == "building"
                                        for n in ns)
        check(wait_for(building, what="launches in flight"),
              "stackdump: three launches in flight")
        nodes = {nid: n for nid, n in s.nodes().items()}
        p.send_signal(signal.SIGUSR2)
        dump = wait_for(lambda: dump_text(s.log(p), 0), what="stack dump")
        if check(dump, "stackdump: dump logged"):
            lines = dump.splitlines()
            check(all("nodepool.stack_dump" in ln for ln in lines
                      if not ln.startswith(" ")),
                  "stackdump: logger nodepool.stack_dump: %r" % lines[:3])
            threads = re.findall(r"Thread: (\d+) (\S+)(.*)", dump)
            names = [t[1] for t in threads]
            check("NodePool" in names, "stackdump: the main loop's stack "
                  "(%r)" % names)
            check("webapp" in names, "stackdump: the web app thread's "
                  "stack (%r)" % names)
            for tid, name, rest in threads:
                if name in ("NodePool", "webapp"):
                    check("no stack captured" not in rest,
                          "stackdump: %s %s answered" % (name, tid))
            # A registered thread's frames follow its header line.
            main = dump[dump.find(" NodePool"):]
            check(re.search(r"#0 \S+ in \S+\+0x[0-9a-f]+", main) and
                  re.search(r"evloop_run|main\+", main),
                  "stackdump: the loop's frames: %r" % main[:400])
            status = dump[dump.find("Worker status:"):]
            check("Worker status:" in dump, "stackdump: worker status")
            for rid in rids:
                check(re.search(r"request %s: \S+" % rid, status),
                      "stackdump: request %s in the status" % rid)
            for nid, n in nodes.items():
                if n["allocated_to"] in rids:
                    check(re.search(r"%s=%s/\w+" % (nid, n["type"][0]),
                                    status),
                          "stackdump: node %s with its state" % nid)
            check("PoolWorker.fake-provider-main" in status,
                  "stackdump: the pool worker's line")
        # Service continues: the requests complete, the web app answers.
        for rid in rids:
            req = s.wait_request(rid)
            check(req and req["state"] == "fulfilled",
                  "stackdump: %s fulfilled after the dump" % rid)
        check(http_get(port, "/label-list", conn=web)[0] == 200,
              "stackdump: the web app still answers")
        web.close()
        # A second dump works as the first.
        p.send_signal(signal.SIGUSR2)
        check(wait_for(lambda: dump_text(s.log(p), 1), what="second dump"),
              "stackdump: a second dump")
        s.stop(p)
    finally:
        s.close()


TESTS = [test_stack_dump]

if __name__ == "__main__":
    sys.exit(L.run(TESTS))
