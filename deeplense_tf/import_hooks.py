"""Run code around or right after a module's first import, without importing it early.

Two things must happen exactly when a heavy dependency loads, and not before (importing
the package stays light): TensorFlow's start-up banners are filtered from our commands'
terminals (`console`), and our Keras layers are registered the moment Keras is available
(`keras_objects`). A one-shot finder at the front of `sys.meta_path` finds the module with
the other finders and wraps its loader; it removes itself when the module is imported.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys


class _OneShotFinder(importlib.abc.MetaPathFinder):
    def __init__(self, module: str, around=None, after=None):
        self.module, self.around, self.after = module, around, after
        self._finding = False

    def find_spec(self, fullname, path=None, target=None):
        # `importlib.util.find_spec` also lands here (TFDS and etils ask whether TensorFlow
        # is installed without importing it): only an executed import uses up the hook.
        if fullname != self.module or self._finding:
            return None
        self._finding = True
        try:
            spec = None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None) if finder is not self else None
                spec = find(fullname, path, target) if find else None
                if spec is not None:
                    break
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _WrappedLoader(spec.loader, self)
        return spec


class _WrappedLoader(importlib.abc.Loader):
    def __init__(self, loader, finder: _OneShotFinder):
        self._loader, self._finder = loader, finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        finder = self._finder
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        with finder.around() if finder.around else contextlib.nullcontext():
            self._loader.exec_module(module)
        if finder.after:
            finder.after()  # the module is complete in sys.modules now

    def __getattr__(self, name):  # resources, is_package, ... of the real loader
        return getattr(self._loader, name)


def on_import(module: str, around=None, after=None) -> None:
    """Wraps `module`'s first import: `around()` is a context manager entered during it,
    `after()` runs once it has finished. Once per module and purpose; the module must not
    be imported yet."""
    for finder in sys.meta_path:
        if isinstance(finder, _OneShotFinder) and finder.module == module and \
                (finder.around, finder.after) == (around, after):
            return
    sys.meta_path.insert(0, _OneShotFinder(module, around, after))
