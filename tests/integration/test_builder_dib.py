#!/usr/bin/python3
# test_builder_dib.py: nodepool-builder running Debian's real
# diskimage-builder (`disk-image-create`, package python3-diskimage-builder)
# for a small `debian-minimal` image in `tar` format, once: the build ends
# `ready`, the tar is there, and the checksum files DIB does not write for
# tar were made by the builder. It takes minutes (debootstrap from the
# Debian mirror), so it is one plain build.
#
# Runs with the normal build only. It is given 13 minutes (run-all allows a
# test 15; NP_TEST_DIB_TIMEOUT changes it); a build that does not finish
# in time on a loaded machine is a skip, not a failure.
#
# Skipped, with the reason printed, when this machine cannot do it: not
# root (DIB mounts and chroots), no disk-image-create or debootstrap, no
# Debian mirror reachable, under 4 GiB free. The environment is the one
# /work/shared/notes/diskimage-builder-and-sshd.md found to work: DIB's
# default security source is wrong for bookworm, so the diskimage's
# env-vars point it at the mirror's debian-security.
#
# env: as launcherlib.py.
import os
import re
import shutil
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launcherlib as ll  # noqa: E402
import builderlib as bl  # noqa: E402
from launcherlib import check  # noqa: E402


# Inside run-all's 15 minutes per test.
BUILD_TIMEOUT = int(os.environ.get("NP_TEST_DIB_TIMEOUT", "780"))


def debian_mirror():
    """scheme://host of the Debian mirror apt uses, or None."""
    for path in ("/etc/apt/sources.list.d/debian.sources",
                 "/etc/apt/sources.list"):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        m = re.search(r"(https?://[^/\s]+)/debian\b", text)
        if m:
            return m.group(1)
    return None


def why_not():
    if os.path.basename(ll.BUILD.rstrip("/")) == "build-san":
        return ("it runs once, with the normal build (the sanitizers "
                "change nothing DIB does)")
    if os.geteuid() != 0:
        return "not root (diskimage-builder mounts and chroots)"
    for prog in ("disk-image-create", "debootstrap"):
        if not shutil.which(prog):
            return "%s is not installed (scripts/install-deps.sh)" % prog
    if shutil.disk_usage("/tmp").free < 4 << 30:
        return "under 4 GiB free in /tmp"
    mirror = debian_mirror()
    if not mirror:
        return "no Debian mirror in apt's sources"
    try:
        urllib.request.urlopen(mirror + "/debian/dists/bookworm/Release",
                               timeout=10).close()
    except Exception as e:
        return "Debian mirror %s not reachable: %s" % (mirror, e)
    return None


def test_real_dib_tar(zk):
    reason = why_not()
    if reason:
        print("SKIP real diskimage-builder build: %s" % reason,
              file=sys.stderr)
        return
    mirror = debian_mirror()
    s = bl.BuilderScenario(zk, "dib")
    s.write_config([bl.image_yaml(
        "debian", formats=("tar",), elements=("debian-minimal",),
        dib_cmd="disk-image-create",
        # DIB's cache (its apt archives are bind-mounted into the chroot,
        # with apt's lock) is the test's own: two runs on one machine
        # otherwise wait on each other's apt lock and one fails.
        env={"DIB_DEBIAN_SECURITY_MIRROR": mirror + "/debian-security",
             "DIB_DEBIAN_SECURITY_SUBPATH": "-security",
             "DIB_IMAGE_CACHE": os.path.join(s.dir, "dib-cache")},
        extra={"release": "bookworm", "build-timeout": BUILD_TIMEOUT})])
    # Our elements-dir holds only the fake's element: DIB's own elements
    # are found without ELEMENTS_PATH.
    with open(s.config) as f:
        text = f.read()
    with open(s.config, "w") as f:
        f.write("\n".join(ln for ln in text.splitlines()
                          if not ln.startswith("elements-dir")) + "\n")
    t0 = time.time()
    p = s.start()
    got = ll.wait_for(lambda: s.builds_in("debian", "ready") or
                      s.builds_in("debian", "failed"), BUILD_TIMEOUT + 60,
                      "DIB build")
    took = time.time() - t0
    check(got, "dib: the build ended")
    if "Build timeout for image debian" in s.log(p):
        # 3-4 minutes on a quiet machine; a loaded one is no verdict.
        print("SKIP real diskimage-builder build: not done within %d s "
              "(load average %.1f)" % (BUILD_TIMEOUT, os.getloadavg()[0]),
              file=sys.stderr)
        s.stop(p)
        s.close()
        return
    for bid, rec in (got or {}).items():
        log = s.build_log("debian", bid)
        check(rec.get("state") == "ready", "dib: ready (log tail:\n%s)"
              % log[-3000:])
        check(log.rstrip().endswith("Exit code: 0"), "dib: Exit code: 0")
        tar = os.path.join(s.images_dir, "debian-%s.tar" % bid)
        size = os.path.getsize(tar) if os.path.exists(tar) else 0
        check(size > 50 << 20, "dib: a tar of %d bytes" % size)
        for ext in ("md5", "sha256"):
            check(os.path.exists(tar + "." + ext),
                  "dib: %s made by the builder for tar" % ext)
        check(os.path.isdir(os.path.join(s.images_dir,
                                         "debian-%s.d" % bid)),
              "dib: the manifest directory")
        print("figure: real DIB tar build: %.0f s, %d MiB" %
              (took, size >> 20))
    s.stop(p)
    s.close()


if __name__ == "__main__":
    sys.exit(ll.run([test_real_dib_tar]))
