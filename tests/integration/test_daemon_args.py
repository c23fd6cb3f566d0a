#!/usr/bin/python3
# test_daemon_args.py: nodepool-launcher's and nodepool-builder's command
# lines against upstream's. The expected text comes from Python's own
# argparse given upstream's parser definitions (nodepool/cmd/__init__.py,
# launcher.py, builder.py, less --repl), so --help, a bad option, a missing
# value and stray arguments read exactly as an operator used to upstream
# expects, with argparse's exit codes. And a configuration without
# zookeeper-tls: refused at start (exit 1) with upstream's message naming
# the file. No ZooKeeper needed: every case ends before the daemon starts.
#
# env: NP_BUILD (default build).
import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launcherlib as L  # noqa: E402
from launcherlib import check  # noqa: E402


def upstream_parser(prog, description, pidfile, secure_help, extra):
    p = argparse.ArgumentParser(
        prog=prog, description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('-l', dest='logconfig', help='path to log config file')
    p.add_argument('--version', action='version', version='unused',
                   help='show nodepool version')
    p.add_argument('-p', dest='pidfile', help='path to pid file',
                   default=pidfile)
    p.add_argument('-d', dest='debug', action='store_true',
                   help='do not run as a daemon with debug logging')
    p.add_argument('-f', dest='foreground', action='store_true',
                   help='do not run as a daemon')
    p.add_argument('-c', dest='config', default='/etc/nodepool/nodepool.yaml',
                   help='path to config file')
    p.add_argument('-s', dest='secure', help=secure_help)
    extra(p)
    return p


def launcher_extra(p):
    p.add_argument('--no-webapp', action='store_true')


def builder_extra(p):
    p.add_argument('--build-workers', dest='build_workers', default=1,
                   help='number of build workers', type=int)
    p.add_argument('--upload-workers', dest='upload_workers', default=4,
                   help='number of upload workers', type=int)


def upstream(parser, args):
    """(exit code, stdout, stderr) of upstream's parser on ARGS."""
    out, err = io.StringIO(), io.StringIO()
    rc = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            parser.parse_args(args)
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def ours(binary, args):
    p = subprocess.run([binary] + args, capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def main():
    # argparse wraps at the terminal's width; upstream's daemons run
    # without one (80 columns).
    os.environ["COLUMNS"] = "80"
    build = os.environ.get("NP_BUILD", "build")
    daemons = [
        (os.path.join(build, "nodepool-launcher"),
         upstream_parser("nodepool-launcher", "Node pool.",
                         "/var/run/nodepool/nodepool.pid",
                         "path to secure file", launcher_extra)),
        (os.path.join(build, "nodepool-builder"),
         upstream_parser("nodepool-builder", "NodePool Image Builder.",
                         "/var/run/nodepool/nodepool-builder.pid",
                         "path to secure config file", builder_extra)),
    ]
    cases = [["--help"], ["-h"], ["--bogus"], ["-x"], ["stray"],
             ["--bogus", "stray", "-y"], ["-c"],
             ["-s"], ["-f", "-p"]]
    for binary, parser in daemons:
        name = os.path.basename(binary)
        for args in cases:
            got = ours(binary, args)
            want = upstream(parser, args)
            check(got == want, "%s %s: got %r, upstream %r"
                  % (name, " ".join(args), got, want))
    with tempfile.TemporaryDirectory(prefix="np-args-") as tmp:
        notls = os.path.join(tmp, "notls.yaml")
        with open(notls, "w") as f:
            f.write("zookeeper-servers:\n  - host: 127.0.0.1\n    port: 1\n"
                    "images-dir: %s\nlabels: []\nproviders: []\n" % tmp)
        for binary, _ in daemons:
            rc, out, err = ours(binary, ["-f", "-c", notls])
            check(rc == 1 and notls + ": A TLS ZooKeeper connection is "
                  "required; please supply the zookeeper-tls config values."
                  in out + err, "%s without zookeeper-tls: %r"
                  % (os.path.basename(binary), (rc, out, err)))
    rc, out, err = ours(daemons[0][0], ["--version"])
    check(rc == 0 and out.startswith("Nodepool version: ") and not err,
          "launcher --version: %r" % ((rc, out, err),))
    print("%d passed, %d failed" % (L.PASSED, L.FAILED))
    return 1 if L.FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
