#!/usr/bin/python3
"""test_lock_kazoo.py: our lock recipe against kazoo's Lock on the same
directories, in both directions, on a real ZooKeeper.

Our side is the test_zk_lock binary in helper mode (NP_ZK_LOCK_HELPER=1):
it reads commands on stdin and drives our asynchronous lock API from one
event loop, answering on stdout (see helper_command in
tests/unit/test_zk_lock.c). kazoo runs here. Nothing waits on the clock:
every step waits for a reply or for a znode count, with a generous cap
that only matters when something is broken.

Env: NP_TEST_ZK (host:port), NP_BUILD (build dir with tests/test_zk_lock).
"""
import os
import select
import subprocess
import sys
import threading
import time
import traceback

from kazoo.client import KazooClient

ZOK, ZLOCKBUSY = 0, -1000
WAIT = 30.0  # upper bound for any single step; never reached when healthy

passed = failed = 0


def check(cond, what):
    global failed
    if not cond:
        failed += 1
        print("  FAIL: %s" % what, file=sys.stderr)
        raise AssertionError(what)


class Ours:
    """The helper process and its line protocol."""

    def __init__(self, build):
        env = dict(os.environ, NP_ZK_LOCK_HELPER="1")
        self.p = subprocess.Popen([os.path.join(build, "tests", "test_zk_lock")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env=env)
        self.buf = b""
        self.events = []
        check(self._line() == "ready", "helper ready")

    def _line(self):
        deadline = time.monotonic() + WAIT
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            check(left > 0, "helper answered in time")
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if r:
                chunk = os.read(self.p.stdout.fileno(), 4096)
                check(chunk != b"", "helper still running")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def cmd(self, text):
        """Send a command; return its direct reply (events are queued)."""
        self.p.stdin.write((text + "\n").encode())
        self.p.stdin.flush()
        while True:
            line = self._line()
            if line.startswith(("acq ", "rel ")):
                self.events.append(line)
            else:
                return line

    def event(self, kind, slot):
        """Wait for "KIND SLOT RC" and return RC."""
        prefix = "%s %d " % (kind, slot)
        while True:
            for e in self.events:
                if e.startswith(prefix):
                    self.events.remove(e)
                    return int(e[len(prefix):])
            line = self._line()
            if line.startswith(("acq ", "rel ")):
                self.events.append(line)

    def pending(self, kind, slot):
        return any(e.startswith("%s %d " % (kind, slot)) for e in self.events)

    def new(self, slot, path, ident):
        check(self.cmd("new %d %s %s" % (slot, path, ident)) == "ok", "new lock")

    def acquire(self, slot, blocking, timeout=-1):
        check(self.cmd("acq %d %d %g" % (slot, int(blocking), timeout)) == "ok",
              "acquire started")

    def fresh(self, slot):
        check(self.cmd("fresh %d" % slot) == "ok", "fresh acquire started")

    def release(self, slot):
        check(self.cmd("rel %d" % slot) == "ok", "release started")
        return self.event("rel", slot)

    def held(self, slot):
        return self.cmd("held %d" % slot) == "held %d 1" % slot

    def contenders(self, path):
        line = self.cmd("contenders 0 %s" % path).split(" ", 2)
        check(line[1] == "0", "contenders rc")
        return line[2].split("|") if len(line) > 2 and line[2] else []

    def close(self):
        try:
            self.p.stdin.write(b"quit\n")
            self.p.stdin.close()
            self.p.wait(timeout=WAIT)
        except Exception:
            self.p.kill()
            self.p.wait()
        return self.p.returncode


def wait_children(zk, path, n):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if len(zk.get_children(path)) == n:
            return True
        time.sleep(0.01)
    return False


class KazooWaiter(threading.Thread):
    """A blocking kazoo acquire in the background."""

    def __init__(self, lock):
        super().__init__(daemon=True)
        self.lock = lock
        self.got = threading.Event()
        self.result = None

    def run(self):
        self.result = self.lock.acquire(blocking=True, timeout=WAIT)
        self.got.set()


def t_we_hold_kazoo_waits(zk, ours, base):
    path = base + "/a"
    ours.new(0, path, "ours-0")
    ours.acquire(0, False)
    check(ours.event("acq", 0) == ZOK, "ours acquires a free lock")
    kl = zk.Lock(path, "kazoo")
    check(kl.acquire(blocking=False) is False, "kazoo non-blocking fails")
    check(zk.get_children(path) and len(zk.get_children(path)) == 1,
          "kazoo's failed attempt left nothing")
    check(kl.contenders() == ["ours-0"], "kazoo sees our identifier")
    w = KazooWaiter(kl)
    w.start()
    check(wait_children(zk, path, 2), "kazoo contender queued")
    check(not w.got.is_set(), "kazoo still waits while we hold")
    check(ours.release(0) == ZOK, "ours releases")
    check(w.got.wait(WAIT) and w.result is True, "kazoo gets it after release")
    kl.release()
    check(zk.exists(path) is not None and zk.get_children(path) == [],
          "directory stays, empty")


def t_kazoo_holds_we_wait(zk, ours, base):
    path = base + "/b"
    kl = zk.Lock(path, "kazoo")
    check(kl.acquire(blocking=False) is True, "kazoo acquires")
    ours.new(1, path, "-")
    ours.acquire(1, False)
    check(ours.event("acq", 1) == ZLOCKBUSY, "ours non-blocking is busy")
    check(len(zk.get_children(path)) == 1, "our failed attempt left nothing")
    check(ours.contenders(path) == ["kazoo"], "we see kazoo's identifier")
    ours.acquire(1, True, WAIT)
    check(wait_children(zk, path, 2), "our contender queued")
    check(not ours.held(1) and not ours.pending("acq", 1), "ours waits")
    kl.release()
    check(ours.event("acq", 1) == ZOK, "ours gets it after kazoo releases")
    check(ours.held(1), "ours holds")
    check(kl.acquire(blocking=False) is False, "kazoo now sees it taken")
    check(ours.release(1) == ZOK, "ours releases")
    check(zk.get_children(path) == [], "nothing left")


def t_mixed_order(zk, ours, base):
    path = base + "/c"
    ours.new(2, path, "ours-2")
    ours.new(3, path, "ours-3")
    ours.acquire(2, True, WAIT)
    check(ours.event("acq", 2) == ZOK, "first (ours) holds")
    kl = zk.Lock(path, "kazoo")
    w = KazooWaiter(kl)
    w.start()
    check(wait_children(zk, path, 2), "second (kazoo) queued")
    ours.acquire(3, True, WAIT)
    check(wait_children(zk, path, 3), "third (ours) queued")
    check(kl.contenders() == ["ours-2", "kazoo", "ours-3"],
          "kazoo lists contenders in sequence order")
    check(ours.contenders(path) == ["ours-2", "kazoo", "ours-3"],
          "we list contenders in sequence order")
    check(ours.release(2) == ZOK, "first releases")
    check(w.got.wait(WAIT) and w.result is True, "second (kazoo) is served next")
    check(not ours.held(3) and not ours.pending("acq", 3),
          "third still waits while kazoo holds")
    kl.release()
    check(ours.event("acq", 3) == ZOK, "third (ours) is served last")
    check(ours.release(3) == ZOK, "third releases")
    check(zk.get_children(path) == [], "nothing left")


def t_fresh_lock_against_kazoo(zk, ours, base):
    # Ours makes the directory and its contender in one multi: kazoo
    # must see it held, and wait for it in order.
    path = base + "/d"
    ours.new(4, path, "ours-4")
    ours.fresh(4)
    check(ours.event("acq", 4) == ZOK, "ours takes a new lock in one multi")
    check(zk.get(path)[0] == b"", "the directory is empty, as kazoo makes it")
    kl = zk.Lock(path, "kazoo")
    check(kl.acquire(blocking=False) is False, "kazoo sees the fresh lock held")
    check(kl.contenders() == ["ours-4"], "kazoo sees our identifier")
    w = KazooWaiter(kl)
    w.start()
    check(wait_children(zk, path, 2), "kazoo contender queued")
    check(ours.release(4) == ZOK, "ours releases")
    check(w.got.wait(WAIT) and w.result is True, "kazoo gets it after release")
    # Kazoo holds an existing directory: our fresh attempt falls back to
    # the recipe and is busy, leaving nothing behind.
    ours.fresh(4)
    check(ours.event("acq", 4) == ZLOCKBUSY, "fresh attempt on kazoo's lock is busy")
    check(len(zk.get_children(path)) == 1, "our failed attempt left nothing")
    kl.release()
    ours.fresh(4)
    check(ours.event("acq", 4) == ZOK, "fresh attempt on a free existing lock")
    check(kl.acquire(blocking=False) is False, "kazoo sees it taken")
    check(ours.release(4) == ZOK, "ours releases")
    check(zk.get_children(path) == [], "nothing left")


def main():
    global passed
    hosts = os.environ.get("NP_TEST_ZK")
    build = os.environ.get("NP_BUILD")
    if not hosts or not build:
        print("SKIP: NP_TEST_ZK and NP_BUILD are needed", file=sys.stderr)
        print("0 passed, 0 failed, 1 skipped")
        return 0
    base = "/lock-kazoo-%d" % os.getpid()
    zk = KazooClient(hosts=hosts, timeout=10)
    zk.start(timeout=WAIT)
    ours = Ours(build)
    try:
        for t in (t_we_hold_kazoo_waits, t_kazoo_holds_we_wait, t_mixed_order,
                  t_fresh_lock_against_kazoo):
            print("- %s" % t.__name__, file=sys.stderr)
            try:
                t(zk, ours, base)
                passed += 1
            except AssertionError:
                pass
            except Exception:
                traceback.print_exc()
                failed_one()
    finally:
        rc = ours.close()
        if rc != 0:
            print("  FAIL: helper exited with %s" % rc, file=sys.stderr)
            failed_one()
        zk.delete(base, recursive=True)
        zk.stop()
        zk.close()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


def failed_one():
    global failed
    failed += 1


if __name__ == "__main__":
    sys.exit(main())
