#!/usr/bin/python3
# test_launcher_robust.py: nodepool-launcher under the conditions a
# production launcher meets and the happy-path tests do not, each scenario
# in its own chroot with real processes (launcherlib.py):
#  - SIGUSR2 with launches in flight: every thread's stack (the loop, a
#    web app connection thread, libmicrohttpd's own listening thread) and
#    each worker's request, node and state under nodepool.stack_dump; the
#    requests still complete; five more dumps while web connections (and
#    their threads) come and go all end, every request answered;
#  - ZooKeeper stopped and started again (same ports, same data) while
#    requests are in flight: each ends fulfilled or failed, every fake
#    instance has a node and every node an instance after the cleanup
#    passes, suspended/resumed logged; the session expired under load
#    (the launcher cut off through a TcpGate); a request's completing
#    transaction cut off (not sent, ZooKeeper then down longer than a
#    session timeout; sent, its reply lost); that transaction refused (a
#    contender it deletes gone) so its steps go one at a time, the first
#    of them cut off; a launch's own node writes cut off (the ready write's
#    reply lost, the external id's write never sent: both sent again; the
#    node lock's multi carried out, its reply lost: the attempt goes on;
#    each request fulfilled); a node's create carried out but its reply
#    lost (created again, the init node nobody knows deleted); the write
#    that accepts a request (pending) cut off (its reply lost, or never
#    sent: sent again, the request pending while its node builds); SIGINT
#    without ZooKeeper;
#  - requests written as Zuul-2019 did (ephemeral sequential, fewer keys):
#    fulfilled, and the requestor's session closing (before and after the
#    request is fulfilled) leaves no node allocated and nothing leaked;
#  - configuration changes while running: max-servers changed (the
#    restarted provider keeps serving), a provider removed (its pool
#    unregistered, its label's requests no longer taken), a label removed,
#    a broken configuration (refused, the running one kept),
#    zookeeper-servers changed (the next connection goes to the new list,
#    in the same session) and a changed chroot (refused);
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
import logging
import os
import re
import signal
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launcherlib as L  # noqa: E402
from launcherlib import (PROVIDER, Scenario, check, nodepool,  # noqa: E402
                         table_rows, wait_for)

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


def thread_frames(dump, tid):
    """The frame lines ("#N ...") of thread TID's message in DUMP."""
    m = re.search(r"Thread: %s .*\n((?:.*nodepool\.stack_dump:   #.*\n)*)"
                  % tid, dump + "\n")
    return re.findall(r"#\d+ .*", m.group(1)) if m else []


def start_trapped(s, ftrap, providers, labels, name):
    """Our launcher with PROVIDERS (one pool each) and LABELS, talking to
    ZooKeeper through FTRAP (a FrameTrap); its process, once every pool
    has registered."""
    cfg = s.write_config(providers, labels, zk_port=ftrap.port)
    p = s.start(cfg, env=FAST, debug=True)
    check(wait_for(lambda: len(s.registered_pools()) >= len(providers),
                   what="pools"), "%s: pools registered" % name)
    return p


def start_trapped_slow(s, ftrap, name):
    """start_trapped() with PROVIDER's labels and a provider whose label
    `slow` takes 15 s to launch."""
    slow = {"name": "fake-slow", "fake": {"launch-delay": 15},
            "pools": [{"name": "main", "labels": ["slow"]}]}
    return start_trapped(s, ftrap, [PROVIDER, slow],
                         [("small", 0), ("big", 0), ("slow", 0)], name)


def test_stack_dump(zk):
    s = Scenario(zk, "stackdump")
    port = L.free_port()
    try:
        # Long enough for the dump to find the launches still going on
        # a loaded machine.
        prov = dict(PROVIDER, fake={"launch-delay": 5})
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
            # Every thread answers with its frames, libmicrohttpd's own
            # (started by the library, never registered) too.
            check("MHD-listen" in names, "stackdump: libmicrohttpd's "
                  "listening thread (%r)" % names)
            for tid, name, rest in threads:
                frames = thread_frames(dump, tid)
                check("no stack captured" not in rest and frames,
                      "stackdump: %s %s%s answered: %r"
                      % (name, tid, rest, frames[:2]))
                if name == "MHD-listen":
                    check(rest.strip() == "(unregistered)" and
                          any("libmicrohttpd" in f for f in frames),
                          "stackdump: MHD-listen's frames in "
                          "libmicrohttpd: %r" % frames)
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
            check(re.search(r"provider fake-provider keyscan: \d+ running "
                            r"\(max 100\), \d+ queued", status),
                  "stackdump: the provider's host-key scans")
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
        dump = wait_for(lambda: dump_text(s.log(p), 1), what="second dump")
        if check(dump, "stackdump: a second dump"):
            listen = re.findall(r"Thread: (\d+) MHD-listen", dump)
            check(listen and thread_frames(dump, listen[0]),
                  "stackdump: MHD-listen's frames the second time")
            check("no stack captured" not in dump,
                  "stackdump: every thread answers the second time")
        # Dumps while connections come and go, each with a thread of its
        # own (listed, then gone before it is signalled or answers): every
        # dump ends, every request is answered.
        statuses, stop = [], threading.Event()

        def browse():
            while not stop.is_set():
                try:
                    statuses.append(http_get(port, "/label-list")[0])
                except OSError as e:
                    statuses.append(repr(e))
        browsers = [threading.Thread(target=browse) for _ in range(3)]
        for b in browsers:
            b.start()
        for nth in range(2, 7):
            # The last dump's helper may not have finished yet: a signal
            # then is ignored (and logged so), and sent again.
            while True:
                ignored = s.log(p).count("already in progress")
                p.send_signal(signal.SIGUSR2)
                done = wait_for(lambda: dump_text(s.log(p), nth) or
                                s.log(p).count("already in progress") >
                                ignored, what="dump %d" % nth)
                if done is not True:
                    break
            check(done, "stackdump: dump %d under churn ended" % nth)
        stop.set()
        for b in browsers:
            b.join()
        check(statuses and all(st == 200 for st in statuses),
              "stackdump: %d requests under dumps, all answered (%r)"
              % (len(statuses), sorted(set(map(str, statuses)))))
        check(p.poll() is None, "stackdump: the launcher still runs")
        s.stop(p)
    finally:
        s.close()


# ---- 2. ZooKeeper restarted under load ----

def test_zk_restart(zk):
    """ZK is not used: the scenario stops and starts a server of its own."""
    ozk = L.OwnZK()
    s = None
    try:
        s = Scenario(ozk, "zkrestart")
        prov = dict(PROVIDER, fake={"launch-delay": 2})
        cfg = s.write_config([prov], [("small", 0), ("big", 0)])
        p = s.start(cfg, env=FAST, debug=True)
        check(wait_for(lambda: s.registered_pools(), what="pool"),
              "zkrestart: pool registered")
        rids = [s.request([["small"], ["big"], ["small", "big"]][i % 3])
                for i in range(50)]
        check(wait_for(lambda: len([n for n in s.nodes().values()
                                    if n["state"] == "building"]) >= 10,
                       what="launches in flight"),
              "zkrestart: launches in flight")
        # (Both lines are logged once at start, before the session.)
        sus = s.log(p).count("ZooKeeper suspended. Waiting")
        res = s.log(p).count("ZooKeeper available. Resuming")
        quiet = logging.getLogger("kazoo.client")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # its reconnect attempts
        try:
            ozk.halt()
            check(wait_for(lambda: s.log(p).count(
                "ZooKeeper suspended. Waiting") > sus, what="suspended"),
                "zkrestart: suspended logged")
            ozk.resume()
            check(wait_for(lambda: s.log(p).count(
                "ZooKeeper available. Resuming") > res, what="resumed"),
                "zkrestart: resumed logged")
            wait_for(lambda: s.kz.connected, what="test client reconnected")
        finally:
            quiet.setLevel(level)
        states = {}
        for rid in rids:
            req = s.wait_request(rid, timeout=120)
            states[rid] = req["state"] if req else None
        check(all(v in ("fulfilled", "failed") for v in states.values()),
              "zkrestart: every request fulfilled or failed (%s)"
              % sorted(set(states.values()), key=str))
        check(list(states.values()).count("fulfilled") > 0,
              "zkrestart: requests fulfilled after the restart")
        n0 = s.log(p).count("Finished cleanup")
        check(wait_for(lambda: s.log(p).count("Finished cleanup") >= n0 + 2,
                       what="cleanup passes"), "zkrestart: cleanup passes")
        check(wait_for(lambda: consistent_cloud(s), timeout=60,
                       what="consistent cloud"),
              "zkrestart: every instance has a node and every node an "
              "instance (%d instances, %d nodes)"
              % (len(s.instances()), len(s.nodes())))
        ok = True
        for rid, st in states.items():
            req = s.get_request(rid)
            if st != "fulfilled" or not req:
                continue
            for nid in req["nodes"]:
                n = s.get_node(nid)
                ok = ok and n and n["state"] == "ready" and \
                    n["allocated_to"] == rid
        check(ok, "zkrestart: the fulfilled requests' nodes are ready and "
              "theirs")
        # Everything returned: nothing may stay behind.
        s.return_all(states)
        s.check_all_deleted("zkrestart")
        s.stop(p)
    finally:
        if s:
            s.close()
        ozk.stop()


def test_completion_outage(zk):
    """The multi that completes a request (nodes ready and unlocked,
    request fulfilled and unlocked) is cut off: (1) the connection drops
    before it reaches the server, and the server then stays down longer
    than a session timeout (its sessions survive the restart); (2) it
    reaches the server but the reply is lost. The request must end
    fulfilled and unlocked both times (it once stayed pending, locked by
    our own live session, for ever), its nodes ready and then deleted
    once used."""
    ozk = L.OwnZK()
    s = None
    trapped = []
    actions = []

    def trap(frame):
        if L.FrameTrap.op(frame) != L.FrameTrap.MULTI or \
                b"/nodepool/requests/" not in frame or not actions:
            return None
        what = actions.pop(0)
        trapped.append(what)
        if what == "drop":
            # The server goes away with the request, for 13 s.
            def outage():
                ozk.halt()
                time.sleep(13)
                ozk.resume()
            threading.Thread(target=outage, daemon=True).start()
        return what

    ftrap = L.FrameTrap(ozk, trap)
    quiet = logging.getLogger("kazoo.client")
    level = quiet.level
    try:
        s = Scenario(ozk, "complout")
        p = start_trapped(s, ftrap, [PROVIDER], [("small", 0), ("big", 0)],
                          "complout")
        quiet.setLevel(logging.CRITICAL)  # its reconnect attempts
        reqs = {}
        for what in ("drop", "lost"):
            actions.append(what)
            rid = s.request(["small", "big"])
            check(wait_for(lambda: what in trapped, what="trapped"),
                  "complout %s: the completing multi was cut off" % what)
            req = s.wait_request(rid, timeout=90)
            check(req and req["state"] == "fulfilled",
                  "complout %s: request fulfilled (%s)"
                  % (what, req and req["state"]))
            check(wait_for(lambda: not s.request_lock_contenders(rid),
                           what="unlocked"),
                  "complout %s: request unlocked (%s)"
                  % (what, s.request_lock_contenders(rid)))
            nodes = [s.get_node(n) for n in (req or {}).get("nodes", [])]
            check(len(nodes) == 2 and all(
                n and n["state"] == "ready" and n["allocated_to"] == rid
                for n in nodes), "complout %s: its two nodes ready and "
                "allocated to it" % what)
            reqs[rid] = req
        check("Completing again once ZooKeeper answers" in s.log(p),
              "complout: the completion was sent again (logged)")
        quiet.setLevel(level)
        s.return_all(reqs)
        s.check_all_deleted("complout")
        s.stop(p)
    finally:
        quiet.setLevel(level)
        if s:
            s.close()
        ftrap.close()
        ozk.stop()


def test_completion_steps(zk):
    """The multi that completes a request fails for a reason other than
    the connection (a contender it deletes is gone: here the test deletes
    it as the multi passes), so the launcher sends its steps one at a
    time; the first step's setData is then cut off before it reaches the
    server and must be sent again. Once with a node lock's contender gone
    (a fulfilled request), once with the request lock's (a request failed
    by its only able pool): the request ends fulfilled or failed, its
    nodes ready, allocated to it and unlocked (or deleted when failed), no
    lock is left, and nothing leaks once the nodes are used."""
    s = Scenario(zk, "complsteps")
    root = zk.client()
    rounds = []             # which contender the next multi loses
    seen = []               # what the trap did, in order
    first_set = []          # the path of the first step's setData

    def trap(frame):
        op = L.FrameTrap.op(frame)
        if op == L.FrameTrap.MULTI and rounds and \
                b"/nodepool/requests/" in frame:
            ops = L.FrameTrap.multi_ops(frame)
            lock = rounds.pop(0)
            gone = [p for k, p in ops if k == L.FrameTrap.DELETE and
                    ("/requests-lock/" in p) == (lock == "request")]
            sets = [p for k, p in ops if k == L.FrameTrap.SET_DATA]
            if gone and sets:
                root.delete(gone[0])
                first_set.append(sets[0])
                seen.append("multi %s, lost %s" % (ops, gone[0]))
        elif op == L.FrameTrap.SET_DATA and first_set and \
                L.FrameTrap.path(frame) == first_set[0]:
            first_set.pop(0)
            seen.append("dropped " + L.FrameTrap.path(frame))
            return "drop"
        return None

    ftrap = L.FrameTrap(zk, trap)
    quiet = logging.getLogger("kazoo.client")
    level = quiet.level
    try:
        failing = {"name": "fake-fail", "retries": 1,
                   "fake": {"failure-rate": 1.0},
                   "pools": [{"name": "main", "labels": ["bad"]}]}
        p = start_trapped(s, ftrap, [PROVIDER, failing],
                          [("small", 0), ("big", 0), ("bad", 0)],
                          "complsteps")
        quiet.setLevel(logging.CRITICAL)
        done = {}
        for lock, labels, state in (("node", ["small", "big"], "fulfilled"),
                                    ("request", ["bad"], "failed")):
            n = len(seen)
            rounds.append(lock)
            rid = s.request(labels)
            check(wait_for(lambda: len(seen) >= n + 2, what="trapped"),
                  "complsteps %s: the multi failed, then the first step "
                  "was cut off (%s)" % (lock, seen[n:]))
            req = s.wait_request(rid, timeout=60)
            check(req and req["state"] == state,
                  "complsteps %s: request %s (%s)"
                  % (lock, state, req and req["state"]))
            check(wait_for(lambda: not s.request_lock_contenders(rid),
                           what="unlocked"),
                  "complsteps %s: request unlocked (%s)"
                  % (lock, s.request_lock_contenders(rid)))
            done[rid] = req
        log = s.log(p)
        check(log.count("Completing one step at a time") == 2,
              "complsteps: the completions went step by step (logged)")
        check("Unable to store" not in log,
              "complsteps: no step given up")
        rid, req = next(iter(done.items()))
        nids = (req or {}).get("nodes", [])
        nodes = [s.get_node(nid) for nid in nids]
        check(len(nodes) == 2 and all(
            nd and nd["state"] == "ready" and nd["allocated_to"] == rid
            for nd in nodes), "complsteps: the fulfilled request's two "
            "nodes ready and allocated to it (%s)" % nodes)
        check(wait_for(lambda: not any(s.node_lock_contenders(nid)
                                       for nid in nids), what="unlocked"),
              "complsteps: its nodes unlocked")
        quiet.setLevel(level)
        s.return_all(done)
        s.check_all_deleted("complsteps")
        s.stop(p)
    finally:
        quiet.setLevel(level)
        s.close()
        root.stop()
        ftrap.close()


def test_node_write_lost(zk):
    """A launch's own writes of its node cut off, the session surviving:
    (1) the ready write of a request's first node (the last one's goes in
    the completing multi) reaches the server but its reply is lost; (2)
    the write that stores the server's external id while it builds never
    reaches the server; (3) the multi that locks a new node and writes it
    building is carried out, its reply lost; (4) a reused node's
    allocation never reaches the server, nor the completion right behind
    it. The writes are sent again once the connection is back, under the
    node lock our session still holds (the allocation with the completion,
    which unlocks the node), and the lock attempt goes on where it was:
    each request ends fulfilled with its nodes ready and allocated to it
    (a lost ready reply once failed the launch, and the request was
    declined and failed with a ready node of ours left over), the external
    id is stored while the node still builds, no lock is left and nothing
    leaks."""
    s = Scenario(zk, "nodewrite")
    rounds = []             # what the next trapped write is, in order
    seen = []               # (round, node path) trapped

    def trap(frame):
        if rounds and rounds[0] == "lock" and \
                L.FrameTrap.op(frame) == L.FrameTrap.MULTI and \
                struct.unpack(">i", frame[8:12])[0] == L.FrameTrap.CREATE \
                and b"/nodepool/nodes/" in frame:
            rounds.pop(0)
            seen.append(("lock", None))
            return "lost"
        if not rounds or L.FrameTrap.op(frame) != L.FrameTrap.SET_DATA or \
                "/nodepool/nodes/" not in L.FrameTrap.path(frame):
            return None
        try:
            node = json.loads(L.FrameTrap.data(frame))
        except ValueError:
            return None
        what = rounds[0]
        if what == "ready" and node.get("state") == "ready" or \
                what == "external id" and node.get("state") == "building" \
                and node.get("external_id") or \
                what == "allocation" and node.get("state") == "ready" \
                and node.get("allocated_to"):
            rounds.pop(0)
            seen.append((what, L.FrameTrap.path(frame)))
            return "lost" if what == "ready" else "drop"
        return None

    ftrap = L.FrameTrap(zk, trap)
    quiet = logging.getLogger("kazoo.client")
    level = quiet.level
    try:
        p = start_trapped_slow(s, ftrap, "nodewrite")
        quiet.setLevel(logging.CRITICAL)
        done = {}

        # (1) the first node's ready write, its reply lost
        rounds.append("ready")
        rid = s.request(["small", "big"])
        check(wait_for(lambda: len(seen) == 1, what="trapped"),
              "nodewrite ready: the ready write was cut off after it was "
              "sent")
        req = s.wait_request(rid, timeout=60)
        check(req and req["state"] == "fulfilled",
              "nodewrite ready: request fulfilled (%s)"
              % (req and req["state"]))
        nids = (req or {}).get("nodes", [])
        nodes = [s.get_node(nid) for nid in nids]
        check(len(nodes) == 2 and all(
            nd and nd["state"] == "ready" and nd["allocated_to"] == rid
            for nd in nodes), "nodewrite ready: its two nodes ready and "
            "allocated to it (%s)" % nodes)
        check(seen and seen[0][1].rsplit("/", 1)[-1] in nids,
              "nodewrite ready: the trapped node is one of them")
        check(wait_for(lambda: not s.request_lock_contenders(rid) and
                       not any(s.node_lock_contenders(nid) for nid in nids),
                       what="unlocked"),
              "nodewrite ready: request and nodes unlocked")
        done[rid] = req

        # (2) the external id's write while building, never sent
        rounds.append("external id")
        rid = s.request(["slow"])
        check(wait_for(lambda: len(seen) == 2, what="trapped"),
              "nodewrite id: the external id's write was cut off")
        nid = seen[-1][1].rsplit("/", 1)[-1] if len(seen) == 2 else None
        states = []

        def stored():
            nd = s.get_node(nid) if nid else None
            states.append(nd and (nd["state"], bool(nd["external_id"])))
            return nd and nd["external_id"]
        wait_for(stored, what="external id stored")
        check(("building", True) in states,
              "nodewrite id: the external id stored while the node builds "
              "(%s)" % states[-3:])
        req = s.wait_request(rid, timeout=60)
        check(req and req["state"] == "fulfilled" and req["nodes"] == [nid],
              "nodewrite id: request fulfilled with that node (%r)"
              % ((req and (req["state"], req["nodes"])),))
        done[rid] = req

        # (3) a new node's lock and building multi, its reply lost
        rounds.append("lock")
        rid = s.request(["small"])
        check(wait_for(lambda: len(seen) == 3, what="trapped"),
              "nodewrite lock: the node lock's multi was cut off")
        req = s.wait_request(rid, timeout=60)
        check(req and req["state"] == "fulfilled",
              "nodewrite lock: request fulfilled (%s)"
              % (req and req["state"]))
        nd = s.get_node(req["nodes"][0]) if req and req["nodes"] else None
        check(nd and nd["state"] == "ready" and nd["allocated_to"] == rid,
              "nodewrite lock: its node ready and allocated to it (%s)" % nd)
        done[rid] = req

        # (4) a reused node's allocation, never sent (nor the completion
        # behind it): the completion, sent again, must carry it
        spare = nd and req["nodes"][0]
        s.kz.delete("/nodepool/requests/" + rid)
        del done[rid]
        check(wait_for(lambda: (s.get_node(spare) or {}).get(
            "allocated_to", 1) is None, what="spare"),
            "nodewrite reuse: a spare ready node")
        rounds.append("allocation")
        rid = s.request(["small"])
        check(wait_for(lambda: len(seen) == 4, what="trapped"),
              "nodewrite reuse: the allocation's write was cut off")
        req = s.wait_request(rid, timeout=60)
        check(req and req["state"] == "fulfilled" and
              req["nodes"] == [spare],
              "nodewrite reuse: request fulfilled with the spare (%r)"
              % ((req and (req["state"], req["nodes"])),))
        nd = s.get_node(spare)
        check(nd and nd["state"] == "ready" and nd["allocated_to"] == rid,
              "nodewrite reuse: the spare ready and allocated to it (%s)"
              % nd)
        done[rid] = req

        log = s.log(p)
        check(all("[node: %s] Storing node again once ZooKeeper answers"
                  % path.rsplit("/", 1)[-1] in log for _, path in seen[:2]),
              "nodewrite: both trapped writes sent again (logged)")
        # (the cleanup's own lock attempts may meet a cut: not ours)
        check("Unable to store" not in log and
              "Unable to lock new node" not in log,
              "nodewrite: no launch gave up")
        quiet.setLevel(level)
        s.return_all(done)
        s.check_all_deleted("nodewrite")
        s.stop(p)
    finally:
        quiet.setLevel(level)
        s.close()
        ftrap.close()


def test_create_lost(zk):
    """A node's create reaches the server but its reply is lost with the
    connection (a ZooKeeper going down under load does this to every
    create in flight), the session surviving: the launch creates another
    node and the request is fulfilled, and the `init` node the server made
    first, our own but known to no launch, must not stay behind for ever
    (it once did: the ZooKeeper-restart scenario found it as a node
    without an instance)."""
    s = Scenario(zk, "createlost")
    trapped = []

    def trap(frame):
        if trapped or L.FrameTrap.op(frame) != L.FrameTrap.CREATE2 or \
                not L.FrameTrap.path(frame).endswith("/nodepool/nodes/"):
            return None
        trapped.append(frame)
        return "lost"

    ftrap = L.FrameTrap(zk, trap)
    quiet = logging.getLogger("kazoo.client")
    level = quiet.level
    try:
        p = start_trapped(s, ftrap, [PROVIDER], [("small", 0), ("big", 0)],
                          "createlost")
        # (else the first create fails for want of its parent)
        s.kz.ensure_path("/nodepool/nodes")
        rid = s.request(["small"])
        check(wait_for(lambda: trapped, what="trapped"),
              "createlost: the node's create was cut off after it was sent")
        req = s.wait_request(rid, timeout=60)
        check(req and req["state"] == "fulfilled",
              "createlost: request fulfilled by a node created again (%s)"
              % (req and req["state"]))
        check("Creating node again once ZooKeeper answers" in s.log(p),
              "createlost: the create made again (logged)")

        def orphans():
            return [(nid, n["state"]) for nid, n in s.nodes().items()
                    if n["state"] not in ("ready", "deleting")]
        check(wait_for(lambda: not orphans(), what="no orphan"),
              "createlost: the orphaned init node deleted (%r)" % orphans())
        check("init node of ours that no launch knows" in s.log(p),
              "createlost: the server had made the node (its deletion "
              "logged)")
        s.return_all({rid: req})
        s.check_all_deleted("createlost")
        check(p.poll() is None, "createlost: running")
        s.stop(p)
    finally:
        quiet.setLevel(level)
        s.close()
        ftrap.close()


def test_request_write_lost(zk):
    """The write that accepts a request (`pending`) cut off, the session
    surviving: (1) it reaches the server but its reply is lost; (2) it
    never reaches the server (the node then builds for 15 s). It is sent
    again under the request lock our session still holds, as a launch's
    node writes are: the request is `pending` while its node builds
    (before, it stayed `requested` until fulfilled), ends fulfilled, and
    no error is logged (before: `Unable to store request`)."""
    s = Scenario(zk, "reqwrite")
    rounds = []             # "lost" or "drop": the next pending write's fate
    seen = []               # request paths trapped

    def trap(frame):
        if not rounds or L.FrameTrap.op(frame) != L.FrameTrap.SET_DATA or \
                "/nodepool/requests/" not in L.FrameTrap.path(frame):
            return None
        try:
            req = json.loads(L.FrameTrap.data(frame))
        except ValueError:
            return None
        if req.get("state") != "pending":
            return None
        seen.append(L.FrameTrap.path(frame))
        return rounds.pop(0)

    ftrap = L.FrameTrap(zk, trap)
    quiet = logging.getLogger("kazoo.client")
    level = quiet.level
    try:
        p = start_trapped_slow(s, ftrap, "reqwrite")
        quiet.setLevel(logging.CRITICAL)
        done = {}

        # (1) carried out, its reply lost
        rounds.append("lost")
        rid = s.request(["small"])
        check(wait_for(lambda: len(seen) == 1, what="trapped"),
              "reqwrite lost: the pending write was cut off after it was "
              "sent")
        req = s.wait_request(rid, timeout=60)
        check(req and req["state"] == "fulfilled",
              "reqwrite lost: request fulfilled (%s)"
              % (req and req["state"]))
        done[rid] = req

        # (2) never sent: pending while its node builds
        rounds.append("drop")
        rid = s.request(["slow"])
        check(wait_for(lambda: len(seen) == 2, what="trapped"),
              "reqwrite drop: the pending write was cut off")
        states = []

        def ended():
            r = s.get_request(rid)
            states.append(r and r["state"])
            return r and r["state"] in ("fulfilled", "failed")
        wait_for(ended, timeout=60, what="request ended")
        check("pending" in states and states[-1] == "fulfilled",
              "reqwrite drop: pending while the node builds, then "
              "fulfilled (%s)" % sorted(set(map(str, states))))
        done[rid] = s.get_request(rid)

        log = s.log(p)
        check(all("[node_request: %s] Storing request again once ZooKeeper "
                  "answers" % path.rsplit("/", 1)[-1] in log
                  for path in seen),
              "reqwrite: both trapped writes sent again (logged)")
        check("Unable to store" not in log,
              "reqwrite: no write given up")
        check(wait_for(lambda: not any(s.request_lock_contenders(r)
                                       for r in done), what="unlocked"),
              "reqwrite: requests unlocked")
        quiet.setLevel(level)
        s.return_all(done)
        s.check_all_deleted("reqwrite")
        s.stop(p)
    finally:
        quiet.setLevel(level)
        s.close()
        ftrap.close()


def gated_config(s, gate, zkport, providers, labels, extra=""):
    """A config whose ZooKeeper is reached through GATE only."""
    cfg = s.write_config(providers, labels, extra=extra)
    with open(cfg) as f:
        text = f.read()
    with open(cfg, "w") as f:
        f.write(text.replace("    port: %s\n" % zkport,
                             "    port: %d\n" % gate.port))
    return cfg


def test_session_expiry(zk):
    """The launcher cut off from ZooKeeper for longer than its session
    timeout, launches in flight: its session expires (locks and
    ephemerals gone); once back it must leave nothing behind."""
    s = Scenario(zk, "expiry")
    host, zkport = zk.hosts.split(":")
    gate = L.TcpGate((host, int(zkport)))
    gate.open()
    try:
        prov = dict(PROVIDER, fake={"launch-delay": 2})
        cfg = gated_config(s, gate, zkport, [prov],
                           [("small", 0), ("big", 0)],
                           extra="zookeeper-timeout: 4\n")
        p = s.start(cfg, env=FAST, debug=True)
        check(wait_for(lambda: s.registered_pools(), what="pool"),
              "expiry: pool registered")
        rids = [s.request([["small"], ["big", "small"]][i % 2])
                for i in range(16)]
        check(wait_for(lambda: len([n for n in s.nodes().values()
                                    if n["state"] == "building"]) >= 4,
                       what="launches in flight"),
              "expiry: launches in flight")
        gate.cut()
        # The server expires the session: our ephemerals go.
        check(wait_for(lambda: not s.registered_pools(), timeout=60,
                       what="session expired"),
              "expiry: the session expired on the server")
        gate.open()
        check(wait_for(lambda: "ZooKeeper session lost" in s.log(p),
                       what="lost"), "expiry: session loss logged")
        check(wait_for(lambda: s.registered_pools(), what="re-registered"),
              "expiry: pool registered again")
        states = {}
        for rid in rids:
            req = s.wait_request(rid, timeout=120)
            states[rid] = req["state"] if req else None
        check(all(v in ("fulfilled", "failed") for v in states.values()),
              "expiry: every request fulfilled or failed (%r)"
              % sorted(set(states.values()), key=str))
        check(wait_for(lambda: consistent_cloud(s) and all(
            n["state"] in ("ready", "deleting") for n in s.nodes().values()),
            timeout=60, what="consistent"),
            "expiry: every instance has a node, every node an instance, "
            "nothing half built (%r)" % sorted(
                (n["state"], n["allocated_to"]) for n in
                s.nodes().values()))
        s.return_all(states)
        s.check_all_deleted("expiry")
        s.stop(p)
    finally:
        s.close()
        gate.close()


def test_stop_without_zookeeper(zk):
    """SIGINT while ZooKeeper cannot be reached (never was; was and is
    no more): a clean exit 0 all the same."""
    s = Scenario(zk, "stopnozk")
    host, zkport = zk.hosts.split(":")
    gate = L.TcpGate((host, int(zkport)))
    try:
        cfg = gated_config(s, gate, zkport, [PROVIDER],
                           [("small", 0), ("big", 0)])
        p = s.start(cfg)
        check(wait_for(lambda: "timed out" in s.log(p),
                       what="started"), "stopnozk: started")
        # As upstream's, our launcher has never been suspended: it was
        # never connected (it once said so on every start).
        check("ZooKeeper suspended" not in s.log(p),
              "stopnozk: no suspension before the first session")
        s.stop(p)
        gate.open()
        p = s.start(cfg)
        req = s.wait_request(s.request(["small"]))
        check(req and req["state"] == "fulfilled", "stopnozk: served")
        gate.cut()
        s.stop(p)
        check("Finished stopping" in s.log(p), "stopnozk: stopped")
    finally:
        s.close()
        gate.close()


# ---- 3. Zuul-2019 requests ----

def zuul2019_request(kz, labels, priority="100"):
    """A request as Zuul's NodeRequest.toDict() and submitNodeRequest()
    wrote it in 2019: fewer keys, EPHEMERAL|SEQUENCE, on the requestor's
    own session KZ."""
    now = time.time()
    d = {"node_types": labels, "requestor": "zuul-2019.example.org",
         "created_time": now, "provider": None, "state": "requested",
         "state_time": now, "relative_priority": 0}
    path = kz.create("/nodepool/requests/%s-" % priority,
                     json.dumps(d).encode("utf8"), makepath=True,
                     sequence=True, ephemeral=True)
    return path.split("/")[-1]


def test_zuul2019(zk):
    s = Scenario(zk, "zuul2019")
    zuuls = []
    try:
        prov = dict(PROVIDER, fake={"launch-delay": 1})
        cfg = s.write_config([prov], [("small", 0), ("big", 0)])
        p = s.start(cfg, debug=True)
        zuul = zk.client(s.chroot)
        zuuls.append(zuul)
        rid = zuul2019_request(zuul, ["small", "big"])
        req = s.wait_request(rid)
        check(req and req["state"] == "fulfilled",
              "zuul2019: fulfilled (%r)" % req)
        if not req:
            return
        check(req["node_types"] == ["small", "big"] and
              req["requestor"] == "zuul-2019.example.org" and
              req["relative_priority"] == 0 and len(req["nodes"]) == 2,
              "zuul2019: the request's fields kept: %r" % req)
        _, st = s.kz.get("/nodepool/requests/" + rid)
        check(st.ephemeralOwner == zuul.client_id[0],
              "zuul2019: still the requestor's ephemeral znode")
        for nid, label in zip(req["nodes"], ["small", "big"]):
            n = s.get_node(nid)
            check(n and n["state"] == "ready" and n["type"] == [label] and
                  n["allocated_to"] == rid and n["tenant_name"] is None and
                  n["requestor"] == "zuul-2019.example.org",
                  "zuul2019: node %s: %r" % (nid, n))
        # The requestor goes away before it locked its nodes: the request
        # vanishes with its session and the nodes are released.
        zuul.stop()
        zuul.close()
        check(wait_for(lambda: s.get_request(rid) is None,
                       what="ephemeral request gone"),
              "zuul2019: request gone with the session")
        check(wait_for(lambda: all(
            (s.get_node(n) or {}).get("allocated_to", 1) is None
            for n in req["nodes"]), what="deallocated"),
            "zuul2019: fulfilled nodes deallocated")
        check(all((s.get_node(n) or {}).get("state") == "ready"
                  for n in req["nodes"]),
              "zuul2019: and kept ready for reuse")

        # Gone mid-launch: the launcher finishes the nodes for nobody.
        zuul = zk.client(s.chroot)
        zuuls.append(zuul)
        rid = zuul2019_request(zuul, ["big", "big", "small", "small",
                                      "small"])
        check(wait_for(lambda: (s.get_request(rid) or {}).get("state") ==
                       "pending", what="pending"), "zuul2019: pending")
        wait_for(lambda: len([n for n in s.nodes().values()
                              if n["allocated_to"] == rid]) >= 3,
                 what="nodes allocated")
        zuul.stop()
        zuul.close()

        def released():
            ns = s.nodes()
            return ns and all(n["state"] == "ready" and
                              not n["allocated_to"] for n in ns.values())
        check(wait_for(released, what="released"),
              "zuul2019: every node ready and unallocated after the "
              "requestor vanished mid-launch (%r)"
              % [(n["state"], n["allocated_to"])
                 for n in s.nodes().values()])
        check(wait_for(lambda: consistent_cloud(s), what="consistent"),
              "zuul2019: nothing leaked")
        check(requests_of(s) == [], "zuul2019: no request left")
        # No event id: upstream's log lines have no "[e: ...]" then.
        lines = [ln for ln in s.log(p).splitlines()
                 if "[node_request: 100-" in ln]
        check(lines and not [ln for ln in lines if "[e:" in ln],
              "zuul2019: request log lines without an event id %r"
              % [ln for ln in lines if "[e:" in ln][:2])
        s.stop(p)
    finally:
        for z in zuuls:
            try:
                z.stop()
                z.close()
            except Exception:
                pass
        s.close()


# ---- 6. configuration changes while running ----

def pool_ids(s):
    return sorted(c["id"] for c in s.registered_pools())


def test_reload_max_servers(zk):
    s = Scenario(zk, "reloadmax")
    try:
        p, prov, r1, req1, r2 = s.start_full_pool("reloadmax")
        before = pool_ids(s)
        # More room: the provider restarts and the waiting request is
        # served while the first node is still in use.
        prov["pools"][0]["max"] = 3
        s.write_config([prov], [("small", 0)])
        req2 = s.wait_request(r2)
        check(req2 and req2["state"] == "fulfilled",
              "reloadmax: the waiting request fulfilled after max-servers "
              "went up")
        check("Provider fake-provider changed; restarting it" in s.log(p),
              "reloadmax: provider restarted")
        r3 = s.request(["small"])
        req3 = s.wait_request(r3)
        check(req3 and req3["state"] == "fulfilled",
              "reloadmax: the restarted provider keeps serving")
        check(pool_ids(s) == before, "reloadmax: the same pool component "
              "(%r, %r)" % (before, pool_ids(s)))
        check(wait_for(lambda: not s.pool_paused(), what="unpaused"),
              "reloadmax: unpaused")
        # And less: at 3 nodes in use with max-servers 2, a fourth waits.
        prov["pools"][0]["max"] = 2
        s.write_config([prov], [("small", 0)])
        wait_for(lambda: s.log(p).count("Provider fake-provider changed")
                 >= 2, what="second reload")
        r4 = s.request(["small"])
        check(wait_for(s.pool_paused, what="paused"),
              "reloadmax: paused at the lower max")
        check((s.get_request(r4) or {}).get("state") == "pending",
              "reloadmax: fourth request waits")
        check(len(s.instances()) == 3, "reloadmax: no fourth instance")
        for rid, req in ((r1, req1), (r2, req2)):
            s.use_and_return(rid, req)
        req4 = s.wait_request(r4)
        check(req4 and req4["state"] == "fulfilled",
              "reloadmax: fourth fulfilled once two nodes were returned")
        s.stop(p)
    finally:
        s.close()


def test_reload_remove_provider(zk):
    s = Scenario(zk, "reloaddel")
    try:
        pa = {"name": "fake-a", "pools": [{"name": "main",
                                           "labels": ["small"]}]}
        pb = {"name": "fake-b", "pools": [{"name": "main",
                                           "labels": ["other"]}]}
        labels = [("small", 0), ("other", 0)]
        cfg = s.write_config([pa, pb], labels)
        p = s.start(cfg)
        check(wait_for(lambda: len(s.registered_pools()) == 2,
                       what="two pools"), "reloaddel: two pools")
        req = s.wait_request(s.request(["other"]))
        check(req and req["state"] == "fulfilled", "reloaddel: b serves")
        ids = {c["provider_name"]: c["id"] for c in s.registered_pools()}
        s.write_config([pa], labels)
        check(wait_for(lambda: [c["provider_name"]
                                for c in s.registered_pools()] == ["fake-a"],
                       what="b unregistered"),
              "reloaddel: b's pool component unregistered")
        check("Provider fake-b removed" in s.log(p),
              "reloaddel: removal logged")
        rid = s.request(["other"])
        req = s.wait_request(rid)
        check(req and req["state"] == "failed" and
              req["declined_by"] == [ids["fake-a"]],
              "reloaddel: b's label no longer taken (%r)" % req)
        req = s.wait_request(s.request(["small"]))
        check(req and req["state"] == "fulfilled",
              "reloaddel: a keeps serving")
        s.stop(p)
    finally:
        s.close()


def test_reload_remove_label(zk):
    s = Scenario(zk, "reloadlabel")
    try:
        prov = {"name": "fake-provider",
                "pools": [{"name": "main", "labels": ["small", "big"]}]}
        cfg = s.write_config([prov], [("small", 0), ("big", 0)])
        p = s.start(cfg)
        req = s.wait_request(s.request(["big"]))
        check(req and req["state"] == "fulfilled", "reloadlabel: big served")
        prov["pools"][0]["labels"] = ["small"]
        s.write_config([prov], [("small", 0)])
        check(wait_for(lambda: [c["supported_labels"]
                                for c in s.registered_pools()] == [["small"]],
                       what="labels published"),
              "reloadlabel: the pool publishes the remaining label")
        req = s.wait_request(s.request(["big"]))
        check(req and req["state"] == "failed",
              "reloadlabel: the removed label is declined")
        req = s.wait_request(s.request(["small"]))
        check(req and req["state"] == "fulfilled",
              "reloadlabel: the other label is served")
        s.stop(p)
    finally:
        s.close()


# ---- 7. tenant-resource-limits ----

TENANT_LIMITS = """tenant-resource-limits:
  - tenant-name: tenant-a
    max-servers: 2
"""


def test_tenant_limits(zk):
    s = Scenario(zk, "tenant")
    try:
        prov = dict(PROVIDER, fake={"launch-delay": 1})
        cfg = s.write_config([prov], [("small", 0), ("big", 0)],
                             extra=TENANT_LIMITS)
        p = s.start(cfg, debug=True)
        check(wait_for(lambda: s.registered_pools(), what="pool"),
              "tenant: pool registered")
        a = [s.request(["small"], tenant_name="tenant-a") for _ in range(4)]
        b = s.request(["big", "small"], tenant_name="tenant-b")
        reqb = s.wait_request(b)
        check(reqb and reqb["state"] == "fulfilled",
              "tenant: another tenant is not blocked")

        def states():
            return [(s.get_request(r) or {}).get("state") for r in a]
        check(wait_for(lambda: states().count("fulfilled") == 2,
                       what="two of tenant-a"),
              "tenant: two of tenant-a's requests fulfilled")
        # Let the pool pass over the others a few times.
        n0 = s.log(p).count("it would exceed tenant quota")
        check(wait_for(lambda: s.log(p).count(
            "it would exceed tenant quota") >= n0 + 4, what="deferrals"),
            "tenant: the rest deferred for tenant quota")
        st = states()
        check(st.count("fulfilled") == 2 and st.count("requested") == 2,
              "tenant: tenant-a's others wait, not served (%r)" % st)
        mine = [n for n in s.nodes().values()
                if n["tenant_name"] == "tenant-a"]
        check(len(mine) == 2, "tenant: tenant-a holds two nodes (%d)"
              % len(mine))
        check(len(s.instances()) == 4, "tenant: four instances in all "
              "(%d)" % len(s.instances()))
        # One returned: one more served.
        done = [r for r in a if (s.get_request(r) or {}).get("state") ==
                "fulfilled"]
        s.use_and_return(done[0], s.get_request(done[0]))
        check(wait_for(lambda: states().count("fulfilled") == 2 and
                       states().count("requested") == 1,
                       what="third of tenant-a"),
              "tenant: one more served after a node was returned (%r)"
              % states())
        check(len([n for n in s.nodes().values()
                   if n["tenant_name"] == "tenant-a"]) <= 2,
              "tenant: never more than two")
        s.stop(p)
    finally:
        s.close()


# ---- 8. max-concurrency ----

def test_max_concurrency_zero(zk):
    s = Scenario(zk, "maxconc0")
    try:
        pa = {"name": "fake-a", "keys": {"max-concurrency": 0},
              "pools": [{"name": "main", "labels": ["small"]}]}
        pb = {"name": "fake-b", "pools": [{"name": "main",
                                           "labels": ["other"]}]}
        labels = [("small", 0), ("other", 0)]
        cfg = s.write_config([pa, pb], labels)
        p = s.start(cfg)
        check(wait_for(lambda: len(s.registered_pools()) == 2,
                       what="pools"), "maxconc0: both pools registered")
        held = s.request(["small"])
        req = s.wait_request(s.request(["other"]))
        check(req and req["state"] == "fulfilled",
              "maxconc0: the other provider serves")
        # Two more served by b: a has had many passes meanwhile.
        for _ in range(2):
            s.wait_request(s.request(["other"]))
        r = s.get_request(held)
        check(r and r["state"] == "requested" and
              not r.get("declined_by"),
              "maxconc0: the request for a is neither taken nor declined "
              "(%r)" % r)
        check(not [n for n in s.nodes().values()
                   if n["provider"] == "fake-a"], "maxconc0: a launches "
              "nothing")
        pa["keys"]["max-concurrency"] = 1
        s.write_config([pa, pb], labels)
        req = s.wait_request(held)
        check(req and req["state"] == "fulfilled",
              "maxconc0: served once max-concurrency is 1")
        s.stop(p)
    finally:
        s.close()


def test_max_concurrency_one(zk):
    s = Scenario(zk, "maxconc1")
    delay = 1
    try:
        prov = dict(PROVIDER, keys={"max-concurrency": 1},
                    fake={"launch-delay": delay})
        cfg = s.write_config([prov], [("small", 0), ("big", 0)])
        p = s.start(cfg, debug=True)
        rids = [s.request(["small"]) for _ in range(3)]
        reqs = [s.wait_request(r, timeout=60) for r in rids]
        check(all(r and r["state"] == "fulfilled" for r in reqs),
              "maxconc1: every request fulfilled")
        # One launch at a time: each instance was created (launch-delay
        # before it became active) after the previous one was active.
        act = sorted(i["active_at"] for i in s.instance_records().values())
        check(len(act) == 3, "maxconc1: three instances")
        gaps = [b - a for a, b in zip(act, act[1:])]
        check(all(g >= delay - 0.05 for g in gaps),
              "maxconc1: launches did not overlap (gaps %r)" % gaps)
        check("Request handling limited: max concurrency of 1 reached"
              in s.log(p), "maxconc1: the limit logged")
        s.stop(p)
    finally:
        s.close()


# ---- 9. malformed data written by others ----

def test_malformed(zk):
    s = Scenario(zk, "malformed")
    try:
        cfg = s.write_config([PROVIDER], [("small", 0), ("big", 0)])
        p = s.start(cfg)
        check(wait_for(lambda: s.registered_pools(), what="pool"),
              "malformed: pool registered")
        bad = {}
        bad["node"] = s.kz.create("/nodepool/nodes/0000077777",
                                  b"{garbage", makepath=True)
        bad["node list"] = s.kz.create("/nodepool/nodes/0000077778",
                                       b"[\"ready\"]")
        req = {"node_types": "small", "requestor": "x", "state":
               "requested", "state_time": time.time(), "created_time":
               time.time(), "provider": None, "relative_priority": 0}
        bad["request node_types"] = s.kz.create(
            "/nodepool/requests/100-", json.dumps(req).encode("utf8"),
            sequence=True, makepath=True)
        req = dict(req, node_types=["small"], state=5)
        bad["request state"] = s.kz.create(
            "/nodepool/requests/100-", json.dumps(req).encode("utf8"),
            sequence=True)
        bad["request list"] = s.kz.create(
            "/nodepool/requests/100-", b"[1, 2]", sequence=True)
        req = dict(req, state="requested", relative_priority="high")
        bad["request priority"] = s.kz.create(
            "/nodepool/requests/100-", json.dumps(req).encode("utf8"),
            sequence=True)
        bad["component"] = s.kz.create(
            "/nodepool/components/pool/garbage-", b"\xff\x00{", sequence=True,
            makepath=True)
        bad["component type"] = s.kz.create(
            "/nodepool/components/pool/garbage-", json.dumps(
                {"kind": "pool", "supported_labels": "small",
                 "priority": "high"}).encode("utf8"), sequence=True)
        good = s.request(["small", "big"])
        req = s.wait_request(good)
        check(req and req["state"] == "fulfilled",
              "malformed: a good request is served among bad data")
        for what, path in bad.items():
            check(wait_for(lambda: re.search(
                r"(ERROR|WARNING) .*%s" % re.escape(path), s.log(p)),
                what=what), "malformed: %s logged with its path %s"
                % (what, path))
            check(s.kz.exists(path), "malformed: %s left alone" % what)
        # The launcher lives on: more requests, a return, a deletion.
        # Nothing asked, nothing given (upstream fulfils it too).
        empty = s.wait_request(s.request([]))
        check(empty and empty["state"] == "fulfilled" and
              empty["nodes"] == [], "malformed: an empty request (%r)"
              % empty)
        r2 = s.request(["small"])
        req2 = s.wait_request(r2)
        check(req2 and req2["state"] == "fulfilled",
              "malformed: still serving")
        s.use_and_return(good, req)
        check(wait_for(lambda: all(not s.get_node(n) for n in req["nodes"]),
                       what="deleted"), "malformed: still deleting")
        check(p.poll() is None, "malformed: the launcher is running")
        # The listings skip what does not decode.
        rc, out, err = nodepool(cfg, "list")
        check(rc == 0 and req2["nodes"][0] in out and
              "0000077777" not in out and "0000077778" not in out,
              "malformed: nodepool list skips the garbage node (%d %r)"
              % (rc, out))
        rc, out, err = nodepool(cfg, "request-list")
        badreqs = [v.split("/")[-1] for k, v in bad.items()
                   if k.startswith("request")]
        check(rc == 0 and not [r for r in badreqs if r in out] and
              r2 in out,
              "malformed: nodepool request-list works (%d %r)" % (rc, out))
        s.stop(p)
    finally:
        s.close()


# ---- 10. the web app inside the launcher ----

def list_matches(cfg, port):
    """/node-list's JSON and `nodepool list` show the same nodes."""
    st, body = http_get(port, "/node-list", accept="application/json")
    rc, out, _ = nodepool(cfg, "list")
    if st != 200 or rc != 0:
        return None
    web = sorted([n["id"], n["provider"], ",".join(n["label"]),
                  n["server_id"] or "", n["public_ipv4"] or "",
                  n["ipv6"] or "", n["state"], n["locked"]]
                 for n in json.loads(body))
    cli = sorted(r[:7] + r[8:9] for r in table_rows(out))
    return web if web and web == cli else None


def test_webapp(zk):
    s = Scenario(zk, "webapp")
    port = L.free_port()
    host, zkport = zk.hosts.split(":")
    gate = L.TcpGate((host, int(zkport)))
    try:
        cfg = s.write_config([PROVIDER], [("small", 1), ("big", 0)],
                             extra=webapp_extra(port))
        # The launcher reaches ZooKeeper only through the gate.
        with open(cfg) as f:
            text = f.read()
        with open(cfg, "w") as f:
            f.write(text.replace("    port: %s\n" % zkport,
                                 "    port: %d\n" % gate.port))
        p = s.start(cfg, webapp=True)
        st = wait_for(lambda: http_get(port, "/ready")[0],
                      what="web app up")
        check(st == 503, "webapp: /ready 503 before the first pass (%r)"
              % st)
        gate.open()
        check(wait_for(lambda: http_get(port, "/ready") == (200, "OK"),
                       what="ready"), "webapp: /ready 200 OK after it")
        req = s.wait_request(s.request(["small", "big"]))
        check(req and req["state"] == "fulfilled", "webapp: fulfilled")
        wait_for(lambda: [n for n in s.nodes().values()
                          if n["state"] == "ready" and
                          not n["allocated_to"]], what="min-ready")
        web = wait_for(lambda: list_matches(cfg, port), what="same lists")
        check(web and len(web) == 3, "webapp: /node-list JSON is what "
              "`nodepool list` shows (%r)" % web)
        st, body = http_get(port, "/label-list", accept="application/json")
        check(st == 200 and json.loads(body) ==
              [{"label": "big"}, {"label": "small"}],
              "webapp: /label-list JSON (%d %r)" % (st, body))
        st, body = http_get(port, "/label-list")
        check(st == 200 and [r[0] for r in table_rows(body)] ==
              ["big", "small"], "webapp: /label-list table %r" % body)
        # One connection for many requests (kept alive), and a stop with
        # such a connection open.
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        heads = []
        for path in ("/ready", "/label-list", "/node-list", "/nope"):
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            heads.append((r.status, r.getheader("Connection")))
        check(heads == [(200, None), (200, None), (200, None),
                        (404, None)],
              "webapp: one kept-alive connection (%r)" % heads)
        s.stop(p)
        c.close()
    finally:
        s.close()
        gate.close()


def test_reload_bad_config(zk):
    """A broken configuration written while running: refused, logged,
    the running one kept; a good one after it is taken."""
    s = Scenario(zk, "reloadbad")
    try:
        prov = {"name": "fake-provider",
                "pools": [{"name": "main", "labels": ["small"]}]}
        cfg = s.write_config([prov], [("small", 0)])
        p = s.start(cfg)
        check(wait_for(lambda: s.registered_pools(), what="pool"),
              "reloadbad: pool registered")
        with open(cfg) as f:
            good = f.read()
        broken = [("YAML", good + "providers: [\n"),
                  ("schema", good.replace("cloud-image: fake-image",
                                          "cloud-image: no-such-image"))]
        for what, text in broken:
            n0 = s.log(p).count("Unable to load config")
            with open(cfg + ".tmp", "w") as f:
                f.write(text)
            os.rename(cfg + ".tmp", cfg)
            check(wait_for(lambda: s.log(p).count("Unable to load config")
                           > n0, what="refused"),
                  "reloadbad: %s error logged" % what)
            req = s.wait_request(s.request(["small"]))
            check(req and req["state"] == "fulfilled",
                  "reloadbad: still serving after a %s error" % what)
            # Regression: the file was read again, and its error logged,
            # every second. Three reload ticks pass with it unchanged.
            time.sleep(3.5)
            n = s.log(p).count("Unable to load config") - n0
            check(n == 1, "reloadbad: the %s error logged once, not every "
                  "second (%d times)" % (what, n))
        check([c["supported_labels"] for c in s.registered_pools()] ==
              [["small"]], "reloadbad: the pool unchanged")
        prov["pools"][0]["labels"] = ["small", "big"]
        s.write_config([prov], [("small", 0), ("big", 0)])
        check(wait_for(lambda: [c["supported_labels"] for c in
                                s.registered_pools()] == [["small", "big"]],
                       what="new labels"),
              "reloadbad: a good config after it is taken")
        req = s.wait_request(s.request(["big"]))
        check(req and req["state"] == "fulfilled",
              "reloadbad: and served")
        check(p.poll() is None, "reloadbad: running")
        s.stop(p)
    finally:
        s.close()


def test_reload_zk_hosts(zk):
    """zookeeper-servers changed while running, as upstream's
    reconfigureZooKeeper (kazoo's set_hosts): the connection in use is
    kept, the next one goes to the new list, in the same session. A
    changed chroot is refused (the running config kept), as upstream
    refuses it."""
    s = Scenario(zk, "reloadzk")
    host, zkport = zk.hosts.split(":")
    old = L.TcpGate((host, int(zkport)))
    new = L.TcpGate((host, int(zkport)))
    old.open()
    new.open()

    def owners():
        """{component path: the session that owns it}."""
        out = {}
        for kind in ("launcher", "pool"):
            d = "/nodepool/components/" + kind
            for c in s.kz.get_children(d) if s.kz.exists(d) else []:
                st = s.kz.exists(d + "/" + c)
                if st:
                    out[d + "/" + c] = st.ephemeralOwner
        return out
    try:
        prov = {"name": "fake-provider",
                "pools": [{"name": "main", "labels": ["small"]}]}
        cfg = gated_config(s, old, zkport, [prov], [("small", 0)])
        p = s.start(cfg)
        check(wait_for(lambda: s.registered_pools(), what="pool"),
              "reloadzk: pool registered")
        session = owners()
        check(len(old.socks) > 0 and len(session) == 2,
              "reloadzk: connected through the first port")
        time.sleep(1.1)  # a new mtime
        gated_config(s, new, zkport, [prov], [("small", 0)])
        check(wait_for(lambda: "Detected ZooKeeper server changes"
                       in s.log(p), what="reload"),
              "reloadzk: change detected")
        req = s.wait_request(s.request(["small"]))
        check(req and req["state"] == "fulfilled",
              "reloadzk: served on the connection in use")
        check(len(new.socks) == 0,
              "reloadzk: the connection in use kept (as kazoo)")
        old.cut()       # drops the connection, holds new ones
        check(wait_for(lambda: len(new.socks) > 0, what="reconnected"),
              "reloadzk: reconnected to the new host")
        req = s.wait_request(s.request(["small"]))
        check(req and req["state"] == "fulfilled",
              "reloadzk: served through the new host")
        check(owners() == session,
              "reloadzk: the same session (components not registered "
              "again: %s, then %s)" % (session, owners()))

        # another chroot: refused once, the running config kept
        time.sleep(1.1)
        with open(cfg) as f:
            text = f.read()
        with open(cfg + ".tmp", "w") as f:
            f.write(text.replace("chroot: %s" % s.chroot,
                                 "chroot: %s-other" % s.chroot))
        os.rename(cfg + ".tmp", cfg)
        check(wait_for(lambda: "changing the ZooKeeper chroot at runtime "
                       "is not supported" in s.log(p), what="refused"),
              "reloadzk: chroot change refused, logged")
        req = s.wait_request(s.request(["small"]))
        check(req and req["state"] == "fulfilled",
              "reloadzk: still serving in the old chroot")
        # the refusal is not repeated while the file stays as it is
        n = s.log(p).count("Unable to apply config")
        req = s.wait_request(s.request(["small"]))
        check(s.log(p).count("Unable to apply config") == n == 1,
              "reloadzk: refused once per file change")
        check(p.poll() is None, "reloadzk: running")
        s.stop(p)
    finally:
        old.close()
        new.close()
        s.close()


TESTS = [test_stack_dump, test_zk_restart, test_completion_outage,
         test_completion_steps, test_node_write_lost, test_create_lost,
         test_request_write_lost, test_session_expiry,
         test_stop_without_zookeeper, test_zuul2019,
         test_tenant_limits, test_max_concurrency_zero,
         test_max_concurrency_one, test_malformed, test_webapp,
         test_reload_max_servers, test_reload_remove_provider,
         test_reload_remove_label, test_reload_bad_config,
         test_reload_zk_hosts]

if __name__ == "__main__":
    sys.exit(L.run(TESTS))
