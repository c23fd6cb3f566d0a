#!/usr/bin/python3
"""test_webapp_accept.py: our web app's choice of format, held against
webob's own code (the library upstream's web app negotiates with).

For a fixed set of Accept headers and a seeded pseudo-random corpus of
well-formed, odd and broken ones, two requests go to the server:
/label-list, where upstream offers text/html, text/plain and
application/json (JSON wins, or else text; nothing acceptable was a 500
upstream and is a 406 here), and a missing path, where webob's error page
offers text/html and application/json (else plain text). The answers must
be what webob's Accept.acceptable_offers() picks.

Our side is the test_webapp binary in helper mode (NP_WEBAPP_HELPER=1: it
prints its port and serves until stdin closes). webob comes from Debian's
python3-webob (1.8.6, installed by scripts/install-deps.sh) or, at
development time, from a local mirror of its git repository (release
1.8.9, upstream's version); the answers agree with both. Without either
the test fails: a skip here once hid the loss of its 1,534 checks on a
fresh machine.

Env: NP_BUILD (build dir with tests/test_webapp); NP_WEBOB_GIT (a webob
git directory, default /work/.mirror/Pylons+webob/repo).
"""
import http.client
import os
import random
import subprocess
import sys
import tempfile

WEBOB_TAG = '1.8.9'
PAGE_OFFERS = ['text/html', 'text/plain', 'application/json']
ERROR_OFFERS = ['text/html', 'application/json']


def load_webob():
    """create_accept_header from webob, or None."""
    try:
        from webob.acceptparse import create_accept_header
        return create_accept_header
    except ImportError:
        pass
    git = os.environ.get('NP_WEBOB_GIT', '/work/.mirror/Pylons+webob/repo')
    if not os.path.isdir(git):
        return None
    try:
        src = subprocess.run(
            ['git', '--git-dir', git, 'show',
             WEBOB_TAG + ':src/webob/acceptparse.py'],
            check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    # acceptparse needs two trivial helpers from the rest of webob.
    root = tempfile.mkdtemp(prefix='np-webob-')
    pkg = os.path.join(root, 'webob')
    os.mkdir(pkg)
    files = {
        '__init__.py': b'',
        'acceptparse.py': src,
        'headers.py': b'def _trans_name(name):\n    return name\n',
        'util.py': b'def header_docstring(*a, **k):\n    return ""\n',
    }
    for name, data in files.items():
        with open(os.path.join(pkg, name), 'wb') as f:
            f.write(data)
    sys.path.insert(0, root)
    from webob.acceptparse import create_accept_header
    return create_accept_header


FIXED = [
    None, '', ' ', ',', 'application/json', 'APPLICATION/Json',
    'text/plain', 'text/html', '*/*', 'application/*', 'text/*', '*/json',
    'image/png', 'text/html,application/xhtml+xml,application/xml;q=0.9,'
    '*/*;q=0.8', 'application/json;q=0', 'application/json;q=0.001',
    'application/json;charset=utf-8', 'text/html;q=0, */*',
    'text/html;q=0, text/plain;q=0, */*', ',application/json',
    ', application/json', ',, application/json', 'application/json,',
    'application/json, ', 'application/json ;q=0.5 , text/plain;q=0.4',
    'application/json;q=0.5;ext="a, \\"b\\"", text/plain;q=0.4',
    'application/json;q=1.0001', 'application/json;q=.5', 'text/html;level',
    'text/plain;q=0.5;q=0.9', 'text/plain;a=b;q=0.5, application/json;q=0.4',
    'text/*;a=b, application/json;q=0.9', '\tapplication/json',
    'application/json\t,text/plain',
]

TYPES = ['text/html', 'text/plain', 'application/json', '*/*', 'text/*',
         'application/*', 'image/png', '*/json', 'TEXT/PLAIN',
         'Application/JSON', 'a/b', 'text', '*', 'application/json+x']
PARAMS = [';q=0.5', ';q=0', ';q=1', ';level=1', ' ; q=0.7', ';x="a, b"',
          ';q=0.25;ext', ';q=0.9;e=v', ';charset=utf-8', ';Q=0.3',
          ';q=0.123', ';q=.5', ';q=1.5', ';q=0.0001', ';e="\\""']
BITS = [',', ' ', '\t', ';', 'q=', 'Q=', '0', '1', '.', '5', '0.5', '1.0',
        '"', '\\', 'level=1', 'x', '=', '"a,b"', ';q=0', ';ext=v', ', ',
        ' ,', '\xe9', '/', 'q']


def corpus(n, seed=20240917):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        if rnd.random() < 0.6:
            parts = []
            for _ in range(rnd.randint(1, 4)):
                p = rnd.choice(TYPES)
                for _ in range(rnd.randint(0, 3)):
                    p += rnd.choice(PARAMS)
                parts.append(p)
            h = rnd.choice([',', ', ', ' , ', ',,', ' ,']).join(parts)
            if rnd.random() < 0.15:
                h = rnd.choice([',', ', ']) + h
            if rnd.random() < 0.15:
                h += rnd.choice([',', ', '])
        else:
            h = ''.join(rnd.choice(BITS + TYPES)
                        for _ in range(rnd.randint(1, 8)))
        out.append(h)
    return out


def webob_pick(create, header, offers):
    found = create(header).acceptable_offers(offers)
    return found[0][0] if found else None


def ours(port, path, header):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    headers = {} if header is None else {'Accept': header}
    conn.request('GET', path, headers=headers)
    resp = conn.getresponse()
    resp.read()
    ctype = resp.getheader('Content-Type', '')
    conn.close()
    return resp.status, ctype.split(';')[0]


def main():
    create = load_webob()
    if create is None:
        print('FAIL: webob not available (scripts/install-deps.sh '
              'installs python3-webob)', file=sys.stderr)
        print('0 passed, 1 failed')
        return 1
    binary = os.path.join(os.environ.get('NP_BUILD', 'build'), 'tests',
                          'test_webapp')
    env = dict(os.environ, NP_WEBAPP_HELPER='1')
    helper = subprocess.Popen([binary], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env)
    passed = failed = 0
    try:
        port = int(helper.stdout.readline())
        for header in FIXED + corpus(1500):
            # Servers drop the whitespace before a header's value (Python's
            # http.server under paste does, and so does MHD), not after.
            seen = None if header is None else header.lstrip(' \t')
            page = webob_pick(create, seen, PAGE_OFFERS)
            want_page = (406, 'text/plain') if page is None else \
                (200, 'application/json' if page == 'application/json'
                 else 'text/plain')
            # webob's error pages read a missing header as an empty one;
            # negotiation comes before the path (upstream failed there)
            err = webob_pick(create, '' if seen is None else seen,
                             ERROR_OFFERS)
            want_err = (406 if page is None else 404, err or 'text/plain')
            got_page = ours(port, '/label-list', header)
            got_err = ours(port, '/no-such-page', header)
            if got_page == want_page and got_err == want_err:
                passed += 1
            else:
                failed += 1
                print('FAIL Accept %r: page %r (webob %r), error %r '
                      '(webob %r)' % (header, got_page, want_page, got_err,
                                      want_err), file=sys.stderr)
    finally:
        helper.stdin.close()
        rc = helper.wait(timeout=60)
    if rc != 0:
        failed += 1
        print('FAIL helper exited with %d' % rc, file=sys.stderr)
    print('%d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
