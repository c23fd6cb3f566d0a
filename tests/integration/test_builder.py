#!/usr/bin/python3
# test_builder.py: nodepool-builder's BuildWorkers against a real TLS
# ZooKeeper, with real processes: the builder program, the `nodepool` CLI
# and tests/fixtures/dib/fake-dib-cmd as the diskimage's dib-cmd. Covers
# scheduled builds (none ready, rebuild-age, a newly required format),
# manual requests (`nodepool image-build`, removed only on success), pause
# from config and ZooKeeper, failed builds, build-timeout killing the
# process group, build-log retention, checksum files, SIGUSR2 and SIGINT
# during a build, and builds that cannot succeed (a bad dib-cmd, a missing
# element, a missing output file, a full disk) ending `failed` with the
# reason in the build log. The real diskimage-builder is test_builder_dib.py.
#
# Prints the time from `nodepool image-build` to the DIB process starting
# (a figure; never asserted).
#
# env: as launcherlib.py.
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launcherlib as ll  # noqa: E402
import builderlib as bl  # noqa: E402
from launcherlib import check, wait_for  # noqa: E402

FAST = 300  # ms between passes (test knob)


def record_lines(path):
    try:
        with open(path) as f:
            return [line.split(" ", 3) for line in f.read().splitlines()]
    except FileNotFoundError:
        return []


def test_scheduled_build(zk):
    """No ready build: built at start, record and files as upstream."""
    s = bl.BuilderScenario(zk, "sched")
    env = {"DIB_EXTRA": "hello world", "DIB_RELEASE": "bookworm"}
    s.write_config([bl.image_yaml("img", formats=("tar", "raw", "qcow2"),
                                  env=env,
                                  extra={"username": "ubuntu",
                                         "python-path": "/usr/bin/python3"})])
    p = s.start()
    got = s.wait_builds("img", "ready")
    check(got, "sched: a ready build")
    if got:
        bid, rec = list(got.items())[0]
        check(len(bid) == 32 and all(c in "0123456789abcdef" for c in bid),
              "sched: build id is uuid4 hex (%s)" % bid)
        with open(os.path.join(s.images_dir, "builder_id.txt")) as f:
            check(rec.get("builder_id") == f.read(),
                  "sched: builder_id from builder_id.txt")
        check(rec.get("formats") == "qcow2,raw,tar",
              "sched: formats sorted and joined (%s)" % rec.get("formats"))
        check(rec.get("username") == "ubuntu" and
              rec.get("python_path") == "/usr/bin/python3" and
              "shell_type" in rec, "sched: connection fields %s" % rec)
        check(rec.get("builder"), "sched: builder (fqdn) set")
        files = s.image_files("img", bid)
        for ext in ("qcow2", "raw", "tar"):
            check("img-%s.%s" % (bid, ext) in files,
                  "sched: %s written (%s)" % (ext, files))
            for sum_ext, fn in (("md5", hashlib.md5),
                                ("sha256", hashlib.sha256)):
                path = os.path.join(s.images_dir, "img-%s.%s" % (bid, ext))
                try:
                    with open(path + "." + sum_ext) as f:
                        want = f.read().split()[0]
                    with open(path, "rb") as f:
                        have = fn(f.read()).hexdigest()
                except OSError as e:
                    want, have = str(e), None
                check(want == have, "sched: %s.%s matches the file (%s)"
                      % (ext, sum_ext, ext))
        log = s.build_log("img", bid)
        check("-x -t qcow2,raw,tar --checksum --no-tmpfs" in log,
              "sched: DIB command line in the log")
        check("qemu-img options: compat=0.10" in log,
              "sched: qemu options passed for qcow2")
        check("DIB_RELEASE=bookworm" in log and "DIB_IMAGE_NAME=img" in log
              and "DIB_IMAGE_FILENAME=%s/img-%s" % (s.images_dir, bid) in log
              and "ELEMENTS_PATH=%s" % s.elements_dir in log,
              "sched: DIB environment:\n%s" % log)
        check(log.rstrip().endswith("Exit code: 0"),
              "sched: build log ends with Exit code: 0")
    s.stop(p)
    # One build only: a restart with the build still fresh builds nothing.
    p = s.start()
    time.sleep(2)
    check(len(s.builds("img")) == 1, "sched: no second build when fresh")
    s.close()


def test_manual_request(zk):
    """`nodepool image-build` wakes a BuildWorker at once; the request is
    removed after the build; the time to DIB's start is printed."""
    s = bl.BuilderScenario(zk, "manual")
    rec = os.path.join(s.dir, "dib-record")
    s.write_config([bl.image_yaml("img", env={"FAKE_DIB_RECORD": rec})])
    p = s.start()  # upstream's 10 s interval: no polling helps here
    check(s.wait_builds("img", "ready"), "manual: first (scheduled) build")
    time.sleep(0.5)
    samples, zsamples = [], []
    for i in range(3):
        n = len(record_lines(rec))
        t0 = time.time()
        rc, out, err = s.cli("image-build", "img")
        check(rc == 0, "manual: image-build rc 0 (%s)" % err)
        st = s.kz.exists("/nodepool/images/img/request-build")
        got = wait_for(lambda: len(record_lines(rec)) > n, 20,
                       "DIB started")
        if got:
            started = float(record_lines(rec)[n][0])
            samples.append((started - t0) * 1000)
            if st:
                zsamples.append((started - st.ctime / 1000.0) * 1000)
        check(s.wait_builds("img", "ready", n=i + 2),
              "manual: build %d ready" % (i + 2))
        check(wait_for(lambda: not s.requested("img"), 10, "request gone"),
              "manual: request-build removed after success")
    if samples:
        print("figure: nodepool image-build -> DIB started: %s ms "
              "(CLI process start included)"
              % ", ".join("%.0f" % x for x in samples))
    if zsamples:
        print("figure: request-build znode created -> DIB started: %s ms"
              % ", ".join("%.0f" % x for x in zsamples))
    s.stop(p)
    s.close()


def test_scheduled_clears_older_request(zk):
    """A request made before a scheduled build started is satisfied by it:
    one build, not two."""
    s = bl.BuilderScenario(zk, "schedreq")
    s.write_config([bl.image_yaml("img")])
    s.kz.ensure_path("/nodepool/images/img/request-build")
    p = s.start()
    check(s.wait_builds("img", "ready"), "schedreq: built")
    check(wait_for(lambda: not s.requested("img"), 10, "request gone"),
          "schedreq: request removed")
    time.sleep(1)
    check(len(s.builds("img")) == 1, "schedreq: built once (%d builds)"
          % len(s.builds("img")))
    s.stop(p)
    s.close()


def test_failed_keeps_request(zk):
    s = bl.BuilderScenario(zk, "fail")
    s.write_config([bl.image_yaml("img", env={"FAKE_DIB_FAIL": "3"},
                                  extra={"rebuild-age": 86400})])
    s.kz.create("/nodepool/images/img/builds/0000000001",
                b'{"state": "ready", "state_time": %f, "formats": "raw"}'
                % time.time(), makepath=True)
    p = s.start(interval_ms=FAST)
    rc, out, err = s.cli("image-build", "img")
    got = s.wait_builds("img", "failed", n=2)
    check(got, "fail: failed builds (retried)")
    for bid, r in (got or {}).items():
        check("formats" not in r and r.get("builder_id"),
              "fail: failed record as upstream (%s)" % r)
        log = s.build_log("img", bid)
        check("failing with rc 3" in log and "Exit code: 3" in log,
              "fail: reason and exit code in the build log")
    check(s.requested("img"), "fail: request kept after failures")
    check(not any(n.startswith("img-") and not n.endswith(".d")
                  for n in os.listdir(s.images_dir)) if
          os.path.isdir(s.images_dir) else True,
          "fail: no image files of failed builds")
    s.stop(p)
    s.close()


def test_pause(zk):
    s = bl.BuilderScenario(zk, "pause")
    s.write_config([bl.image_yaml("img", extra={"pause": "true"}),
                    bl.image_yaml("other")])
    p = s.start(interval_ms=FAST)
    check(s.wait_builds("other", "ready"), "pause: the other image built")
    s.cli("image-build", "img")
    time.sleep(2)
    check(not s.builds("img"), "pause: config pause builds nothing")
    s.stop(p)
    # Unpaused in the config, paused in ZooKeeper.
    s.write_config([bl.image_yaml("img"), bl.image_yaml("other")])
    s.kz.ensure_path("/nodepool/images/img")  # upstream: no makepath
    rc, out, err = s.cli("image-pause", "img")
    check(rc == 0, "pause: image-pause rc 0 (%s)" % err)
    p = s.start(interval_ms=FAST)
    time.sleep(2)
    check(not s.builds("img"), "pause: ZooKeeper pause builds nothing")
    rc, out, err = s.cli("image-unpause", "img")
    check(s.wait_builds("img", "ready"), "pause: built once unpaused")
    check(wait_for(lambda: not s.requested("img"), 10, "request gone"),
          "pause: request served after unpause")
    s.stop(p)
    s.close()


def test_rebuild_age_and_formats(zk):
    s = bl.BuilderScenario(zk, "age")
    s.write_config([bl.image_yaml("img", extra={"rebuild-age": 2})])
    p = s.start(interval_ms=FAST)
    check(s.wait_builds("img", "ready", n=2, timeout=30),
          "age: rebuilt after rebuild-age")
    s.write_config([bl.image_yaml("img2", formats=("raw",))])
    got = s.wait_builds("img2", "ready")
    s.write_config([bl.image_yaml("img2", formats=("raw", "vhd"))])
    got = s.wait_builds("img2", "ready", n=2)
    check(got and any(r.get("formats") == "raw,vhd" for r in got.values()),
          "age: a newly required format triggers a build")
    s.stop(p)
    s.close()


def test_timeout_kills_group(zk):
    s = bl.BuilderScenario(zk, "timeout")
    rec = os.path.join(s.dir, "dib-record")
    s.write_config([bl.image_yaml(
        "img", env={"FAKE_DIB_SLEEP": "60", "FAKE_DIB_CHILD": "120",
                    "FAKE_DIB_RECORD": rec},
        extra={"build-timeout": 2})])
    p = s.start()
    got = s.wait_builds("img", "failed", timeout=30)
    check(got, "timeout: build failed")
    lines = record_lines(rec)
    if lines:
        pgid = lines[0][2]

        def alive():
            out = subprocess.run(["ps", "-o", "pid=,stat=", "-g", pgid],
                                 capture_output=True, text=True).stdout
            return [ln for ln in out.splitlines() if "Z" not in ln.split()[1]]
        check(wait_for(lambda: not alive(), 10, "group gone"),
              "timeout: process group %s killed (%s)" % (pgid, alive()))
    for bid in got or {}:
        log = s.build_log("img", bid)
        check("Exit code" not in log, "timeout: no exit code after timeout")
    check("Build timeout for image img" in s.log(p),
          "timeout: logged")
    s.stop(p)
    s.close()


def test_log_retention(zk):
    s = bl.BuilderScenario(zk, "logs")
    s.write_config([bl.image_yaml("img", extra={"rebuild-age": 1})],
                   extra="build-log-retention: 2\n")
    os.makedirs(s.log_dir)
    with open(os.path.join(s.log_dir, "other-image.log"), "w") as f:
        f.write("not ours\n")
    p = s.start(interval_ms=FAST)
    check(wait_for(lambda: s.log(p).count("DIB image img is built") >= 5,
                   60, "5 builds"), "logs: 5 builds")
    s.stop(p)
    logs = [n for n in os.listdir(s.log_dir) if n.startswith("img")]
    check(len(logs) == 3, "logs: retention 2 keeps 3 after a build (%s)"
          % logs)
    check(os.path.exists(os.path.join(s.log_dir, "other-image.log")),
          "logs: another image's log kept")
    s.close()


def test_sigusr2_and_sigint(zk):
    s = bl.BuilderScenario(zk, "signals")
    # The dib-cmd at a path of some 600 characters: the dump once cut
    # what a worker does at 255.
    long_dir = os.path.join(s.dir, *[c * 120 for c in "abcde"])
    os.makedirs(long_dir)
    dib = os.path.join(long_dir, "disk-image-create")
    os.symlink(bl.FAKE_DIB, dib)
    s.write_config([bl.image_yaml("img", env={"FAKE_DIB_SLEEP": "4"},
                                  dib_cmd=dib)])
    p = s.start()
    wait_for(lambda: s.builds_in("img", "building"), 20, "building")
    time.sleep(0.5)
    p.send_signal(signal.SIGUSR2)
    check(wait_for(lambda: "End stack dump" in s.log(p), 10, "dump"),
          "signals: stack dump written")
    log = s.log(p)
    check("BuildWorker.0: building img build" in log,
          "signals: the dump says what BuildWorker.0 does")
    line = [ln for ln in log.splitlines()
            if "BuildWorker.0: building img build" in ln][-1:]
    check(bool(re.search(re.escape(dib) + r" -x .* fake-base \(pid \d+\)$",
                         line[0] if line else "")),
          "signals: the whole DIB command line, %d characters, in the "
          "dump (%r)" % (len(dib), line))
    check("Thread:" in log and "BuildWorker.0" in log,
          "signals: threads by name in the dump")
    check(p.poll() is None, "signals: still running after SIGUSR2")
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    rc = p.wait(60)
    check(rc == 0, "signals: exit 0 after SIGINT (rc %s)" % rc)
    check(s.builds_in("img", "ready"),
          "signals: the running build finished before exit")
    print("figure: SIGINT during a build -> exit: %.1f s (build left "
          "about 3.5 s)" % (time.time() - t0))
    s.check_sanitizer(p)
    s.close()


def test_builds_that_fail(zk):
    s = bl.BuilderScenario(zk, "bad")
    s.write_config([
        bl.image_yaml("nocmd", dib_cmd="/nonexistent/disk-image-create"),
        bl.image_yaml("noelem", elements=("fake-base", "no-such-element")),
        bl.image_yaml("nofile", formats=("raw", "qcow2"),
                      env={"FAKE_DIB_NO_FORMAT": "qcow2"}),
        bl.image_yaml("quote", dib_cmd="\"'unterminated\""),
    ])
    p = s.start(args=["--build-workers", "2"])
    for image, reason in (("nocmd", "Failed to exec"),
                          ("noelem", "Element 'no-such-element' not found"),
                          ("nofile", "Image file missing or unreadable"),
                          ("quote", "No closing quotation")):
        got = s.wait_builds(image, "failed")
        check(got, "bad: %s failed" % image)
        for bid in got or {}:
            log = s.build_log(image, bid)
            check(reason in log, "bad: %s: %r in the build log:\n%s"
                  % (image, reason, log))
    check(p.poll() is None, "bad: the builder runs on")
    s.stop(p)
    s.close()


def test_full_disk(zk):
    s = bl.BuilderScenario(zk, "full")
    os.makedirs(s.images_dir)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs",
                        s.images_dir], capture_output=True, text=True)
    if r.returncode != 0:
        print("SKIP full disk: cannot mount a tmpfs here: %s"
              % r.stderr.strip(), file=sys.stderr)
        s.close()
        return
    try:
        s.write_config([bl.image_yaml("img", env={"FAKE_DIB_SIZE":
                                                  str(4 << 20)})])
        p = s.start()
        got = s.wait_builds("img", "failed")
        check(got, "full: failed on a full disk")
        for bid in got or {}:
            log = s.build_log("img", bid)
            check("No space left on device" in log,
                  "full: the reason in the build log:\n%s" % log)
        s.stop(p)
    finally:
        subprocess.run(["umount", s.images_dir])
    s.close()


def test_bad_config(zk):
    s = bl.BuilderScenario(zk, "badcfg")
    path = s.write_config([bl.image_yaml("img")])
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write("\n".join(ln for ln in text.splitlines()
                          if not ln.startswith("images-dir")) + "\n")
    r = subprocess.run([bl.BUILDER, "-f", "-c", path], capture_output=True,
                       text=True, timeout=30)
    check(r.returncode == 1 and "No images-dir specified in config." in
          r.stdout + r.stderr, "badcfg: refused (%s %s)"
          % (r.returncode, r.stdout + r.stderr))
    r = subprocess.run([bl.BUILDER, "--build-workers", "x"],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 2 and "invalid" in r.stderr,
          "badcfg: bad --build-workers refused")
    s.close()


def test_reload_bad_config(zk):
    """Regression: a configuration that failed to load on reload was read
    again, and its error logged, every second. Now once per change of the
    file, and a good one after it is taken."""
    s = bl.BuilderScenario(zk, "reloadbad")
    path = s.write_config([bl.image_yaml("img")])
    p = s.start()
    check(wait_for(lambda: s.builds_in("img", "ready"), 30, "first build"),
          "reloadbad: built")
    with open(path) as f:
        good = f.read()
    broken = [("YAML", good + "diskimages: [\n", "YAML parsing failed"),
              ("builder", "\n".join(ln for ln in good.splitlines()
                                    if not ln.startswith("images-dir")),
               "No images-dir specified in config.")]
    for what, text, msg in broken:
        n0 = s.log(p).count("Unable to load config")
        with open(path + ".tmp", "w") as f:
            f.write(text + "\n")
        os.rename(path + ".tmp", path)
        check(wait_for(lambda: msg in s.log(p), 10, what),
              "reloadbad: the %s error logged" % what)
        # Three reload ticks (1 s each) pass with the file unchanged.
        time.sleep(3.5)
        n = s.log(p).count("Unable to load config") - n0
        check(n == 1, "reloadbad: the %s error logged once, not every "
              "second (%d times)" % (what, n))
    check(p.poll() is None, "reloadbad: running")
    n0 = s.log(p).count("Configuration changed; reloading")
    s.write_config([bl.image_yaml("img"), bl.image_yaml("img2")])
    check(wait_for(lambda: s.builds_in("img2", "ready"), 30, "img2"),
          "reloadbad: a good config after it is taken (img2 built)")
    check(s.log(p).count("Configuration changed; reloading") == n0 + 1,
          "reloadbad: reloaded once")
    s.stop(p)
    s.check_sanitizer(p)
    s.close()


if __name__ == "__main__":
    sys.exit(ll.run([test_scheduled_build, test_manual_request,
                     test_scheduled_clears_older_request,
                     test_failed_keeps_request, test_pause,
                     test_rebuild_age_and_formats, test_timeout_kills_group,
                     test_log_retention, test_sigusr2_and_sigint,
                     test_builds_that_fail, test_full_disk, test_bad_config,
                     test_reload_bad_config]))
