#!/usr/bin/python3
"""test-beside-python.py: dev-time only (CI has no upstream checkout).
Our nodepool-launcher and upstream's Python nodepool-launcher (run from the
local read-only checkout by upstream_launcher.py) on one TLS ZooKeeper and
one chroot, each with its own fake provider:

    ours      fake-c       labels small, c-only
    upstream  fake-python  labels small, py-only      (small: min-ready 1)

The test plays Zuul (kazoo, as tests/integration/launcherlib.py): it
writes requests for small, c-only, py-only and mixes of them, one that no
single pool can serve, then locks, uses and returns every node. It checks
that every request is fulfilled exactly once (one fulfilment in the
request's own history, exactly its nodes allocated to it, no node in two
requests, all nodes of a request from one pool that has every label), that
the request nobody can serve is declined by both launchers' pools and
failed, that the components registry shows both launchers and their pools,
that `nodepool list` of both CLIs agree, that a returned node is deleted
(znode and instance) by the launcher of its own provider, and that after
both launchers stopped no lock is held and every znode left has its
instance and every instance its znode (no leak either way).

usage: tests/upstream/test-beside-python.py [BUILD_DIR]   (default build)
env:   NP_UPSTREAM (the checkout), NP_TEST_ZK_TLS and NP_TEST_ZK_CA/_CERT/_KEY
       (else a ZooKeeper is started through tests/harness), NP_TEST_KEEP=1
Prints "N passed, N failed"; "0 passed, 0 failed" without the checkout.
"""
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, '..', '..'))
if len(sys.argv) > 1:
    os.environ['NP_BUILD'] = os.path.abspath(sys.argv.pop(1))
sys.path.insert(0, os.path.join(TOP, 'tests', 'integration'))
import launcherlib  # noqa: E402
from launcherlib import Scenario, check, wait_for  # noqa: E402

UPSTREAM = os.environ.get('NP_UPSTREAM', '/work/.mirror/src/gndrmnn+nodepool')
UP_LAUNCHER = os.path.join(HERE, 'upstream_launcher.py')
UP_CLI = os.path.join(TOP, 'bench', 'upstream-nodepool.py')
OUR_CLI = os.path.join(launcherlib.BUILD, 'nodepool')
WAIT = 90.0         # upstream's pool worker and state machines poll each 1 s
AGE = re.compile(r'\b\d+:\d\d:\d\d:\d\d\b')

OURS = {'name': 'fake-c',
        'pools': [{'name': 'main', 'max': 20, 'labels': ['small', 'c-only']}]}
LABELS = [('small', 1), ('c-only', 0), ('py-only', 0)]

# Requests per round: the labels, and the provider(s) that may serve them.
ROUND = [(['small'], {'fake-c', 'fake-python'}),
         (['c-only'], {'fake-c'}),
         (['py-only'], {'fake-python'}),
         (['small', 'small'], {'fake-c', 'fake-python'}),
         (['py-only', 'small'], {'fake-python'}),
         (['small', 'c-only'], {'fake-c'})]
ROUNDS = 2


def zk_section(s):
    """The scenario's ZooKeeper and chroot, as nodepool.yaml says it."""
    host, port = s.zk.hosts.split(':')
    return f"""zookeeper-servers:
  - host: {host}
    port: {port}
    chroot: {s.chroot}
zookeeper-tls:
  ca: {s.zk.ca}
  cert: {s.zk.cert}
  key: {s.zk.key}
"""


def upstream_config(s):
    """Upstream's nodepool.yaml: same ZooKeeper and chroot, its own
    provider (upstream's fake driver needs `driver: fake`; `rate` is its
    API call rate limit, 1 s by default)."""
    text = zk_section(s) + f"""labels:
  - name: small
    min-ready: 1
  - name: py-only
    min-ready: 0
providers:
  - name: fake-python
    cloud: fake
    driver: fake
    region-name: fake-region
    rate: 0.0001
    cloud-images:
      - name: fake-image
        image-name: Fake Precise
    pools:
      - name: main
        max-servers: 20
        node-attributes: {{executor-zone: z1}}
        labels:
          - name: small
            cloud-image: fake-image
            min-ram: 1024
          - name: py-only
            cloud-image: fake-image
            min-ram: 1024
"""
    path = os.path.join(s.dir, 'upstream.yaml')
    with open(path, 'w') as f:
        f.write(text)
    return path


def cli_config(s):
    """A config for both CLIs: the ZooKeeper only."""
    path = os.path.join(s.dir, 'cli.yaml')
    with open(path, 'w') as f:
        f.write(zk_section(s) + 'labels: []\nproviders: []\n')
    return path


def start_upstream(s, cfg):
    """Upstream's launcher, one of the scenario's processes (stopped with
    SIGINT by s.stop or s.close, which expect exit 0)."""
    env = dict(os.environ)
    for k in ('STATSD_HOST', 'STATSD_PORT', 'STATSD_PREFIX',
              'OS_CLIENT_CONFIG_FILE'):
        env.pop(k, None)
    env['NP_UPSTREAM_CLOUD_DUMP'] = os.path.join(s.dir, 'upstream-cloud.json')
    log = open(os.path.join(s.dir, 'upstream-launcher.log'), 'w')
    p = subprocess.Popen(['/usr/bin/python3', UP_LAUNCHER, '-d', '-c', cfg,
                          '--no-webapp'], stdout=log, stderr=subprocess.STDOUT,
                         env=env)
    p.logfile = log.name
    s.procs.append(p)
    return p


def upstream_instances(s):
    """{instance id: metadata} of upstream's in-memory fake cloud (its
    last dump)."""
    try:
        with open(os.path.join(s.dir, 'upstream-cloud.json')) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    return {i['id']: i['metadata'] for i in d.get('fake-python', [])}


def our_instances(s):
    return {k: v.get('metadata') for k, v in s.instance_records().items()}


def components(s, kind):
    out = []
    path = '/nodepool/components/' + kind
    if not s.kz.exists(path):
        return out
    for c in s.kz.get_children(path):
        try:
            out.append(json.loads(s.kz.get(path + '/' + c)[0]))
        except Exception:
            pass
    return out


class History:
    """Every version of a request znode seen by a kazoo data watch."""

    def __init__(self, kz, rid):
        self.seen = []
        kz.DataWatch('/nodepool/requests/' + rid, self._event)

    def _event(self, data, stat, *_):
        if data is None:
            return False
        try:
            d = json.loads(data)
        except ValueError:
            return
        self.seen.append((stat.version, d.get('state'),
                          list(d.get('nodes') or [])))


def cli_list(cli, cfg, *args):
    cmd = ([OUR_CLI] if cli == 'ours' else ['/usr/bin/python3', UP_CLI]) + \
        ['-c', cfg, 'list'] + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return p.returncode, AGE.sub('AGE', p.stdout)


def same_listing(cfg, *args):
    """Both CLIs' `nodepool list`, taken again (up to 5 times) while the
    launchers change the nodes between the two runs."""
    for _ in range(5):
        a = cli_list('upstream', cfg, *args)
        b = cli_list('ours', cfg, *args)
        if a == b:
            return True, a[1]
    return False, 'upstream rc=%d:\n%s\nours rc=%d:\n%s' % (a + b)


def nodes_by_request(s):
    out = {}
    for nid, n in s.nodes().items():
        if n.get('allocated_to'):
            out.setdefault(n['allocated_to'], []).append(nid)
    return out


def main_test(zk):
    s = Scenario(zk, 'beside')
    try:
        our_cfg = s.write_config([OURS], LABELS)
        ours = s.start(our_cfg)
        up = start_upstream(s, upstream_config(s))
        cfg = cli_config(s)

        def pools_up():
            names = sorted(c.get('provider_name') for c in components(s, 'pool')
                           if c.get('state') == 'running')
            return names == ['fake-c', 'fake-python']
        check(wait_for(pools_up, WAIT, 'both pools registered'),
              'components: a running pool of each launcher')

        # Ours away for a while: upstream serves `small` alone, then ours
        # starts beside upstream's allocated nodes (its start-up cleanup
        # must leave them alone).
        s.stop(ours)
        reqs = {}
        hist = {}
        for _ in range(2):
            rid = s.request(['small'])
            reqs[rid] = (['small'], {'fake-python'})
            hist[rid] = History(s.kz, rid)
        for rid in list(reqs):
            r = s.wait_request(rid, timeout=WAIT)
            check(r and r['state'] == 'fulfilled',
                  'request %s [small] fulfilled by upstream alone' % rid)
        ours = s.start(our_cfg)
        check(wait_for(pools_up, WAIT, 'both pools registered'),
              'components: a running pool of each launcher after our restart')
        check(wait_for(lambda: [c.get('state') for c in
                                components(s, 'launcher')] == ['running'] * 2,
                       WAIT, 'both launchers running'),
              'components: two running launchers (%s)'
              % components(s, 'launcher'))
        pool_ids = {c['provider_name']: c['id']
                    for c in components(s, 'pool')}

        for _ in range(ROUNDS):
            for labels, may in ROUND:
                rid = s.request(labels)
                reqs[rid] = (labels, may)
                hist[rid] = History(s.kz, rid)
        bad = s.request(['py-only', 'c-only'])
        hist[bad] = History(s.kz, bad)

        done = {}
        for rid in reqs:
            r = s.wait_request(rid, timeout=WAIT)
            done[rid] = r
            check(r and r['state'] == 'fulfilled',
                  'request %s %s fulfilled' % (rid, reqs[rid][0]))
        r = s.wait_request(bad, timeout=WAIT)
        check(r and r['state'] == 'failed',
              'request %s [py-only, c-only] failed' % bad)
        if r:
            check(sorted(r['declined_by']) == sorted(pool_ids.values()),
                  'failed request declined by both pools (%s)'
                  % r['declined_by'])

        # Exactly once: one pool, its nodes, nobody else's.
        alloc = nodes_by_request(s)
        seen_nodes = {}
        served = {'fake-c': 0, 'fake-python': 0}
        for rid, r in done.items():
            if not r or r['state'] != 'fulfilled':
                continue
            labels, may = reqs[rid]
            nodes = [s.get_node(n) for n in r['nodes']]
            ok = len(r['nodes']) == len(labels) and all(nodes)
            check(ok, '%s: one node per label' % rid)
            if not ok:
                continue
            provs = set(n['provider'] for n in nodes)
            check(len(provs) == 1 and provs <= may,
                  '%s %s: served by one allowed provider (%s)'
                  % (rid, labels, provs))
            prov = provs.pop()
            served[prov] += 1
            check([n['type'][0] for n in nodes] == labels,
                  '%s: node types in request order' % rid)
            check(all(n['allocated_to'] == rid and n['state'] == 'ready' and
                      '-PoolWorker.%s-main-' % prov in n['launcher']
                      for n in nodes),
                  '%s: nodes ready, allocated to it, by %s' % (rid, prov))
            check(sorted(alloc.get(rid, [])) == sorted(r['nodes']),
                  '%s: no other node allocated to it' % rid)
            for n in r['nodes']:
                check(n not in seen_nodes, 'node %s in %s and %s'
                      % (n, seen_nodes.get(n), rid))
                seen_nodes[n] = rid
            h = hist[rid].seen
            ful = [i for i, e in enumerate(h) if e[1] == 'fulfilled']
            check(len(ful) == 1 and ful[0] == len(h) - 1 and
                  h[ful[0]][2] == r['nodes'],
                  '%s: fulfilled once, never written after (%s)' % (rid, h))
        print('requests served: ours %d, upstream %d'
              % (served['fake-c'], served['fake-python']))

        # Both CLIs list the same nodes.
        ok, detail = same_listing(cfg)
        check(ok, '`nodepool list` of both CLIs agree\n%s' % detail)
        ok, detail = same_listing(cfg, '--detail')
        check(ok, '`nodepool list --detail` of both CLIs agree\n%s' % detail)

        # Zuul uses and returns every node; each provider's launcher
        # deletes its own (the instance can only leave its own cloud).
        owner = {}
        for rid, r in done.items():
            if r and r['state'] == 'fulfilled':
                for nid in r['nodes']:
                    n = s.get_node(nid)
                    if n:
                        owner[nid] = (n['provider'], n['external_id'])
                s.use_and_return(rid, r)
        s.kz.delete('/nodepool/requests/' + bad)
        gone = wait_for(lambda: all(not s.kz.exists('/nodepool/nodes/' + n)
                                    for n in owner), WAIT, 'used nodes deleted')
        check(gone, 'every used node deleted')

        def instances_gone():
            ui, oi = upstream_instances(s), our_instances(s)
            if ui is None:
                return False
            return all(ext not in (oi if p == 'fake-c' else ui)
                       for p, ext in owner.values())
        check(wait_for(instances_gone, WAIT, 'instances deleted'),
              'every used node\'s instance deleted from its own cloud')
        ok, detail = same_listing(cfg)
        check(ok, '`nodepool list` agree after the returns\n%s' % detail)

        # min-ready: a ready small node again (whoever made it).
        check(wait_for(lambda: any(n['state'] == 'ready' and
                                   n['type'] == ['small'] and
                                   not n.get('allocated_to')
                                   for n in s.nodes().values()),
                       WAIT, 'min-ready small'), 'min-ready small node')

        # Stop both; let whatever they were building land first.
        wait_for(lambda: all(n['state'] in ('ready',)
                             for n in s.nodes().values()), WAIT,
                 'no node building or deleting')
        s.stop(ours)
        s.stop(up)
        check(components(s, 'launcher') == [] and components(s, 'pool') == [],
              'components unregistered after both stopped')
        held = []
        for nid in s.kz.get_children('/nodepool/nodes'):
            lp = '/nodepool/nodes/%s/lock' % nid
            if s.kz.exists(lp) and s.kz.get_children(lp):
                held.append(nid)
        check(held == [], 'no node lock held after stop (%s)' % held)
        rl = '/nodepool/requests-lock'
        if s.kz.exists(rl):
            held = [r for r in s.kz.get_children(rl)
                    if s.kz.get_children(rl + '/' + r)]
            check(held == [], 'no request lock held after stop (%s)' % held)
        znodes = {}
        for nid, n in s.nodes().items():
            znodes.setdefault(n['provider'], set()).add(n['external_id'])
        clouds = {'fake-c': set(our_instances(s)),
                  'fake-python': set(upstream_instances(s) or {})}
        for prov in clouds:
            check(znodes.get(prov, set()) == clouds[prov],
                  '%s: znodes and instances match after stop (znodes %s, '
                  'instances %s)' % (prov, sorted(znodes.get(prov, ())),
                                     sorted(clouds[prov])))
    finally:
        s.close()


def main():
    if not os.path.isdir(os.path.join(UPSTREAM, 'nodepool')):
        print('upstream nodepool checkout not found at %s: skipped' % UPSTREAM)
        print('0 passed, 0 failed')
        return 0
    return launcherlib.run([main_test])


if __name__ == '__main__':
    sys.exit(main())
