# upstream_shim.py: dev-time only. Makes upstream Nodepool's Python code
# (a local read-only checkout, never vendored into this repository) importable
# with only Debian's packages installed: optional SDK imports made by
# upstream's own modules (boto3, azure, ibm, google, kubernetes, ...) become
# MagicMock modules, and pbr's version lookup (which needs git metadata the
# checkout lacks) is replaced by a fixed version. Used by compare-validate.sh
# (through upstream_verdict.py) and by bench/upstream-nodepool.py.
import importlib.abc
import importlib.machinery
import os
import sys
import types
from unittest import mock

UPSTREAM = os.environ.get('NP_UPSTREAM',
                          '/work/.mirror/src/gndrmnn+nodepool')


class _MockFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last-resort finder: a module that is not installed and is imported
    by upstream's code becomes a MagicMock."""

    def find_spec(self, name, path, target=None):
        top = name.split('.')[0]
        if top == 'nodepool':
            return None
        # Submodules of real packages (six.moves and friends) are theirs,
        # except in a namespace package (google.*, when some Debian
        # package installed google.protobuf but not google.auth).
        real = sys.modules.get(top)
        if real is not None and not isinstance(real, mock.MagicMock) and \
                getattr(real, '__file__', None) is not None:
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


class _FixedVersion:
    def __init__(self, *args):
        pass

    def release_string(self):
        return '10.0.0'

    def version_string(self):
        return '10.0.0'

    def semantic_version(self):
        return self


def install():
    """Put the checkout on sys.path and install the shims. Returns False
    (after a message) when the checkout is absent."""
    if not os.path.isdir(os.path.join(UPSTREAM, 'nodepool')):
        sys.stderr.write('upstream nodepool checkout not found at %s\n'
                         % UPSTREAM)
        return False
    sys.path.insert(0, UPSTREAM)
    fake_version = types.ModuleType('nodepool.version')
    fake_version.version_info = _FixedVersion()
    fake_version.get_version_string = lambda: '10.0.0'
    sys.modules['nodepool.version'] = fake_version
    sys.meta_path.append(_MockFinder())
    return True
