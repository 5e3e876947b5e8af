"""Modules by name, and the plugins that register more: what teacher/ and student/ share.

A :class:`Registry` maps names to builders; ``teacher.registry`` keeps the teachers'
(``TEACHERS``), this module the students' towers (:data:`STUDENTS`), so student code
reaches its registry without importing teacher/. A plugin module registers its own
builders; :func:`load_plugins` imports it here and, through the ``RECDISTILL_PLUGINS``
environment variable, in every process that builds a model.

A student group's ``arch`` names its tower (``register_student``; default ``mlp``,
TorchRec's MLP over ``hidden``), which maps the student's pooled embeddings and dense
features side by side, [B, in_width], to its ``last_hidden`` [B, d]; the tables, the
heads, adapters and the serving export stay the project's.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

import torch
from torch import nn

from recdistill.data.errors import ConfigError

PLUGINS_ENV = "RECDISTILL_PLUGINS"  # comma-separated modules every process imports


class Registry:
    """Builders of one kind of module by name.

    ``builtin`` modules are imported (and so register theirs) before a name is looked
    up, then the plugins of ``RECDISTILL_PLUGINS``.
    """

    def __init__(self, key: str, builtin: tuple[str, ...]) -> None:
        """Args:
            key: the config key that names a builder (``teacher.arch``), for messages.
            builtin: modules that register the built-in builders when imported.
        """
        self.key, self.builtin = key, builtin
        self._builders: dict[str, Callable[..., nn.Module]] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: the builder (a function or a module class) is ``name``.

        Registering a name twice with another builder is an error; the same builder
        again (a module imported under a second name) is not.
        """
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
        """The builder registered as ``name``.

        Raises:
            ConfigError: no built-in module or plugin registers ``name``; the message
                starts with ``where`` (default: the registry's key).
        """
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
        """The registered names, sorted, the built-in modules' included."""
        for module in self.builtin:
            importlib.import_module(module)
        return sorted(self._builders)


# No built-in modules to import: student/model.py registers ``mlp`` and ``dcn`` when it
# is imported, and it is the only module that looks a student tower up.
STUDENTS = Registry("groups.<name>.arch", ())


def register_student(name: str) -> Callable[[Any], Any]:
    """Decorator: ``builder(spec, cfg, in_width) -> nn.Module`` is a student group's
    ``arch = name`` (its tower: ``forward(x [B, in_width]) -> last_hidden [B, d]``,
    ``x`` the pooled embeddings and the dense features side by side)."""
    return STUDENTS.register(name)


def load_plugins(modules: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Import each plugin module (default: those in ``RECDISTILL_PLUGINS``), the working
    directory first on the path, and add them to ``RECDISTILL_PLUGINS`` so processes
    started from here import them too.

    Returns:
        The modules now loaded, those of the environment first.

    Raises:
        ConfigError: a module cannot be imported.
    """
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
    """``tower(*inputs)`` without gradients, in eval mode: the start-up check of a
    registered tower.

    The tower's mode is restored after, so no batch-norm statistics move.

    Raises:
        ConfigError: any failure of the user's module, as ``{where}: {call} failed: ...``.
    """
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


def shape_of(t: Any) -> str:
    """What a contract error says was returned: a tensor's shape, or the type."""
    return f"a {tuple(t.shape)} tensor" if isinstance(t, torch.Tensor) else type(t).__name__
