#!/usr/bin/python3
"""upstream_launcher.py: dev-time only. Runs upstream's Python
`nodepool-launcher` from a local read-only checkout (through
upstream_shim.py; never in CI, which has no such checkout), for tests that
put it beside ours on one ZooKeeper (test-beside-python.py).

Upstream's fake driver is an in-memory OpenStack cloud living inside the
launcher process, so two things are added around it, without touching
upstream's code:
  - the `fake` cloud is defined for openstacksdk (a clouds.yaml written to
    a temporary file, unless OS_CLIENT_CONFIG_FILE already names one);
  - with NP_UPSTREAM_CLOUD_DUMP=PATH, the servers of every fake provider
    are written to PATH as JSON ({provider: [{id, name, status,
    metadata}]}) every 0.2 s (written aside and renamed), so a test can
    see the instances come and go, as it sees our fake cloud's state-dir.

usage: tests/upstream/upstream_launcher.py [nodepool-launcher args...]
env:   NP_UPSTREAM (the checkout), NP_UPSTREAM_CLOUD_DUMP
Exit 77 when the checkout is absent.
"""
import atexit
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import upstream_shim  # noqa: E402

CLOUDS = """clouds:
  fake:
    auth:
      username: fake
      password: fake
      project_id: fake
      auth_url: fake
"""

# provider name -> the FakeOpenStackCloud its adapter talks to
_clouds = {}


def _define_cloud():
    if os.environ.get('OS_CLIENT_CONFIG_FILE'):
        return
    fd, path = tempfile.mkstemp(prefix='np-upstream-clouds.', suffix='.yaml')
    with os.fdopen(fd, 'w') as f:
        f.write(CLOUDS)
    os.environ['OS_CLIENT_CONFIG_FILE'] = path
    atexit.register(os.unlink, path)


def _record_clouds():
    from nodepool.driver.fake import adapter
    orig = adapter.FakeAdapter.__init__

    def init(self, provider_config):
        orig(self, provider_config)
        _clouds[provider_config.name] = self._getClient()
    adapter.FakeAdapter.__init__ = init


def _dump_loop(path):
    while True:
        out = {}
        for name, cloud in list(_clouds.items()):
            out[name] = [{'id': s.id, 'name': s.name, 'status': s.status,
                          'metadata': s.metadata}
                         for s in list(cloud._server_list)]
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(out, f)
        os.rename(tmp, path)
        time.sleep(0.2)


def main():
    if not upstream_shim.install():
        return 77
    _define_cloud()
    _record_clouds()
    dump = os.environ.get('NP_UPSTREAM_CLOUD_DUMP')
    if dump:
        threading.Thread(target=_dump_loop, args=(dump,),
                         daemon=True).start()
    from nodepool.cmd import launcher
    sys.argv[0] = 'nodepool-launcher'
    return launcher.main()


if __name__ == '__main__':
    sys.exit(main())
