#!/usr/bin/python3
"""Run upstream's Python `nodepool` CLI from a local read-only checkout, for
side-by-side figures and output comparisons (never in CI: CI has no upstream
checkout). Needs the Debian packages bench/install-upstream-deps.sh installs;
SDKs that upstream imports but the CLI does not use are mocked by
tests/upstream/upstream_shim.py.

usage: bench/upstream-nodepool.py [nodepool args...]
env:   NP_UPSTREAM  the checkout (default /work/.mirror/src/gndrmnn+nodepool)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', 'tests', 'upstream'))
import upstream_shim  # noqa: E402

if not upstream_shim.install():
    sys.exit(77)

from nodepool.cmd import nodepoolcmd  # noqa: E402

sys.argv[0] = 'nodepool'
sys.exit(nodepoolcmd.main())
