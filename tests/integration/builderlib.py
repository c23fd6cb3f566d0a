# builderlib.py: what the builder's integration tests (and the end-to-end
# tests and benchmark built on them) share: a BuilderScenario with its own
# chroot, images dir, build-log dir, fake-cloud state dir and config, that
# starts and stops nodepool-builder processes, reads build records with
# kazoo and runs the CLI. The ZooKeeper, check/wait_for/run and the
# sanitizer check are launcherlib's.
#
# Builds use tests/fixtures/dib/fake-dib-cmd (see its header for the
# FAKE_DIB_* variables a diskimage's env-vars pass to it).
#
# env: as launcherlib (NP_BUILD, NP_TEST_ZK_TLS, NP_TEST_ZK_CA/_CERT/_KEY,
# NP_TEST_KEEP).
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid

import launcherlib as ll
from launcherlib import check, wait_for  # noqa: F401 (re-exported)

BUILDER = os.path.join(ll.BUILD, "nodepool-builder")
FAKE_DIB = os.path.join(ll.TOP, "tests", "fixtures", "dib", "fake-dib-cmd")


def image_yaml(name, formats=("raw",), env=None, elements=("fake-base",),
               extra=None, dib_cmd=FAKE_DIB):
    """One diskimages[] entry. ENV: env-vars; EXTRA: more keys."""
    lines = ["  - name: %s" % name, "    dib-cmd: %s" % dib_cmd,
             "    elements: [%s]" % ", ".join(elements)]
    if formats:
        lines.append("    formats: [%s]" % ", ".join(formats))
    if env:
        lines.append("    env-vars:")
        for k, v in env.items():
            lines.append("      %s: %s" % (k, json.dumps(str(v))))
    for k, v in (extra or {}).items():
        lines.append("    %s: %s" % (k, v))
    return "\n".join(lines)


class BuilderScenario:
    """A chroot, images/log/cloud dirs, a config and builder processes."""

    def __init__(self, zk, name):
        self.zk = zk
        self.name = name
        self.chroot = "/b-%s-%s" % (name, uuid.uuid4().hex[:8])
        self.dir = tempfile.mkdtemp(prefix="np-builder-%s." % name)
        self.images_dir = os.path.join(self.dir, "images")
        self.log_dir = os.path.join(self.dir, "logs")
        self.state_dir = os.path.join(self.dir, "cloud")
        self.elements_dir = os.path.join(self.dir, "elements")
        for d in (self.state_dir, os.path.join(self.elements_dir,
                                               "fake-base")):
            os.makedirs(d)
        root = zk.client()
        root.ensure_path(self.chroot)
        root.stop()
        self.kz = zk.client(self.chroot)
        self.procs = []
        self.config = None

    def write_config(self, images, providers=None, extra="",
                     fname="nodepool.yaml"):
        """IMAGES: image_yaml() texts. PROVIDERS: (name, [image names],
        image-type or None) of fake providers; by default none, so formats
        come from the images' own `formats`."""
        host, port = self.zk.hosts.split(":")
        lines = ["zookeeper-servers:", "  - host: %s" % host,
                 "    port: %s" % port, "    chroot: %s" % self.chroot,
                 "zookeeper-tls:", "  ca: %s" % self.zk.ca,
                 "  cert: %s" % self.zk.cert, "  key: %s" % self.zk.key,
                 "images-dir: %s" % self.images_dir,
                 "build-log-dir: %s" % self.log_dir,
                 "elements-dir: %s" % self.elements_dir,
                 "labels:", "  - name: small", "diskimages:"]
        lines += images
        if providers:
            lines.append("providers:")
            for pname, imgs, itype in providers:
                lines += ["  - name: %s" % pname, "    cloud: fake"]
                if itype:
                    lines.append("    image-type: %s" % itype)
                lines += ["    fake:", "      state-dir: %s" % self.state_dir,
                          "    diskimages:"]
                lines += ["      - name: %s" % i for i in imgs]
                lines += ["    pools:", "      - name: main",
                          "        labels:", "          - name: small",
                          "            diskimage: %s" % imgs[0]]
        path = os.path.join(self.dir, fname)
        with open(path + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n" + extra)
        os.rename(path + ".tmp", path)
        self.config = path
        return path

    def start(self, config=None, args=(), env=None, debug=True,
              interval_ms=None):
        """A builder in the foreground (-d by default). INTERVAL_MS: the
        build and upload workers' pass interval (test knob)."""
        log = open(os.path.join(self.dir, "builder-%d.log" % len(self.procs)),
                   "w")
        e = dict(os.environ)
        for k in ("STATSD_HOST", "STATSD_PORT", "STATSD_PREFIX"):
            e.pop(k, None)
        if interval_ms:
            e["NODEPOOL_BUILDER_TEST_INTERVAL_MS"] = str(interval_ms)
        e.update(env or {})
        cmd = [BUILDER, "-d" if debug else "-f", "-c",
               config or self.config] + list(args)
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                             env=e)
        p.logfile = log.name
        self.procs.append(p)
        return p

    def stop(self, p, timeout=60):
        """SIGINT; the exit code is checked (0)."""
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
            check(rc == 0, "%s: builder exits 0 on SIGINT (rc %s)"
                  % (self.name, rc))
        self.check_sanitizer(p)

    def kill(self, p):
        if p.poll() is None:
            p.kill()
            p.wait()
        self.check_sanitizer(p)

    def check_sanitizer(self, p):
        if getattr(p, "san_checked", False):
            return
        p.san_checked = True
        rep = ll.sanitizer_report(self.log(p))
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
        if ll.FAILED == 0 and not os.environ.get("NP_TEST_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print("kept %s" % self.dir, file=sys.stderr)

    # ---- ZooKeeper and the CLI ----

    def cli(self, *args):
        return ll.nodepool(self.config, *args)

    def builds(self, image):
        """{build id: record} of IMAGE."""
        out = {}
        base = "/nodepool/images/%s/builds" % image
        try:
            ids = self.kz.get_children(base)
        except Exception:
            return out
        for i in ids:
            if i == "lock":
                continue
            try:
                data, _ = self.kz.get("%s/%s" % (base, i))
                out[i] = json.loads(data.decode("utf8"))
            except Exception:
                pass
        return out

    def builds_in(self, image, state):
        return {k: v for k, v in self.builds(image).items()
                if v.get("state") == state}

    def wait_builds(self, image, state, n=1, timeout=60):
        """Wait until IMAGE has N builds in STATE; returns them."""
        return wait_for(lambda: (lambda b: b if len(b) >= n else None)(
            self.builds_in(image, state)), timeout,
            "%d %s build(s) of %s" % (n, state, image))

    def requested(self, image):
        return self.kz.exists("/nodepool/images/%s/request-build"
                              % image) is not None

    def build_log(self, image, build_id):
        path = os.path.join(self.log_dir, "%s-%s.log" % (image, build_id))
        with open(path, errors="replace") as f:
            return f.read()

    def image_files(self, image, build_id):
        pre = "%s-%s." % (image, build_id)
        try:
            names = os.listdir(self.images_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(pre))
