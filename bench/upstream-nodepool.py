#!/usr/bin/python3
"""Run upstream's Python `nodepool` CLI from a local read-only checkout, for
side-by-side figures and output comparisons (never in CI: CI has no upstream
checkout). Needs Debian's python3-kazoo, -voluptuous, -prettytable, -statsd,
-paramiko, -pbr, -openstacksdk, -daemon, -extras, -webob, -paste, -psutil
(bench/install-upstream-deps.sh installs them).

usage: bench/upstream-nodepool.py [nodepool args...]
env:   NODEPOOL_UPSTREAM  the checkout (default /work/.mirror/src/gndrmnn+nodepool)
"""
import os
import sys

src = os.environ.get('NODEPOOL_UPSTREAM', '/work/.mirror/src/gndrmnn+nodepool')
if not os.path.isdir(os.path.join(src, 'nodepool')):
    sys.stderr.write('upstream nodepool checkout not found at %s\n' % src)
    sys.exit(77)
sys.path.insert(0, src)

# The checkout is an archive without git metadata, so pbr cannot compute a
# version; give it a fixed one.
import pbr.version  # noqa: E402


class _FixedVersion:
    def __init__(self, *args):
        pass

    def release_string(self):
        return '10.0.0'

    def version_string(self):
        return '10.0.0'

    def semantic_version(self):
        return self


pbr.version.VersionInfo = _FixedVersion

from nodepool.cmd import nodepoolcmd  # noqa: E402

sys.argv[0] = 'nodepool'
sys.exit(nodepoolcmd.main())
