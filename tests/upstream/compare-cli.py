#!/usr/bin/python3
"""compare-cli.py: dev-time parity check of our `nodepool` CLI against
upstream's Python CLI (run from a local read-only checkout through
upstream_shim.py; never in CI, which has no such checkout).

Two chroots on one TLS ZooKeeper are filled identically with records written
by upstream's own ZooKeeper API (nodepool.zk.zookeeper). Then:
  - every read command is run by both CLIs on chroot A and the outputs are
    compared (ages masked, since the two runs are a moment apart);
  - every write command is run by ours on chroot A and by upstream's on
    chroot B, and the two znode trees are compared (JSON parsed, times
    masked).
Prints one line per check and "N passed, N failed".

usage: tests/upstream/compare-cli.sh [BUILD_DIR]   (starts its own ZooKeeper)
env:   NP_TEST_ZK_TLS, NP_TEST_ZK_CA, NP_TEST_ZK_CERT, NP_TEST_ZK_KEY, NP_BUILD
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import upstream_shim  # noqa: E402

if not upstream_shim.install():
    print("0 passed, 0 failed")
    sys.exit(0)

from kazoo.recipe.lock import Lock  # noqa: E402
from nodepool.zk import ZooKeeperClient  # noqa: E402
from nodepool.zk import zookeeper as npzk  # noqa: E402

TOP = os.path.abspath(os.path.join(HERE, '..', '..'))
OURS = os.path.join(os.environ.get('NP_BUILD', os.path.join(TOP, 'build')),
                    'nodepool')
UPSTREAM_CLI = os.path.join(TOP, 'bench', 'upstream-nodepool.py')
HOSTS = os.environ['NP_TEST_ZK_TLS']
CA = os.environ['NP_TEST_ZK_CA']
CERT = os.environ['NP_TEST_ZK_CERT']
KEY = os.environ['NP_TEST_ZK_KEY']

passed = failed = 0
WORK = tempfile.mkdtemp(prefix='np-compare-')
AGE = re.compile(r'\b\d+:\d\d:\d\d:\d\d\b')


def result(ok, what, detail=''):
    global passed, failed
    if ok:
        passed += 1
        print('ok   %s' % what)
    else:
        failed += 1
        print('FAIL %s\n%s' % (what, detail))


def write_config(name, chroot):
    host, port = HOSTS.rsplit(':', 1)
    path = os.path.join(WORK, name + '.yaml')
    with open(path, 'w') as f:
        f.write(f"""zookeeper-servers:
  - host: {host}
    port: {port}
    chroot: {chroot}
zookeeper-tls:
  ca: {CA}
  cert: {CERT}
  key: {KEY}
labels:
  - name: small
  - name: large
diskimages:
  - name: ubuntu
  - name: centos
providers:
  - name: static-a
    driver: static
    pools:
      - name: main
        nodes:
          - name: host-a.example.org
            labels: [small]
  - name: static-b
    driver: static
    pools:
      - name: main
        nodes:
          - name: host-b.example.org
            labels: [large]
""")
    return path


def populate(chroot):
    client = ZooKeeperClient(HOSTS + chroot, tls_cert=CERT, tls_key=KEY,
                             tls_ca=CA)
    client.connect()
    zk = npzk.ZooKeeper(client, enable_cache=False)
    t0 = 1726600000.123456
    for i, (state, prov, labels) in enumerate([
            ('ready', 'static-a', ['small']),
            ('in-use', 'static-a', ['small', 'extra']),
            ('hold', 'static-b', ['large']),
            ('building', 'static-b', ['large']),
            ('used', 'static-a', ['small']),
            ('ready', 'static-b', ['large'])]):
        n = npzk.Node()
        n.state = state
        n.provider = prov
        n.pool = 'main'
        n.type = labels
        n.external_id = 'srv-%d' % i
        n.hostname = 'np%010d' % i
        n.public_ipv4 = '203.0.113.%d' % (i + 1)
        n.private_ipv4 = '10.0.0.%d' % (i + 1)
        n.public_ipv6 = '2001:db8::%d' % (i + 1) if i % 2 else None
        n.interface_ip = n.public_ipv4
        n.az = 'nova'
        n.launcher = 'host-PoolWorker.%s-main-abc' % prov
        n.allocated_to = '100-0000000001' if i == 0 else None
        n.hold_job = 'tenant project job ref' if state == 'hold' else None
        n.comment = 'held for debugging' if state == 'hold' else None
        n.user_data = {'zuul_system': 'abc'} if state == 'in-use' else None
        n.driver_data = {'slot': 1} if i == 5 else None
        if i == 5:
            n.connection_port = {'name': 'x', 'token': 'secret'}
        zk.storeNode(n)
        # state_time is set by the setter to now; pin it for stable output
        n.state_time = t0 + i
        n.created_time = t0
        zk.storeNode(n)
    for prio, labels, state in [('100', ['small'], 'requested'),
                                ('200', ['small', 'large'], 'pending'),
                                ('300', ['large'], 'failed')]:
        r = npzk.NodeRequest()
        r.state = state
        r.node_types = labels
        r.requestor = 'zuul-scheduler'
        r.declined_by = ['launcher-x'] if state == 'failed' else []
        r.event_id = 'ev-' + prio
        r.relative_priority = int(prio) // 100
        zk.storeNodeRequest(r, priority=prio)
    builds = {}
    for image in ('ubuntu', 'centos'):
        for j, st in enumerate(('ready', 'ready', 'building')):
            b = npzk.ImageBuild(image)
            b.state = st
            b.builder = 'nb01.example.org'
            b.builder_id = str(uuid.UUID(int=j + 1))
            b.formats = ['qcow2', 'raw']
            b.username = 'zuul'
            b.python_path = 'auto'
            bid = zk.storeBuild(image, b)
            builds.setdefault(image, []).append(bid)
            if st != 'ready':
                continue
            for prov in ('static-a', 'static-b'):
                u = npzk.ImageUpload(bid, prov, image)
                u.state = 'ready'
                u.external_id = 'img-%s-%d' % (prov, j)
                u.external_name = '%s-%d' % (image, j)
                u.format = 'qcow2'
                u.username = 'zuul'
                u.python_path = 'auto'
                zk.storeImageUpload(image, bid, prov, u)
    # a legacy 10-digit build id as NP 2019 wrote them
    lb = npzk.ImageBuild('centos')
    lb.state = 'ready'
    lb.formats = ['qcow2']
    client.client.ensure_path('/nodepool/images/centos/builds/0000000007')
    zk.storeBuild('centos', lb, build_id='0000000007')
    zk.setImagePaused('centos', True)
    zk.submitBuildRequest('ubuntu')
    return client, zk, builds


def run(cli, config, *args):
    cmd = ([OURS] if cli == 'ours' else [UPSTREAM_CLI]) + ['-c', config] + \
        list(args)
    env = dict(os.environ)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       input='y\n', timeout=60)
    return p.returncode, p.stdout


def masked(text):
    return AGE.sub('AGE', text)


def dump_tree(client, root='/nodepool'):
    out = {}
    kz = client.client

    def walk(path):
        data, st = kz.get(path)
        kids = kz.get_children(path)
        if 'lock' in path.split('/'):
            return
        if data:
            try:
                d = json.loads(data)
                if isinstance(d, dict):
                    for k in ('state_time', 'created_time'):
                        if k in d:
                            d[k] = 'T'
                out[path] = d
            except ValueError:
                out[path] = data.decode('utf8', 'replace')
        else:
            out[path] = None
        for k in kids:
            walk(path + '/' + k)
    if kz.exists(root):
        walk(root)
    return out


def main():
    base = '/cmp-%d' % os.getpid()
    ca, za, builds_a = populate(base + '-a')
    cb, zb, builds_b = populate(base + '-b')
    cfg_a = write_config('a', base + '-a')
    cfg_b = write_config('b', base + '-b')

    # a node locked by someone else shows "locked"
    lk = Lock(ca.client, '/nodepool/nodes/0000000001/lock')
    lk.acquire()

    for args in (['list'], ['list', '--detail'], ['image-list'],
                 ['dib-image-list'], ['image-status'], ['request-list'],
                 ['info', 'static-a'], ['info', 'static-b'],
                 ['delete', '9999999999'], ['hold', '9999999999'],
                 ['dib-image-delete', 'ubuntu-nosuchbuild'],
                 ['image-build', 'nosuchimage'],
                 ['image-delete', '--provider', 'static-a', '--image',
                  'ubuntu', '--build-id', 'x', '--upload-id', '1']):
        rc1, o1 = run('upstream', cfg_a, *args)
        rc2, o2 = run('ours', cfg_a, *args)
        same = masked(o1) == masked(o2) and rc1 == rc2
        result(same, 'read: nodepool %s' % ' '.join(args),
               'upstream rc=%d:\n%s\nours rc=%d:\n%s' % (rc1, o1, rc2, o2))

    # empty tables (nothing in ZooKeeper at all)
    cfg_e = write_config('e', base + '-empty')
    for args in (['list'], ['list', '--detail'], ['image-list'],
                 ['dib-image-list'], ['image-status'], ['request-list'],
                 ['info', 'static-a']):
        rc1, o1 = run('upstream', cfg_e, *args)
        rc2, o2 = run('ours', cfg_e, *args)
        result(o1 == o2 and rc1 == rc2, 'empty: nodepool %s' % ' '.join(args),
               'upstream rc=%d:\n%s\nours rc=%d:\n%s' % (rc1, o1, rc2, o2))

    # export: same JSON
    ea, eb = os.path.join(WORK, 'ea.json'), os.path.join(WORK, 'eb.json')
    run('upstream', cfg_a, 'export-image-data', ea)
    run('ours', cfg_a, 'export-image-data', eb)
    try:
        ja, jb = json.load(open(ea)), json.load(open(eb))
        result(ja == jb, 'export-image-data: same JSON',
               'upstream keys %s\nours keys %s' % (sorted(ja), sorted(jb)))
    except (OSError, ValueError) as e:
        result(False, 'export-image-data: same JSON', str(e))
    lk.release()

    ub = builds_a['ubuntu'][0]
    writes = [
        ['hold', '0000000000'],
        ['delete', '0000000005'],
        ['image-pause', 'ubuntu'],
        ['image-unpause', 'centos'],
        ['image-build', 'centos'],
        ['dib-image-delete', 'ubuntu-%s' % ub],
        ['image-delete', '--provider', 'static-b', '--image', 'ubuntu',
         '--build-id', builds_a['ubuntu'][1], '--upload-id', '0000000001'],
        ['erase', 'static-a', '--force'],
    ]
    for args in writes:
        a_args = args
        b_args = [x.replace(builds_a['ubuntu'][0], builds_b['ubuntu'][0])
                   .replace(builds_a['ubuntu'][1], builds_b['ubuntu'][1])
                  for x in args]
        rc2, o2 = run('ours', cfg_a, *a_args)
        rc1, o1 = run('upstream', cfg_b, *b_args)
        ta = json.dumps(dump_tree(ca), sort_keys=True)
        tb = json.dumps(dump_tree(cb), sort_keys=True)
        for x, y in zip(builds_a['ubuntu'] + builds_a['centos'],
                        builds_b['ubuntu'] + builds_b['centos']):
            tb = tb.replace(y, x)
        da, db = json.loads(ta), json.loads(tb)
        ok = da == db and rc1 == rc2 and masked(o1) == masked(o2)
        detail = ''
        if not ok:
            diff = [k for k in sorted(set(da) | set(db))
                    if da.get(k) != db.get(k)]
            detail = 'rc %d/%d\nupstream out:\n%s\nours out:\n%s\n' % (
                rc1, rc2, o1, o2)
            for k in diff[:10]:
                detail += '  %s\n    upstream: %s\n    ours:     %s\n' % (
                    k, db.get(k), da.get(k))
        result(ok, 'write: nodepool %s' % ' '.join(args), detail)

    for c in (ca, cb):
        c.disconnect()
    print('%d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
