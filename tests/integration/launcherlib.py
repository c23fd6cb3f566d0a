# launcherlib.py: what the launcher's integration tests share: the TLS
# ZooKeeper (the environment's or one started through tests/harness), a
# Scenario (its own chroot, fake-cloud state dir, config files and
# nodepool-launcher processes, started and stopped), Zuul's side of the
# protocol (requests, node locks), a real UDP statsd listener, and the
# check/wait_for/run helpers that print "N passed, N failed".
#
# Every launcher log is checked for sanitizer reports when the launcher is
# stopped or killed (the ASan+UBSan build's findings fail the test even
# when the process exits 0). OwnZK is a ZooKeeper of a test's own, which it
# may stop and start again on the same ports and data directory; TcpGate
# holds a launcher's connections to it until the test lets them through.
#
# env: NP_BUILD (build dir with nodepool-launcher); NP_TEST_ZK_TLS and
# NP_TEST_ZK_CA/_CERT/_KEY for a running TLS ZooKeeper, else one is started
# and stopped at the end; NP_TEST_KEEP=1 keeps every scenario's directory
# (configs, launcher logs, fake cloud), not only those of failed runs.
import json
import os
import random
import shutil
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

from kazoo.client import KazooClient
from kazoo.recipe.lock import Lock

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("NP_BUILD", os.path.join(TOP, "build"))
LAUNCHER = os.path.join(BUILD, "nodepool-launcher")
WAIT = 30.0

PASSED = 0
FAILED = 0

# Upstream's Node.toDict keys (zookeeper-protocol.md §3.2).
NODE_KEYS = ["state", "state_time", "cloud", "provider", "pool", "type",
             "allocated_to", "az", "region", "public_ipv4", "private_ipv4",
             "public_ipv6", "host_id", "interface_ip", "connection_port",
             "ssh_port", "image_id", "launcher", "created_time",
             "external_id", "hostname", "comment", "user_data", "hold_job",
             "host_keys", "username", "connection_type", "shell_type",
             "hold_expiration", "resources", "slot", "attributes",
             "python_path", "tenant_name", "driver_data", "requestor"]
REQUEST_KEYS = ["state", "state_time", "declined_by", "node_types", "nodes",
                "reuse", "requestor", "requestor_data", "provider",
                "relative_priority", "event_id", "created_time",
                "tenant_name"]

STATIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBZ8yhtBqRVd3pXo3UiJWk"
              "Jm7lgTq2ZUqJ+1MvU6JgEW")
# A static provider, an entry of a config's providers list (config_text's
# EXTRA continues it after the fake one). Host names containing "fake" are
# neither resolved nor scanned, so the slot is registered without a real
# host.
STATIC = """  - name: static-provider
    driver: static
    pools:
      - name: main
        nodes:
          - name: fake-static-host
            labels: [static]
            host-key-checking: false
            host-key: %s
""" % STATIC_KEY

PROVIDER = {"name": "fake-provider",
            "pools": [{"name": "main", "labels": ["small", "big"]}]}


def check(cond, what):
    global PASSED, FAILED
    if cond:
        PASSED += 1
    else:
        FAILED += 1
        print("FAIL: %s" % what, file=sys.stderr)
    return cond


def wait_for(fn, timeout=WAIT, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            v = fn()
        except Exception:
            v = None
        if v:
            return v
        time.sleep(0.05)
    print("timed out waiting for %s" % what, file=sys.stderr)
    return None


# "LeakSanitizer has encountered a fatal error": the leak check at exit
# could not run (its tracer crashed), so a leak may have gone unseen.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "LeakSanitizer has encountered a fatal error",
                   "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer",
                   "WARNING: ThreadSanitizer")


def sanitizer_report(text):
    """The first line of a sanitizer report in TEXT, else None."""
    for line in text.splitlines():
        if any(m in line for m in SANITIZER_MARKS):
            return line
    return None


def free_port():
    """A TCP port of 127.0.0.1 that nothing uses now, below the kernel's
    ephemeral range (as tests/harness/lib.sh's free_port, which says
    why: a port in that range may be some connection's by the time a
    daemon binds it)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    while True:
        port = random.randrange(20000, max(low, 21000))
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()


NODEPOOL = os.path.join(BUILD, "nodepool")


def nodepool(cfg, *args, timeout=120):
    """Run our CLI with config CFG: (returncode, stdout, stderr)."""
    p = subprocess.run([NODEPOOL, "-c", cfg] + list(args),
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def table_rows(out):
    """The data rows of the first PrettyTable in OUT, as lists of cells
    (the header and any later table left out)."""
    rows, seps = [], 0
    for line in out.splitlines():
        if line.startswith("+"):
            seps += 1
            if seps == 3:
                break
            continue
        if seps == 2 and line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def harness(script, *args):
    """Run a bash snippet with tests/harness/lib.sh sourced; its stdout."""
    return subprocess.check_output(
        ["bash", "-c", 'source "$1/tests/harness/lib.sh"; shift; ' + script,
         "-", TOP] + list(args), text=True)


def serve_each(sock, serve, keep=None):
    """Accept on SOCK until it is closed: SERVE(conn) on a thread of its
    own for each connection (KEEP(conn) first, if given)."""
    while True:
        try:
            c, _ = sock.accept()
        except OSError:
            return
        if keep:
            keep(c)
        threading.Thread(target=serve, args=(c,), daemon=True).start()


class TcpGate:
    """A TCP forwarder from a port of 127.0.0.1 to TARGET (host, port)
    that holds every connection it accepts until open(): a ZooKeeper a
    launcher cannot reach yet, for as long as a test wants."""

    def __init__(self, target):
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.opened = threading.Event()
        self.closing = False
        self.socks = []
        self.mu = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _keep(self, sk):
        with self.mu:
            self.socks.append(sk)

    def _accept(self):
        serve_each(self.sock, self._serve, self._keep)

    def _serve(self, c):
        while not self.opened.wait(0.1):
            if self.closing:
                return
        try:
            u = socket.create_connection(self.target)
        except OSError:
            c.close()
            return
        self._keep(u)
        threading.Thread(target=self._pump, args=(u, c),
                         daemon=True).start()
        self._pump(c, u)

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def open(self):
        self.opened.set()

    def cut(self):
        """Drop every connection and hold new ones until open()."""
        self.opened.clear()
        with self.mu:
            socks, self.socks = self.socks, []
        for sk in socks:
            try:
                sk.shutdown(socket.SHUT_RDWR)
                sk.close()
            except OSError:
                pass

    def close(self):
        self.closing = True
        self.sock.close()
        with self.mu:
            for sk in self.socks:
                try:
                    sk.close()
                except OSError:
                    pass


class FrameTrap:
    """A TLS man in the middle between a client and ZooKeeper's TLS port
    (the harness's own certificates on both sides) that reads the
    client's frames as they pass: TRAP(frame) is asked about every
    request frame after the ConnectRequest (FRAME: the bytes after the
    length: xid, type, body) and answers None (forward it), "drop" (cut
    the connection without forwarding it: the request never reaches the
    server) or "lost" (forward it, pass nothing more either way, and cut
    the connection when the server's reply to it comes: the
    server has carried it out, however slow it is under load, and its
    reply never arrives; a fixed pause instead could cut before the
    server read it, and ZooKeeper drops what a closed connection sent)."""

    CREATE = 1
    DELETE = 2
    SET_DATA = 5
    MULTI = 14
    CREATE2 = 15

    def __init__(self, zk, trap):
        tls = os.path.dirname(zk.ca)
        self.target = ("127.0.0.1", int(zk.hosts.split(":")[1]))
        self.trap = trap
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(tls + "/server.crt",
                                        tls + "/server.key")
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_ctx.check_hostname = False
        self.client_ctx.load_verify_locations(zk.ca)
        self.client_ctx.load_cert_chain(zk.cert, zk.key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def op(frame):
        return struct.unpack(">i", frame[4:8])[0] if len(frame) >= 8 \
            else None

    @staticmethod
    def path(frame):
        """The path a create, delete or setData FRAME names."""
        n = struct.unpack(">i", frame[8:12])[0]
        return frame[12:12 + n].decode("utf8")

    @staticmethod
    def data(frame):
        """The data a setData FRAME writes."""
        at = 12 + struct.unpack(">i", frame[8:12])[0]
        n = struct.unpack(">i", frame[at:at + 4])[0]
        return frame[at + 4:at + 4 + max(0, n)]

    @staticmethod
    def multi_ops(frame):
        """[(type, path)] of a multi FRAME's delete and setData operations,
        in order (it carries no other kind in our launcher's
        completion)."""
        ops, at = [], 8
        while at + 9 <= len(frame):
            kind = struct.unpack(">i", frame[at:at + 4])[0]
            at += 9                 # type, done (bool), err
            if kind == -1:
                break
            n = struct.unpack(">i", frame[at:at + 4])[0]
            path = frame[at + 4:at + 4 + n].decode("utf8")
            at += 4 + n
            if kind == FrameTrap.SET_DATA:
                at += 4 + max(0, struct.unpack(">i", frame[at:at + 4])[0])
            elif kind != FrameTrap.DELETE:
                break
            at += 4                 # version
            ops.append((kind, path))
        return ops

    def _accept(self):
        serve_each(self.sock, self._serve)

    def _serve(self, c):
        u = None
        try:
            c = self.server_ctx.wrap_socket(c, server_side=True)
            u = self.client_ctx.wrap_socket(
                socket.create_connection(self.target))
            self._pump(c, u)
        except (OSError, ValueError):
            pass
        for sk in (c, u):
            if sk:
                try:
                    sk.close()
                except OSError:
                    pass

    @staticmethod
    def _frames(buf):
        """The complete length-prefixed frames at the start of BUF, and
        the rest."""
        out = []
        while len(buf) >= 4:
            n = struct.unpack(">i", buf[:4])[0]
            if len(buf) < 4 + n:
                break
            out.append(buf[:4 + n])
            buf = buf[4 + n:]
        return out, buf

    def _pump(self, c, u):
        """Both directions on one thread (an SSL object is not for two
        threads at once), frame by frame: read what is there, pass it on.
        A reply starts with its request's xid, as the request does."""
        bufs = {c: b"", u: b""}
        first = True
        lost = None     # the xid of a "lost" request, whose reply we await
        end = None
        while lost is None or time.monotonic() < end:
            ready = [sk for sk in (c, u) if sk.pending()] or \
                select.select([c, u], [], [], 1.0)[0]
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                frames, bufs[src] = self._frames(bufs[src] + data)
                for frame in frames:
                    if src is u:
                        if lost is None:
                            c.sendall(frame)
                        elif frame[4:8] == lost:
                            return
                    elif lost is None:
                        what = None if first else self.trap(frame[4:])
                        first = False
                        if what == "drop":
                            return
                        u.sendall(frame)
                        if what == "lost":
                            lost, end = frame[4:8], time.monotonic() + 120

    def close(self):
        self.sock.close()


class ZK:
    """The TLS ZooKeeper: the environment's, or one we start."""

    def __init__(self):
        self.own = None
        if os.environ.get("NP_TEST_ZK_TLS"):
            self.hosts = os.environ["NP_TEST_ZK_TLS"]
            self.ca = os.environ["NP_TEST_ZK_CA"]
            self.cert = os.environ["NP_TEST_ZK_CERT"]
            self.key = os.environ["NP_TEST_ZK_KEY"]
            return
        self._start_own()

    def _start_own(self):
        self.own = tempfile.mkdtemp(prefix="np-launcher-zk.")
        out = harness('zk_start "$1" >/dev/null; echo "$ZK_PORT $ZK_TLS_PORT"',
                      self.own + "/zk").split()
        self.port = out[0]
        self.tls_port = out[1]
        self.hosts = "127.0.0.1:%s" % out[1]
        tls = self.own + "/zk/tls"
        self.ca, self.cert, self.key = (tls + "/ca.pem", tls + "/client.pem",
                                        tls + "/client.key")

    def client(self, chroot=""):
        c = KazooClient(hosts=self.hosts + chroot, use_ssl=True, ca=self.ca,
                        certfile=self.cert, keyfile=self.key,
                        verify_certs=True)
        c.start()
        return c

    def stop(self):
        if self.own:
            subprocess.call(["bash", "-c", 'source "$1/tests/harness/lib.sh";'
                             ' zk_stop "$2" "$3"', "-", TOP,
                             self.own + "/zk", self.port])
            shutil.rmtree(self.own, ignore_errors=True)


class OwnZK(ZK):
    """A ZooKeeper of the test's own, whatever the environment offers:
    halt() stops the server (zk_stop), resume() starts it again on the
    same ports and data directory (sessions and znodes survive)."""

    def __init__(self):
        self._start_own()

    def halt(self):
        harness('zk_stop "$1" "$2"', self.own + "/zk", self.port)

    def resume(self):
        subprocess.check_call(
            ["bash", os.path.join(TOP, "tests/harness/zk-start.sh"),
             self.port, self.own + "/zk", self.tls_port],
            stdout=subprocess.DEVNULL)


def zk_config_lines(zk, chroot, port=None):
    """The zookeeper-servers and zookeeper-tls sections of a nodepool.yaml
    (lines): ZK's TLS server (or PORT of the same host), below CHROOT."""
    host, zk_port = zk.hosts.split(":")
    return ["zookeeper-servers:", "  - host: %s" % host,
            "    port: %s" % (port or zk_port), "    chroot: %s" % chroot,
            "zookeeper-tls:", "  ca: %s" % zk.ca, "  cert: %s" % zk.cert,
            "  key: %s" % zk.key]


def write_file(path, text):
    """PATH replaced by TEXT at once (a daemon polling it never reads half
    a file)."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)
    return path


def config_text(zk, chroot, state_dir, providers, labels, extra="",
                zk_port=None):
    """LABELS: (name, min_ready) or (name, min_ready, {key: value}) for
    more label keys (max-ready-age). A provider may carry "keys" (more
    provider keys, e.g. launch-timeout), "fake" (fake: options) and
    "image" (more cloud-image keys, e.g. connection-port); a pool "keys"
    (more pool keys) and "label-keys" (more keys of each pool label)."""
    lines = zk_config_lines(zk, chroot, zk_port) + ["labels:"]
    for label in labels:
        name, min_ready = label[0], label[1]
        lines += ["  - name: %s" % name, "    min-ready: %d" % min_ready]
        for k, v in (label[2] if len(label) > 2 else {}).items():
            lines.append("    %s: %s" % (k, v))
    lines.append("providers:")
    for p in providers:
        lines += ["  - name: %s" % p["name"], "    cloud: fake",
                  "    launch-retries: %d" % p.get("retries", 3)]
        for k, v in p.get("keys", {}).items():
            lines.append("    %s: %s" % (k, v))
        lines += ["    fake:", "      state-dir: %s" % state_dir]
        for k, v in p.get("fake", {}).items():
            lines.append("      %s: %s" % (k, v))
        lines += ["    cloud-images:", "      - name: fake-image",
                  "        image-name: Fake Precise"]
        for k, v in p.get("image", {}).items():
            lines.append("        %s: %s" % (k, v))
        lines.append("    pools:")
        for pool in p["pools"]:
            lines += ["      - name: %s" % pool["name"],
                      "        max-servers: %d" % pool.get("max", 100)]
            if "priority" in pool:
                lines.append("        priority: %d" % pool["priority"])
            if "azs" in pool:
                lines.append("        availability-zones: [%s]"
                             % ", ".join(pool["azs"]))
            for k, v in pool.get("keys", {}).items():
                lines.append("        %s: %s" % (k, v))
            lines.append("        node-attributes: {executor-zone: z1}")
            lines.append("        labels:")
            for label in pool["labels"]:
                lines += ["          - name: %s" % label,
                          "            cloud-image: fake-image",
                          "            min-ram: 1024"]
                for k, v in pool.get("label-keys", {}).items():
                    lines.append("            %s: %s" % (k, v))
    return "\n".join(lines) + "\n" + extra


class ProcScenario:
    """What a scenario of daemons is, launchers or builders: its own chroot
    (and a kazoo client in it), a directory with a fake-cloud state dir
    (removed at the end unless a test failed or NP_TEST_KEEP is set), and
    processes started with their output in a log there, stopped with
    SIGINT (exit 0 checked) or killed, their logs checked for sanitizer
    reports."""

    KIND = "launcher"       # the directory's and the chroot's names
    CHROOT_PREFIX = "/t"
    STOP_TIMEOUT = 20       # seconds from SIGINT to the exit

    def __init__(self, zk, name):
        self.zk = zk
        self.name = name
        self.chroot = "%s-%s-%s" % (self.CHROOT_PREFIX, name,
                                    uuid.uuid4().hex[:8])
        self.dir = tempfile.mkdtemp(prefix="np-%s-%s." % (self.KIND, name))
        self.state_dir = os.path.join(self.dir, "cloud")
        os.makedirs(self.state_dir)
        root = zk.client()
        root.ensure_path(self.chroot)
        root.stop()
        self.kz = zk.client(self.chroot)
        self.procs = []

    def spawn(self, kind, argv, env=None):
        """ARGV started with its output in <KIND>-<n>.log; the statsd
        variables of our environment are dropped, ENV added."""
        path = os.path.join(self.dir, "%s-%d.log" % (kind, len(self.procs)))
        e = dict(os.environ)
        for k in ("STATSD_HOST", "STATSD_PORT", "STATSD_PREFIX"):
            e.pop(k, None)
        e.update(env or {})
        with open(path, "w") as log:
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 env=e)
        p.logfile = path
        p.kind = kind
        self.procs.append(p)
        return p

    def stop(self, p, timeout=None):
        """SIGINT; the exit code is checked (0)."""
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                rc = p.wait(timeout or self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
            check(rc == 0, "%s: %s exits 0 on SIGINT (rc %s)"
                  % (self.name, p.kind, rc))
        self.check_sanitizer(p)

    def kill(self, p):
        """SIGKILL: the process dies holding its locks; its ZooKeeper
        session lives on until it expires."""
        if p.poll() is None:
            p.kill()
            p.wait()
        self.check_sanitizer(p)

    def check_sanitizer(self, p):
        """A sanitizer report in P's log fails the test (once per
        process)."""
        if getattr(p, "san_checked", False):
            return
        p.san_checked = True
        rep = sanitizer_report(self.log(p))
        check(rep is None, "%s: sanitizer report in %s: %s"
              % (self.name, p.logfile, rep))

    def log(self, p):
        with open(p.logfile, errors="replace") as f:
            return f.read()

    def close(self):
        for p in self.procs:
            self.stop(p)
        try:
            self.kz.stop()
        except Exception:
            pass
        if FAILED == 0 and not os.environ.get("NP_TEST_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print("kept %s" % self.dir, file=sys.stderr)

    def records(self, path):
        """{child: JSON record} of the znodes below PATH (not `lock`)."""
        out = {}
        try:
            ids = self.kz.get_children(path)
        except Exception:
            return out
        for i in ids:
            if i == "lock":
                continue
            try:
                data, _ = self.kz.get("%s/%s" % (path, i))
                out[i] = json.loads(data.decode("utf8"))
            except Exception:
                pass
        return out


class Scenario(ProcScenario):
    """Launcher processes, their config files, and Zuul's side."""

    def write_config(self, providers, labels, fname="nodepool.yaml",
                     extra="", zk_port=None):
        """ZK_PORT: another port of 127.0.0.1 for ZooKeeper (a
        FrameTrap's)."""
        return write_file(os.path.join(self.dir, fname),
                          config_text(self.zk, self.chroot, self.state_dir,
                                      providers, labels, extra, zk_port))

    def start(self, config, env=None, debug=False, webapp=False):
        """ENV: more environment variables (STATSD_HOST, test knobs).
        DEBUG: -d (debug log lines, e.g. the cleanup passes). WEBAPP: run
        the web app (the config's webapp: section says where)."""
        args = [LAUNCHER, "-d" if debug else "-f", "-c", config]
        if not webapp:
            args.insert(2, "--no-webapp")
        return self.spawn("launcher", args, env)

    # ---- Zuul's side ----

    def request(self, labels, **kw):
        d = {"requestor_data": {"job_name": "j"}, "node_types": labels,
             "requestor": "zuul-system-id", "created_time": time.time(),
             "provider": None, "state": "requested",
             "state_time": time.time(), "relative_priority": 0,
             "event_id": uuid.uuid4().hex, "tenant_name": "tenant"}
        d.update(kw)
        path = self.kz.create("/nodepool/requests/100-",
                              json.dumps(d).encode("utf8"), sequence=True,
                              makepath=True)
        return path.split("/")[-1]

    def get_request(self, rid):
        try:
            data, _ = self.kz.get("/nodepool/requests/" + rid)
        except Exception:
            return None
        return json.loads(data.decode("utf8"))

    def wait_request(self, rid, states=("fulfilled", "failed"),
                     timeout=WAIT):
        return wait_for(lambda: (lambda r: r if r and r["state"] in states
                                 else None)(self.get_request(rid)),
                        timeout, "request %s in %s" % (rid, states))

    def get_node(self, nid):
        try:
            data, _ = self.kz.get("/nodepool/nodes/" + nid)
        except Exception:
            return None
        return json.loads(data.decode("utf8")) if data else None

    def set_node(self, nid, **fields):
        """Rewrite node NID with FIELDS (the caller holds its lock)."""
        data, _ = self.kz.get("/nodepool/nodes/" + nid)
        n = json.loads(data.decode("utf8"))
        n.update(fields)
        self.kz.set("/nodepool/nodes/" + nid, json.dumps(n).encode("utf8"))
        return n

    def nodes(self):
        out = {}
        if not self.kz.exists("/nodepool/nodes"):
            return out
        for nid in self.kz.get_children("/nodepool/nodes"):
            n = self.get_node(nid)
            if n:
                out[nid] = n
        return out

    def instances(self):
        d = os.path.join(self.state_dir, "instances")
        if not os.path.isdir(d):
            return []
        return [f for f in os.listdir(d) if f.endswith(".json")]

    def instance_records(self):
        """{instance id: record} of the fake cloud."""
        out = {}
        d = os.path.join(self.state_dir, "instances")
        for f in self.instances():
            try:
                with open(os.path.join(d, f)) as fh:
                    out[f[:-5]] = json.load(fh)
            except (OSError, ValueError):
                pass
        return out

    def add_instance(self, metadata):
        """An instance the fake cloud holds that no launcher created,
        with METADATA; returns its id."""
        iid = uuid.uuid4().hex
        d = os.path.join(self.state_dir, "instances")
        os.makedirs(d, exist_ok=True)
        rec = {"id": iid, "name": "np-leak", "flavor": "Fake Flavor",
               "az": "az1", "cloud": "fake", "region": None,
               "addresses": "fake", "loopback": 0, "volume_gb": 0,
               "active_at": time.time(), "metadata": metadata}
        tmp = os.path.join(d, ".%s.tmp" % iid)
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.rename(tmp, os.path.join(d, iid + ".json"))
        return iid

    def lock_node(self, nid, timeout=10):
        lock = Lock(self.kz, "/nodepool/nodes/%s/lock" % nid)
        check(lock.acquire(timeout=timeout), "%s: lock node %s"
              % (self.name, nid))
        return lock

    def _contenders(self, path):
        return self.kz.get_children(path) if self.kz.exists(path) else []

    def node_lock_contenders(self, nid):
        return self._contenders("/nodepool/nodes/%s/lock" % nid)

    def request_lock_contenders(self, rid):
        return self._contenders("/nodepool/requests-lock/" + rid)

    def use_and_return(self, rid, req):
        """Zuul's executor: lock, delete request, in-use, used, unlock."""
        locks = []
        for nid in req["nodes"]:
            locks.append((nid, self.lock_node(nid)))
        self.kz.delete("/nodepool/requests/" + rid)
        for state in ("in-use", "used"):
            for nid, _ in locks:
                self.set_node(nid, state=state, state_time=time.time())
        for _, lock in locks:
            lock.release()

    def return_all(self, rids):
        """Zuul done with requests RIDS: a fulfilled one's nodes used and
        returned, any other request deleted."""
        for rid in rids:
            req = self.get_request(rid)
            if req and req["state"] == "fulfilled":
                self.use_and_return(rid, req)
            elif req:
                self.kz.delete("/nodepool/requests/" + rid)

    def check_all_deleted(self, what, timeout=60):
        """Checks, as WHAT, that every node and every fake instance goes
        (nothing left behind once everything is returned)."""
        check(wait_for(lambda: not self.nodes() and not self.instances(),
                       timeout, "all deleted"),
              "%s: every node and instance deleted (%d nodes, %d instances "
              "left)" % (what, len(self.nodes()), len(self.instances())))

    def start_full_pool(self, what):
        """A launcher serving label small from one pool of max-servers 1,
        its one slot taken by a fulfilled request, a second request
        waiting (pending) with the pool paused. (process, provider,
        first request's id and record, second request's id)."""
        prov = {"name": "fake-provider",
                "pools": [{"name": "main", "max": 1, "labels": ["small"]}]}
        p = self.start(self.write_config([prov], [("small", 0)]))
        r1 = self.request(["small"])
        req1 = self.wait_request(r1)
        check(req1 and req1["state"] == "fulfilled",
              "%s: first request fulfilled" % what)
        r2 = self.request(["small"])
        check(wait_for(self.pool_paused, what="paused"),
              "%s: pool paused at max-servers 1" % what)
        check((self.get_request(r2) or {}).get("state") == "pending",
              "%s: second request waits pending" % what)
        return p, prov, r1, req1, r2

    def pool_paused(self):
        """Whether a registered pool says it is paused."""
        return any(c["paused"] for c in self.registered_pools())

    def registered_pools(self):
        out = []
        path = "/nodepool/components/pool"
        if not self.kz.exists(path):
            return out
        for c in self.kz.get_children(path):
            try:
                data, _ = self.kz.get(path + "/" + c)
                out.append(json.loads(data.decode("utf8")))
            except Exception:
                pass
        return out


class Statsd:
    """A real statsd server's socket: every datagram received on a UDP
    port of 127.0.0.1, split into metric lines."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines = []
        self.mu = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def env(self):
        return {"STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(self.port)}

    def _run(self):
        while self.running:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            with self.mu:
                self.lines.extend(data.decode("utf8").split("\n"))

    def snapshot(self):
        with self.mu:
            return list(self.lines)

    def clear(self):
        with self.mu:
            self.lines = []

    def values(self, key, kind):
        """Every value sent for KEY as KIND ("g", "c", "ms"), in order."""
        out = []
        for line in self.snapshot():
            name, _, rest = line.partition(":")
            val, _, k = rest.partition("|")
            if name == key and k == kind:
                out.append(float(val))
        return out

    def last(self, key, kind="g"):
        v = self.values(key, kind)
        return v[-1] if v else None

    def keys(self):
        return set(line.partition(":")[0] for line in self.snapshot())

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def run(tests):
    """Run TESTS (functions taking the ZK), or those named on the command
    line, and print the totals; the exit code says whether all passed."""
    only = sys.argv[1:]
    zk = ZK()
    try:
        for t in tests:
            if only and t.__name__ not in only:
                continue
            try:
                t(zk)
            except Exception:
                traceback.print_exc()
                check(False, "%s raised" % t.__name__)
    finally:
        zk.stop()
    print("%d passed, %d failed" % (PASSED, FAILED))
    return 1 if FAILED else 0
