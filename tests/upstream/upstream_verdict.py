#!/usr/bin/python3
# upstream_verdict.py: dev-time helper for compare-validate.sh. Runs
# upstream Nodepool's own config validator (from the local mirror, never
# vendored into this repository) on each file given and prints
# "<file> <rc>" per file. Heavy optional imports (cloud SDKs, pbr version
# lookup) are replaced by mock modules so only the schema code runs.
# Needs Debian's python3-voluptuous and python3-yaml.
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import types
from unittest import mock

UPSTREAM = os.environ.get('NP_UPSTREAM',
                          '/work/.mirror/src/gndrmnn+nodepool')


class _MockFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last-resort finder: any module that is not installed becomes a
    MagicMock, so `import boto3` or `from openstack.config import loader`
    succeed without the SDK."""

    def find_spec(self, name, path, target=None):
        top = name.split('.')[0]
        if top == 'nodepool':
            return None
        # Submodules of real packages (six.moves and friends) are theirs.
        if top in sys.modules and not isinstance(sys.modules[top],
                                                 mock.MagicMock):
            return None
        # Only imports made by upstream's own code are mocked: a library's
        # "try: import simplejson" must keep failing normally.
        if not self._from_upstream():
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    @staticmethod
    def _from_upstream():
        frame = sys._getframe(2)
        while frame:
            fn = frame.f_code.co_filename
            if not fn.startswith('<frozen'):
                return fn.startswith(UPSTREAM) or \
                    isinstance(sys.modules.get(
                        frame.f_globals.get('__name__', '')), mock.MagicMock)
            frame = frame.f_back
        return False

    def create_module(self, spec):
        m = mock.MagicMock(name=spec.name)
        m.__path__ = []
        m.__spec__ = spec
        return m

    def exec_module(self, module):
        pass


def main():
    sys.path.insert(0, UPSTREAM)
    # pbr wants a git checkout or sdist to compute a version.
    fake_version = types.ModuleType('nodepool.version')
    fake_version.version_info = mock.MagicMock()
    sys.modules['nodepool.version'] = fake_version
    sys.meta_path.append(_MockFinder())
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
