"""One module object per file in a source checkout.

A checkout keeps ``data/``, ``teacher/`` ... at its top level, where Python also finds
them under their bare names (``python -m jobs.distill`` runs from there). Imported by
both names, one file would become two modules: two ``TEACHERS`` registries, two
``CheckpointError`` classes that do not catch each other. So a bare name is an alias:

- each top-level package's ``__init__`` imported as ``data`` calls :func:`become`,
  which puts ``recdistill.data`` in its place in ``sys.modules``;
- :class:`AliasFinder`, first on ``sys.meta_path``, answers ``data.spec`` (any
  submodule of an aliased package) with the ``recdistill.data.spec`` module object,
  and gives ``runpy`` that module's code, so ``python -m teacher.engine`` still runs.

Only a checkout installs this (``recdistill/__init__.py``); an installed wheel has no
bare names to alias.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType

PREFIX = "recdistill."
# The checkout's top-level packages, each ``recdistill.<name>``.
PACKAGES = ("data", "teacher", "student", "cluster", "jobs", "common")


def become(name: str) -> None:
    """Make bare package ``name`` (its ``__init__`` running) the module object of
    ``recdistill.<name>``.

    The import system hands back whatever ``sys.modules[name]`` holds once the
    ``__init__`` returns, so ``import data`` gives ``recdistill.data`` itself.

    Args:
        name: the top-level package being imported, e.g. ``"data"``.

    Raises:
        ImportError: ``recdistill.<name>`` is another file than the one running (an
            installed recdistill ahead of this checkout on ``sys.path``).
    """
    bare = sys.modules[name]
    real = importlib.import_module(PREFIX + name)
    here, there = getattr(bare, "__file__", None), getattr(real, "__file__", None)
    if here is None or there is None or os.path.realpath(here) != os.path.realpath(there):
        raise ImportError(f"{name!r} ({here}) is not the package {PREFIX}{name} resolves "
                          f"to ({there}); import {PREFIX}{name} instead", name=name)
    sys.modules[name] = real


class _AliasLoader(importlib.abc.Loader):
    """Loads ``data.x`` as the ``recdistill.data.x`` module object."""

    def __init__(self, real: importlib.machinery.ModuleSpec) -> None:
        """Args:
            real: the spec of ``recdistill.<name>`` the alias stands for.
        """
        self.real = real
        self._real_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        """The real module, imported (or found already imported) under its own name."""
        module = importlib.import_module(self.real.name)
        # module_from_spec stamps the alias spec on the module it is given; kept so
        # exec_module can put the real one back.
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the real import ran it); restore the real ``__spec__``."""
        if self._real_spec is not None:
            module.__spec__ = self._real_spec

    # runpy (``python -m teacher.engine``) runs a module's code as __main__ through these.
    def get_code(self, fullname: str) -> CodeType | None:
        """The real module's code object."""
        loader = self.real.loader
        return loader.get_code(self.real.name) if hasattr(loader, "get_code") else None

    def get_source(self, fullname: str) -> str | None:
        """The real module's source."""
        loader = self.real.loader
        return loader.get_source(self.real.name) if hasattr(loader, "get_source") else None

    def is_package(self, fullname: str) -> bool:
        """Whether the real module is a package."""
        return self.real.submodule_search_locations is not None

    def get_filename(self, fullname: str) -> str | None:
        """The real module's file."""
        return self.real.origin


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``<package>.<sub>`` of an aliased top-level package as an alias of
    ``recdistill.<package>.<sub>``."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        """An alias spec for a submodule of an aliased package, else None.

        Only a package whose bare name already is ``recdistill.<name>`` (see
        :func:`become`) has its submodules aliased: an unrelated package of the same
        name elsewhere on ``sys.path`` is left alone.
        """
        head, dot, _ = fullname.partition(".")
        if not dot or head not in PACKAGES:
            return None
        bare, real_pkg = sys.modules.get(head), sys.modules.get(PREFIX + head)
        if bare is None or bare is not real_pkg:
            return None
        real = importlib.util.find_spec(PREFIX + fullname)
        if real is None:
            return None
        spec = importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(real), origin=real.origin,
            is_package=real.submodule_search_locations is not None)
        if real.submodule_search_locations is not None:
            spec.submodule_search_locations = list(real.submodule_search_locations)
        return spec


def install() -> None:
    """Put one :class:`AliasFinder` first on ``sys.meta_path`` (before the path finder,
    which would otherwise load ``data.spec`` from ``data``'s ``__path__`` a second
    time)."""
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())
