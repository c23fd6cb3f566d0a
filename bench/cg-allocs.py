#!/usr/bin/python3
"""cg-allocs.py: allocation calls per request from a callgrind dump.

    bench/cg-allocs.py PREFIX.PID.N REQUESTS [TOP]

Counts the calls of malloc, calloc, realloc and free in a dump of
`CALLGRIND=PREFIX bench/launcher-bench.sh N` (the `calls=` lines), per
request, with the callers of each: the wrappers that always allocate
(xmalloc, xcalloc, xstrdup, xstrndup, xrealloc) and PLT stubs are
replaced by their own callers, so the names are the code that asked.
Callgrind keeps one level of callers only: a function that allocates
now and then (sbuf_reserve, json_object_set_new) is shown as itself.
Also prints the dump's total instructions per request."""
import collections
import re
import sys

WRAPPERS = {"xmalloc", "xcalloc", "xstrdup", "xstrndup", "xrealloc"}
TARGETS = ("malloc", "calloc", "realloc", "free")


def load(path):
    """(caller, callee) -> calls, and the dump's total cost."""
    names = {}
    calls = collections.Counter()
    total = 0
    fn = cfn = None
    pending = None

    def name(v):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", v)
        if not m:
            return v
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), v)

    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("summary:"):
                total = int(line.split()[1])
            elif line.startswith("fn="):
                fn = name(line[3:].strip())
            elif line.startswith("cfn="):
                cfn = name(line[4:].strip())
            elif line.startswith("calls="):
                pending = int(line[6:].split()[0])
            elif pending is not None and line[:1] in "0123456789+-*":
                calls[(fn, cfn)] += pending
                pending = None
    return calls, total


def callers_of(calls, target):
    by_callee = collections.defaultdict(list)
    for (a, b), n in calls.items():
        by_callee[b].append((a, n))

    def walk(f, seen):
        out = collections.Counter()
        for a, n in by_callee.get(f, []):
            if (a in WRAPPERS or a.startswith("0x")) and a not in seen:
                sub = walk(a, seen | {a})
                s = sum(sub.values()) or 1
                for k, v in sub.items():
                    out[k] += n * v / s
            else:
                out[a] += n
        return out

    return walk(target, frozenset())


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    calls, total = load(sys.argv[1])
    per = float(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 15
    print("instructions per request: %.1f thousand" % (total / per / 1000))
    allocs = 0.0
    for t in TARGETS:
        c = callers_of(calls, t)
        n = sum(c.values()) / per
        if t != "free":
            allocs += n
        print("%s: %.1f per request" % (t, n))
        for k, v in c.most_common(top):
            print("  %8.2f  %s" % (v / per, k))
    print("allocations (malloc, calloc, realloc) per request: %.1f" % allocs)


if __name__ == "__main__":
    main()
