#!/usr/bin/python3
"""test_webapp_dates.py: conditional GET as upstream's web app does it.

webob reads If-Modified-Since with email.utils.parsedate_tz (a zone-less
date counting as UTC) and answers 304 when the Last-Modified it sent is
not later. That reader is Python's standard library, so it is the oracle
here: a seeded corpus of dates in every form parsedate_tz knows (RFC 1123,
RFC 850, asctime, zone names and offsets, missing parts, stray commas and
garbage) around the server's own Last-Modified, each sent to our server
and its 200 or 304 compared with what webob would answer for the
Last-Modified in that very response. Dates webob itself fails on (a 500
upstream) are left out.

Our side is the test_webapp binary in helper mode (NP_WEBAPP_HELPER=1).
Env: NP_BUILD (build dir with tests/test_webapp).
"""
import datetime
import email.utils
import http.client
import os
import random
import subprocess
import sys
import time

FORMATS = [
    '%a, %d %b %Y %H:%M:%S GMT',
    '%A, %d-%b-%y %H:%M:%S GMT',
    '%a %b %e %H:%M:%S %Y',
    '%d %b %Y %H:%M:%S',
    '%d %B %Y %H:%M',
    '%a, %d %b %Y %H.%M.%S',
    '%a,%d %b %Y %H:%M:%S GMT',
    '%b %d %Y %H:%M:%S',
    '%d %b %y %H:%M:%S UT',
    '%a, %d %b %Y %H:%M:%S',
]
ZONES = ['+0100', '-0230', '+0000', '-0000', 'EST', 'PDT', 'UT', 'Z', 'XYZ',
         '+01:00', 'gmt', '+9999']
NOISE = [',', ' ', '  ', '-', ':', 'Mon', 'Monday,', 'foo', '12', '1994',
         'Dec', 'december', '08:49', '\t']


def webob_ims(value):
    """webob's request.if_modified_since as epoch seconds; None when it
    does not parse; 'error' when webob raises (a 500 upstream)."""
    if not value:
        return None
    t = email.utils.parsedate_tz(value)
    if t is None:
        return None
    if t[-1] is None:
        t = t[:9] + (0,)
    try:
        e = email.utils.mktime_tz(t)
        datetime.datetime.fromtimestamp(e, datetime.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return 'error'
    return e


def corpus(n, around, seed=20240917):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        r = rnd.random()
        if r < 0.6:
            t = around + rnd.randint(-5, 5)
        elif r < 0.8:
            t = around + rnd.randint(-10 ** 9, 10 ** 9)
        else:
            t = rnd.randint(0, 2 ** 33)
        s = time.strftime(rnd.choice(FORMATS), time.gmtime(t))
        if rnd.random() < 0.3:
            s += ' ' + rnd.choice(ZONES)
        if rnd.random() < 0.2:
            words = s.split()
            i = rnd.randrange(len(words) + 1)
            if rnd.random() < 0.5 and words:
                del words[min(i, len(words) - 1)]
            else:
                words.insert(i, rnd.choice(NOISE))
            s = ' '.join(words)
        if rnd.random() < 0.05:
            s = s.lower()
        out.append(s)
    return out


def ask(port, ims):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    conn.request('GET', '/label-list', headers={'If-Modified-Since': ims})
    resp = conn.getresponse()
    resp.read()
    lm = resp.getheader('Last-Modified')
    conn.close()
    return resp.status, lm


def main():
    binary = os.path.join(os.environ.get('NP_BUILD', 'build'), 'tests',
                          'test_webapp')
    env = dict(os.environ, NP_WEBAPP_HELPER='1')
    helper = subprocess.Popen([binary], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env)
    passed = failed = 0
    try:
        port = int(helper.stdout.readline())
        fixed = ['Fri, 31 Dec 9999 23:59:59 GMT', 'Fri Dec 31 23:59:59 2060',
                 'Friday, 31-Dec-60 23:59:59 GMT', 'yesterday', '', '  ',
                 'Mon, 01 Jan 2001 00:00:00 GMT', '31 Dec 2060',
                 'Fri, 31 Dec 2060 23:59:59:12 GMT', '0 Jan 2060 0:0',
                 'Sat, 00 Jan 2000 00:00:00 GMT', '31 Feb 2060 25:61:61']
        for ims in fixed + corpus(1500, int(time.time())):
            want_t = webob_ims(ims)
            if want_t == 'error':
                continue
            status, lm = ask(port, ims)
            lm_t = email.utils.mktime_tz(email.utils.parsedate_tz(lm))
            want = 304 if want_t is not None and lm_t <= want_t else 200
            if status == want:
                passed += 1
            else:
                failed += 1
                print('FAIL If-Modified-Since %r: %d, expected %d (webob '
                      'reads %r, Last-Modified %s)' % (ims, status, want,
                                                        want_t, lm),
                      file=sys.stderr)
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
