"""Teacher and student architectures by name: the built-in ones, TorchRec's own
models, and yours.

A teacher is the TorchRec ``EmbeddingBagCollection`` the project shards, quantizes and
checkpoints (``teacher.model.TeacherModel``), and a *tower* on top of it: everything
that turns the pooled embeddings and the dense features into per-task logits. The tower
is what ``teacher.arch`` names::

    from recdistill.teacher.registry import register_teacher
    from recdistill.teacher.outputs import TeacherOutputs

    @register_teacher("my_tower")
    def build(spec, cfg, n_sparse):          # FeatureSpec, TeacherConfig, int
        return MyTower(...)                  # an nn.Module

    # MyTower.forward(emb [B, n_sparse * cfg.embedding_dim], dense [B, len(spec.dense)])
    #     -> TeacherOutputs(logits [B, len(spec.tasks)], features {name: [B, d]})

and the config says ``[teacher] arch = "my_tower"`` (its own settings in
``arch_params``). The module that registers it is a *plugin*: ``--plugin my_module``
imports it (from the working directory) in the job and, through the
``RECDISTILL_PLUGINS`` environment variable, in every process that builds a teacher
(Ray actors and tasks, Ray Train workers). :func:`check_tower` runs one forward on a
zero batch when a job starts, so a tower that breaks the contract fails with one line.

Students the same way (``register_student``, re-exported here so one plugin module
imports both decorators from one place); their registry lives in ``common.registry``,
which student/ reads without importing teacher/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from recdistill.common.registry import (PLUGINS_ENV, STUDENTS, Registry, dry_forward,
                                        is_rows, load_plugins, register_student, shape_of)
from recdistill.data.errors import ConfigError

# The shared names stay importable from here: plugins written against this module
# (``from recdistill.teacher.registry import register_student, register_teacher``) and
# jobs/common.py's ``load_plugins`` keep working.
__all__ = ["PLUGINS_ENV", "STUDENTS", "TEACHERS", "Registry", "check_tower", "dry_forward",
           "is_rows", "load_plugins", "register_student", "register_teacher", "shape_of"]

if TYPE_CHECKING:
    from recdistill.data.spec import FeatureSpec
    from recdistill.teacher.config import TeacherConfig

TEACHERS = Registry("teacher.arch", ("recdistill.teacher.model",
                                     "recdistill.teacher.torchrec_models"))


def register_teacher(name: str) -> Callable[[Any], Any]:
    """Decorator: ``builder(spec, cfg, n_sparse) -> nn.Module`` is ``teacher.arch =
    name`` (a tower: ``forward(emb, dense) -> TeacherOutputs``)."""
    return TEACHERS.register(name)


def check_tower(tower: nn.Module, spec: FeatureSpec, cfg: TeacherConfig,
                n_sparse: int) -> dict[str, int]:
    """One forward of ``tower`` on a zero batch of 2 rows; the width of each feature it
    returns. A tower that breaks the contract fails naming what it returned."""
    from recdistill.teacher.outputs import TeacherOutputs
    where = f"teacher.arch = {cfg.arch!r}"
    b, tasks, width = 2, len(spec.tasks), n_sparse * cfg.embedding_dim
    out = dry_forward(tower, (torch.zeros(b, width), torch.zeros(b, len(spec.dense))), where,
                      f"forward(emb [{b}, {width}], dense [{b}, {len(spec.dense)}])")
    if not isinstance(out, TeacherOutputs):
        raise ConfigError(f"{where}: forward must return TeacherOutputs(logits, features), "
                          f"returned {type(out).__name__}")
    if not (isinstance(out.logits, torch.Tensor) and tuple(out.logits.shape) == (b, tasks)):
        raise ConfigError(f"{where}: logits must be [B, {tasks}] (one column per task "
                          f"{list(spec.tasks)}), got {shape_of(out.logits)}")
    dims: dict[str, int] = {}
    for name, t in out.features.items():
        if not is_rows(t, b):
            raise ConfigError(f"{where}: feature {name!r} must be a float [B, d] tensor, "
                              f"got {shape_of(t)}")
        dims[name] = int(t.shape[1])
    return dims
