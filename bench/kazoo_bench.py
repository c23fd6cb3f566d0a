#!/usr/bin/python3
# kazoo_bench.py: the same pipelined gets and sets as bench/zk_bench.c, with
# kazoo's async API (get_async / set_async, keeping WINDOW in flight), so the
# two clients can be compared against the same server.
#
# usage: kazoo_bench.py HOSTS SERVER_PID [N [WINDOW]]
# Expects the N nodes /zk-bench/n000000... to exist (zk_bench creates them).
import os
import resource
import sys
import threading
import time

from kazoo.client import KazooClient


def server_cpu(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def own_cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_phase(zk, n, window, sets, pid):
    data = b"y" * 1024
    sem = threading.Semaphore(window)
    done = threading.Event()
    state = {"left": n, "errors": 0}
    lock = threading.Lock()

    def finished(res):
        try:
            res.get()
        except Exception:
            with lock:
                state["errors"] += 1
        sem.release()
        with lock:
            state["left"] -= 1
            if state["left"] == 0:
                done.set()

    s0, c0, t0 = server_cpu(pid), own_cpu(), time.monotonic()
    for i in range(n):
        sem.acquire()
        path = "/zk-bench/n%06d" % i
        if sets:
            r = zk.set_async(path, data)
        else:
            r = zk.get_async(path)
        r.rawlink(finished)
    done.wait()
    secs = max(time.monotonic() - t0, 0.001)
    scpu = server_cpu(pid) - s0
    ccpu = own_cpu() - c0
    print("kazoo  %-4s %6d ops in %6.2f s = %8.0f ops/s  server CPU %5.1f%%  "
          "client CPU %5.1f%%  errors %d" % (
              "set" if sets else "get", n, secs, n / secs, 100 * scpu / secs,
              100 * ccpu / secs, state["errors"]))


def main():
    if len(sys.argv) < 3:
        print("usage: kazoo_bench.py HOSTS SERVER_PID [N [WINDOW]]", file=sys.stderr)
        return 2
    hosts, pid = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    window = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    zk = KazooClient(hosts=hosts)
    zk.start(timeout=15)
    try:
        run_phase(zk, n, window, False, pid)
        run_phase(zk, n, window, True, pid)
    finally:
        zk.stop()
        zk.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
