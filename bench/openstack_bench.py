#!/usr/bin/python3
# openstack_bench.py: what a node costs on the real-cloud lane's OpenStack
# (tests/openstack/cloud), run by bench/openstack-bench.sh. For each
# concurrency C (default 1 10 50):
#   1. the cloud alone: C servers created at once straight through the API
#      by this script (threads), each polled every 0.2 s (C/50 s above
#      10 servers) until ACTIVE, then
#      a floating IP made for its port and polled until Nova shows it: the
#      cloud's own create-to-ACTIVE and create-to-floating-IP times, plus
#      Nova's own record (created -> OS-SRV-USG:launched_at, whole seconds);
#   2. the launcher: C requests written at once as Zuul writes them to one
#      nodepool-launcher (openstack provider, rate 0.01, api_timeout 600,
#      floating IPs,
#      host keys scanned from an sshd on loopback), each timed from its
#      creation to `fulfilled` (a ZooKeeper watch). The driver's debug line
#      for each server says how long its create took, how much of it was
#      the cloud answering (time on the wire of its API calls) and how much
#      waiting for the shared server listing (one a second, as upstream's
#      cache) and the warm-up. The rest of request-to-ready is ours: the
#      launcher's ZooKeeper work, rate spacing, the event loop, the
#      host-key scan. Also the launcher's CPU time and peak RSS.
# Prints figures; asserts nothing. Needs OS_CLIENT_CONFIG_FILE (the lane's
# clouds.yaml) and the cloud up. env: NP_BUILD (default build).
import calendar
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))
sys.path.insert(0, os.path.join(TOP, "tests", "openstack"))
import launcherlib as L  # noqa: E402
import test_openstack_cloud as T  # noqa: E402

PROVIDER = "osl-bench"
POLL = 0.2
WAIT = 900
# Seconds each of the launcher's API calls may take (clouds.yaml's
# api_timeout; the driver's default is 60 s). With 50 creates at once on
# 2 shared cores, Nova and Neutron answered some calls after more than
# 60 s, and every such attempt failed and was retried, loading the cloud
# more. openstacksdk, upstream's client, waits without limit by default.
API_TIMEOUT = 600


def poll_interval(n):
    """The direct pass's polling: every 0.2 s per server up to 10 at
    once, then at most 50 GETs a second in all (50 servers polled every
    0.2 s made nova-api, one process, the bottleneck of its own
    measurement)."""
    return max(POLL, n / 50.0)


def pct(v, p):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def nova_time(t):
    """Nova's time stamps (UTC, with or without fractions) as epoch s."""
    if not t:
        return None
    whole, _, frac = t.rstrip("Z").split("+")[0].partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + (
        float("0." + frac) if frac else 0.0)


def nova_active_s(sv):
    c = nova_time(sv.get("created"))
    a = nova_time(sv.get("OS-SRV-USG:launched_at"))
    return a - c if c is not None and a is not None else None


# ---- 1. the cloud alone ----

def call(cloud, *args, **kw):
    """Cloud.call with the launcher's API_TIMEOUT (at C=50 nova-api,
    one process, took up to 81 s to answer a POST /servers: with
    Cloud.call's 60 s half of the direct pass's creates were lost to
    the client while Nova made their servers), a call that timed out
    anyway as no answer."""
    kw.setdefault("timeout", API_TIMEOUT)
    try:
        return cloud.call(*args, **kw)
    except Exception:
        return 0, None


def direct_one(demo, i, flavor, image, net, ext_net, made, poll):
    t0 = time.time()
    st, srv = call(demo, "POST", "compute", "/servers", {"server": {
        "name": "bench-direct-%d" % i, "imageRef": image,
        "flavorRef": flavor, "networks": [{"uuid": net}]}})
    if st != 202:
        return None
    sid = srv["server"]["id"]
    out = {"id": sid}
    made.append(out)
    sv = None
    while time.time() - t0 < WAIT:
        st, d = call(demo, "GET", "compute", "/servers/%s" % sid)
        sv = (d or {}).get("server") or {}
        if sv.get("status") in ("ACTIVE", "ERROR"):
            break
        time.sleep(poll)
    if not sv or sv.get("status") != "ACTIVE":
        return out
    out["active"] = time.time() - t0
    st, d = call(demo, "GET", "network", "/ports?device_id=%s" % sid)
    port = ((d or {}).get("ports") or [{}])[0].get("id")
    st, f = call(demo, "POST", "network", "/floatingips", {"floatingip": {
        "floating_network_id": ext_net, "port_id": port}})
    addr = ((f or {}).get("floatingip") or {}).get("floating_ip_address")
    out["fip_id"] = ((f or {}).get("floatingip") or {}).get("id")
    while addr and time.time() - t0 < WAIT:
        st, d = call(demo, "GET", "compute", "/servers/%s" % sid)
        sv = (d or {}).get("server") or {}
        if addr in json.dumps(sv.get("addresses")):
            out["fip"] = time.time() - t0
            break
        time.sleep(poll)
    out["nova"] = nova_active_s(sv)
    return out


def direct(demo, n):
    st, d = demo.call("GET", "compute", "/flavors/detail")
    flavor = [f["id"] for f in d["flavors"] if f["name"] == "osl.small"][0]
    st, d = demo.call("GET", "network", "/networks?name=private")
    net = d["networks"][0]["id"]
    st, d = demo.call("GET", "network", "/networks?router%3Aexternal=True")
    ext_net = d["networks"][0]["id"]
    st, d = demo.call("GET", "image", "/images?name=np-test-image")
    image = d["images"][0]["id"]
    made = []
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
            list(ex.map(lambda i: direct_one(demo, i, flavor, image, net,
                                             ext_net, made,
                                             poll_interval(n)), range(n)))
    finally:
        for r in made:
            if r.get("fip_id"):
                call(demo, "DELETE", "network",
                     "/floatingips/%s" % r["fip_id"])
        clear(demo, "bench-direct-")
    return made


def listing(demo):
    """The project's servers, or None when Nova did not answer."""
    st, d = call(demo, "GET", "compute", "/servers/detail")
    return d["servers"] if st == 200 and d else None


def clear(demo, prefix):
    """Delete the servers named PREFIX* until Nova lists none (a loaded
    cloud times out some deletes), then any unattached floating IP (a
    create that timed out here may have made one)."""
    end = time.time() + WAIT
    while time.time() < end:
        sv = listing(demo)
        if sv is None:
            time.sleep(2)
            continue
        left = [x for x in sv if x["name"].startswith(prefix)]
        if not left:
            break
        for x in left:
            if x["status"] != "DELETED" and x.get(
                    "OS-EXT-STS:task_state") != "deleting":
                call(demo, "DELETE", "compute", "/servers/%s" % x["id"])
        time.sleep(5)
    st, d = call(demo, "GET", "network", "/floatingips")
    for f in (d or {}).get("floatingips", []):
        if not f.get("port_id"):
            call(demo, "DELETE", "network", "/floatingips/%s" % f["id"])


# ---- 2. the launcher ----

def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def proc_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


LINE = re.compile(r"Server (\S+) of node (\d+) ready in (\d+) ms: (\d+) ms "
                  r"in (\d+) API answers, (\d+) ms waiting")


def launcher_batch(s, p, demo, n):
    done = {}
    created = {}
    lock = threading.Lock()

    def watch(rid):
        def cb(data, stat):
            if data is None:
                return False
            st = json.loads(data.decode("utf8")).get("state")
            if st in ("fulfilled", "failed"):
                with lock:
                    done.setdefault(rid, (time.time(), st))
                return False
            return True
        return cb
    cpu0 = proc_cpu(p.pid)
    log0 = len(s.log(p))
    t0 = time.time()
    for _ in range(n):
        t = time.time()
        rid = s.request(["small"])
        created[rid] = t
        s.kz.DataWatch("/nodepool/requests/" + rid, watch(rid))
    end = time.time() + WAIT
    while time.time() < end:
        with lock:
            if len(done) == n:
                break
        time.sleep(0.05)
    wall = time.time() - t0
    cpu_launch = proc_cpu(p.pid) - cpu0
    servers = {sv["id"]: sv for sv in demo.servers()}
    lines = {}
    for m in LINE.finditer(s.log(p)[log0:]):
        lines[m.group(2)] = dict(create=int(m.group(3)), api=int(m.group(4)),
                                 calls=int(m.group(5)),
                                 wait=int(m.group(6)))
    rows = []
    for rid, t in created.items():
        fin = done.get(rid)
        req = s.get_request(rid) or {}
        if not fin or fin[1] != "fulfilled":
            rows.append(None)
            continue
        nid = req["nodes"][0]
        node = s.get_node(nid) or {}
        ln = lines.get(nid, {})
        sv = servers.get(node.get("external_id"), {})
        rows.append(dict(total=fin[0] - t, create=ln.get("create"),
                         api=ln.get("api"), calls=ln.get("calls"),
                         wait=ln.get("wait"), nova=nova_active_s(sv)))
        s.use_and_return(rid, req)
    end = time.time() + WAIT
    while time.time() < end:
        sv = listing(demo)
        if sv is not None and not [x for x in sv if x["metadata"].get(
                "nodepool_provider_name") == PROVIDER]:
            break
        time.sleep(1)
    cpu_all = proc_cpu(p.pid) - cpu0
    return dict(rows=rows, wall=wall, cpu_launch=cpu_launch,
                cpu_all=cpu_all, hwm=proc_kb(p.pid, "VmHWM:"),
                rss=proc_kb(p.pid, "VmRSS:"))


def bench_clouds(s):
    """The lane's clouds.yaml with API_TIMEOUT for the launcher."""
    src = os.environ["OS_CLIENT_CONFIG_FILE"]
    dst = os.path.join(s.dir, "clouds.yaml")
    with open(src) as f:
        text = f.read()
    text = text.replace("\n  osl:\n", "\n  osl:\n    api_timeout: %d\n"
                        % API_TIMEOUT, 1)
    with open(dst, "w") as f:
        f.write(text)
    return dst


def bench_config(s, port, n):
    path = T.config(s, PROVIDER, port)
    text = open(path).read().replace("max-servers: 20",
                                      "max-servers: %d" % (n + 5))
    with open(path, "w") as f:
        f.write(text)
    return path


def main():
    conc = [int(a) for a in sys.argv[1:]] or [1, 10, 50]
    demo = T.Cloud("demo", "demo")
    admin = T.Cloud("admin", "admin")
    top = max(conc) + 10
    admin.call("PUT", "compute", "/os-quota-sets/%s" % demo.project_id,
               {"quota_set": {"instances": top, "cores": 4 * top,
                              "ram": 1024 * top}})
    admin.call("PUT", "network", "/quotas/%s" % demo.project_id,
               {"quota": {"port": 4 * top, "floatingip": 2 * top}})
    st, d = demo.call("GET", "image", "/images?name=np-test-image")
    if not (d or {}).get("images"):
        T.upload_image(demo, "np-test-image")
    if demo.servers():
        print("the cloud already has servers of the demo project; "
              "results may be skewed", file=sys.stderr)
    sdir = tempfile.mkdtemp(prefix="np-os-bench-sshd.")
    sshd = os.path.join(TOP, "tests/harness/sshd.sh")
    env = dict(os.environ, SSHD_EXTRA_CONFIG="MaxStartups 500\nMaxSessions 500")
    out = subprocess.check_output(["bash", sshd, "start", sdir, "0.0.0.0"],
                                  text=True, env=env)
    port = int(out.split()[1])
    zk = L.ZK()
    s = L.Scenario(zk, "os-bench")
    results = []
    try:
        cfg = bench_config(s, port, max(conc))
        p = s.start(cfg, env={"OS_CLIENT_CONFIG_FILE": bench_clouds(s)})
        # One request first: the warm-up (flavors, images, networks) and
        # the first token are not what a steady launcher pays.
        w = launcher_batch(s, p, demo, 1)
        print("warm-up request: %.2f s" % (w["rows"][0] or {}).get(
            "total", float("nan")))
        for n in conc:
            d = direct(demo, n)
            la = launcher_batch(s, p, demo, n)
            results.append((n, d, la))
            print_row(n, d, la)
            print_table(results[-1:], legend=False)
        s.stop(p)
    finally:
        s.close()
        zk.stop()
        subprocess.call(["bash", sshd, "stop", sdir])
        shutil.rmtree(sdir, ignore_errors=True)
    print()
    print_table(results)


def ms(x):
    return "%.0f" % (x * 1000) if x == x else "-"


def print_row(n, d, la):
    ok = [r for r in la["rows"] if r]
    print("C=%d: direct %d/%d ACTIVE, launcher %d/%d fulfilled in %.1f s"
          % (n, sum(1 for r in d if "active" in r), n, len(ok), n,
             la["wall"]), flush=True)


def print_table(results, legend=True):
    if legend:
        print_legend()
    hdr = HDR
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for n, d, la in results:
        print_line(n, d, la)
    sys.stdout.flush()


HDR = ("C", "API ACTIVE", "API +FIP", "Nova ACTIVE", "req->ready",
       "create", "cloud answers", "listing waits", "ours", "ours %",
       "calls", "CPU s", "CPU ms/node", "RSS peak MB")


def print_legend():
    print("All times are medians per server/request in ms (p90 in "
          "brackets); ours = request-to-ready minus the cloud's answers "
          "and the listing waits.")
    print("CPU s: the launcher's CPU from the first request to the last "
          "fulfilled; CPU ms/node: to the last server deleted, per node.")


def print_line(n, d, la):
    ok = [r for r in la["rows"] if r and r["create"] is not None]
    act = [r["active"] for r in d if "active" in r]
    fip = [r["fip"] for r in d if "fip" in r]
    nova = [r["nova"] for r in d if r.get("nova") is not None]
    tot = [r["total"] for r in ok]
    cre = [r["create"] / 1000.0 for r in ok]
    api = [r["api"] / 1000.0 for r in ok]
    wt = [r["wait"] / 1000.0 for r in ok]
    ours = [r["total"] - (r["api"] + r["wait"]) / 1000.0 for r in ok]
    share = 100.0 * sum(ours) / sum(tot) if tot else float("nan")
    calls = [r["calls"] for r in ok]

    def f(v):
        return "%s (%s)" % (ms(pct(v, 50)), ms(pct(v, 90)))
    print("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %.1f | %s | "
          "%.2f | %.0f | %.1f |" % (
              n, f(act), f(fip), f(nova), f(tot), f(cre), f(api), f(wt),
              f(ours), share, "%.0f" % pct(calls, 50) if calls else "-",
              la["cpu_launch"],
              1000.0 * la["cpu_all"] / max(1, len(ok)),
              la["hwm"] / 1024.0))


if __name__ == "__main__":
    main()
