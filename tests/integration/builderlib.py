# builderlib.py: what the builder's integration tests (and the end-to-end
# tests and benchmark built on them) share: a BuilderScenario with its own
# chroot, images dir, build-log dir, fake-cloud state dir and config, that
# starts and stops nodepool-builder processes, reads build records with
# kazoo and runs the CLI. The ZooKeeper, check/wait_for/run, and the
# scenario's chroot, directory and processes (ProcScenario, with the
# sanitizer check) are launcherlib's.
#
# Builds use tests/fixtures/dib/fake-dib-cmd (see its header for the
# FAKE_DIB_* variables a diskimage's env-vars pass to it).
#
# env: as launcherlib (NP_BUILD, NP_TEST_ZK_TLS, NP_TEST_ZK_CA/_CERT/_KEY,
# NP_TEST_KEEP).
import json
import os

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


class BuilderScenario(ll.ProcScenario):
    """Builder processes (launcherlib's ProcScenario: chroot, directory,
    processes) with images, build-log and elements dirs and a config."""

    KIND = "builder"
    CHROOT_PREFIX = "/b"
    STOP_TIMEOUT = 60

    def __init__(self, zk, name):
        super().__init__(zk, name)
        self.images_dir = os.path.join(self.dir, "images")
        self.log_dir = os.path.join(self.dir, "logs")
        self.elements_dir = os.path.join(self.dir, "elements")
        os.makedirs(os.path.join(self.elements_dir, "fake-base"))
        self.config = None

    def config_head(self, images_dir=None, log_dir=None):
        """The first lines of a builder's nodepool.yaml: ZooKeeper, the
        images, build-log and elements dirs."""
        return ll.zk_config_lines(self.zk, self.chroot) + [
            "images-dir: %s" % (images_dir or self.images_dir),
            "build-log-dir: %s" % (log_dir or self.log_dir),
            "elements-dir: %s" % self.elements_dir]

    def write_config(self, images, providers=None, extra="",
                     fname="nodepool.yaml"):
        """IMAGES: image_yaml() texts. PROVIDERS: (name, [image names],
        image-type or None) of fake providers; by default none, so formats
        come from the images' own `formats`."""
        lines = self.config_head() + ["labels:", "  - name: small",
                                      "diskimages:"]
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
        self.config = ll.write_file(os.path.join(self.dir, fname),
                                    "\n".join(lines) + "\n" + extra)
        return self.config

    def start(self, config=None, args=(), env=None, debug=True,
              interval_ms=None):
        """A builder in the foreground (-d by default). INTERVAL_MS: the
        build and upload workers' pass interval (test knob)."""
        e = dict(env or {})
        if interval_ms:
            e["NODEPOOL_BUILDER_TEST_INTERVAL_MS"] = str(interval_ms)
        return self.spawn("builder", [BUILDER, "-d" if debug else "-f", "-c",
                                      config or self.config] + list(args), e)

    # ---- ZooKeeper and the CLI ----

    def cli(self, *args):
        return ll.nodepool(self.config, *args)

    def builds(self, image):
        """{build id: record} of IMAGE."""
        return self.records("/nodepool/images/%s/builds" % image)

    def uploads(self, image, bid, provider):
        """{upload id: record} of build BID of IMAGE to PROVIDER."""
        return self.records("/nodepool/images/%s/builds/%s/providers/%s/"
                            "images" % (image, bid, provider))

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
