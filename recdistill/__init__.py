"""recdistill: distributed large-teacher knowledge distillation for recommender models.

Everything lives under this one name: ``recdistill.data``, ``recdistill.teacher``,
``recdistill.student``, ``recdistill.common`` (what teacher and student share),
``recdistill.cluster`` and ``recdistill.jobs`` (the command line is ``recdistill``, see
:mod:`recdistill.cli`).

An installed wheel holds those packages inside this directory. A source checkout keeps
them at the repository's top level (``cluster/``, ``teacher/`` ... beside this
directory); there the package's search path is extended by the checkout root, the
mechanism Python gives packages for this (``__path__``), so ``python -m jobs.distill``
and ``import recdistill.cluster`` both work from a checkout without installing anything.
There the bare names (``jobs``, ``data.spec``) are aliases of the ``recdistill.`` modules,
one module object per file (:mod:`recdistill._checkout`).
"""

from __future__ import annotations

import os

_here = os.path.dirname(os.path.abspath(__file__))
_root = os.path.dirname(_here)
if (not os.path.isdir(os.path.join(_here, "cluster"))
        and os.path.isfile(os.path.join(_root, "cluster", "__init__.py"))
        and os.path.isfile(os.path.join(_root, "pyproject.toml"))):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821
    from recdistill._checkout import install as _install_aliases

    _install_aliases()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("recdistill")
    except PackageNotFoundError:  # a checkout that was never installed
        return "0+checkout"


__version__ = _version()
