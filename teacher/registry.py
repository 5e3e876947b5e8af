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

Students the same way: a group's ``arch`` names its tower (``register_student``;
default ``mlp``, TorchRec's MLP over ``hidden``), which maps the student's pooled
embeddings and dense features side by side, [B, in_width], to its ``last_hidden``
[B, d]; the tables, the heads, adapters and the serving export stay the project's.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from recdistill.data.errors import ConfigError

if TYPE_CHECKING:
    from recdistill.data.spec import FeatureSpec
    from recdistill.teacher.config import TeacherConfig

PLUGINS_ENV = "RECDISTILL_PLUGINS"  # comma-separated modules every process imports


class Registry:
    """Builders of one kind of module by name; ``builtin`` modules are imported (and
    so register theirs) before a name is looked up, then the plugins of
    ``RECDISTILL_PLUGINS``."""

    def __init__(self, key: str, builtin: tuple[str, ...]) -> None:
        self.key, self.builtin = key, builtin
        self._builders: dict[str, Callable[..., nn.Module]] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: the builder (a function or a module class) is ``name``.
        Registering a name twice with another builder is an error."""
        def add(builder: Any) -> Any:
            old = self._builders.get(name)
            if old is not None and getattr(old, "__qualname__", None) != getattr(
                    builder, "__qualname__", None):
                raise ValueError(f"{self.key} {name!r} is already registered "
                                 f"({old.__module__}.{old.__qualname__})")
            self._builders[name] = builder
            return builder
        return add

    def builder(self, name: str, where: str = "") -> Callable[..., nn.Module]:
        if name not in self._builders:
            for module in self.builtin:
                importlib.import_module(module)
        if name not in self._builders and os.environ.get(PLUGINS_ENV):
            load_plugins()
        if name not in self._builders:
            raise ConfigError(f"{where or self.key}: unknown {name!r}; registered: "
                              f"{self.known()} (a plugin module registers more: "
                              "--plugin MODULE)")
        return self._builders[name]

    def known(self) -> list[str]:
        for module in self.builtin:
            importlib.import_module(module)
        return sorted(self._builders)


TEACHERS = Registry("teacher.arch", ("recdistill.teacher.model",
                                     "recdistill.teacher.torchrec_models"))
STUDENTS = Registry("groups.<name>.arch", ("recdistill.student.model",))


def register_teacher(name: str) -> Callable[[Any], Any]:
    """Decorator: ``builder(spec, cfg, n_sparse) -> nn.Module`` is ``teacher.arch =
    name`` (a tower: ``forward(emb, dense) -> TeacherOutputs``)."""
    return TEACHERS.register(name)


def register_student(name: str) -> Callable[[Any], Any]:
    """Decorator: ``builder(spec, cfg, in_width) -> nn.Module`` is a student group's
    ``arch = name`` (its tower: ``forward(x [B, in_width]) -> last_hidden [B, d]``,
    ``x`` the pooled embeddings and the dense features side by side)."""
    return STUDENTS.register(name)


def load_plugins(modules: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Import each plugin module (default: those in ``RECDISTILL_PLUGINS``), the working
    directory first on the path, and add them to ``RECDISTILL_PLUGINS`` so processes
    started from here import them too. Returns the modules now loaded."""
    env = [m for m in os.environ.get(PLUGINS_ENV, "").split(",") if m]
    wanted = list(env if modules is None else modules)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a console script's path lacks the working dir
    for module in wanted:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"--plugin {module}: cannot import it from {os.getcwd()} "
                              f"({e})") from None
    merged = list(dict.fromkeys([*env, *wanted]))
    if merged:
        os.environ[PLUGINS_ENV] = ",".join(merged)
    return merged


def dry_forward(tower: nn.Module, inputs: tuple[torch.Tensor, ...], where: str,
                call: str) -> Any:
    """``tower(*inputs)`` without gradients, in eval mode (its mode restored after, so
    no batch-norm statistics move): the start-up check of a registered tower. Any
    failure of the user's module is one ``ConfigError``: ``{where}: {call} failed: ...``."""
    was_training = tower.training
    tower.eval()
    try:
        with torch.no_grad():
            return tower(*inputs)
    except Exception as e:  # noqa: BLE001 - any failure of a user's module, one line
        raise ConfigError(f"{where}: {call} failed: {type(e).__name__}: {e}") from None
    finally:
        tower.train(was_training)


def is_rows(t: Any, b: int) -> bool:
    """Whether ``t`` is a float [b, d] tensor (a per-row feature)."""
    return isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[0] == b \
        and t.is_floating_point()


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


def shape_of(t: Any) -> str:
    """What a contract error says was returned: a tensor's shape, or the type."""
    return f"a {tuple(t.shape)} tensor" if isinstance(t, torch.Tensor) else type(t).__name__
