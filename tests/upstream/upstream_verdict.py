#!/usr/bin/python3
# upstream_verdict.py: dev-time helper for compare-validate.sh. Runs
# upstream Nodepool's own config validator (from the local mirror, never
# vendored into this repository) on each file given and prints
# "<file> <rc>" per file. Heavy optional imports (cloud SDKs, pbr version
# lookup) are replaced by mock modules so only the schema code runs.
# Needs Debian's python3-voluptuous and python3-yaml.
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import upstream_shim  # noqa: E402


def main():
    if not upstream_shim.install():
        sys.exit(77)
    logging.basicConfig(level=getattr(logging, os.environ.get("NP_LOGLEVEL", "CRITICAL")))
    from nodepool.cmd.config_validator import ConfigValidator
    for path in sys.argv[1:]:
        try:
            rc = ConfigValidator(path).validate()
        except Exception as e:  # the validator itself blew up
            rc = 'crash:%s' % type(e).__name__
        print('%s %s' % (path, rc))


if __name__ == '__main__':
    main()
