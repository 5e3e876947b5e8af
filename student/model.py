"""Small student ranking models.

A student has its own (narrow) embedding tables over a subset of the features, an MLP,
and a linear head per task. It names its hidden tensors like the teacher does, and
carries the trainable pieces distillation needs beside the serving model: linear
adapters for feature distillation, ExFM auxiliary heads, uncertainty log-variances.
``export_state_dict`` drops those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree
from torch import nn
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recdistill.common.registry import (STUDENTS, dry_forward, is_rows, register_student,
                                        shape_of)
from recdistill.data.errors import ConfigError
from recdistill.data.spec import FeatureSpec
from recdistill.student.config import StudentConfig

_TRAINING_ONLY = ("adapters.", "aux_heads.", "task_log_vars", "teacher_adapter.")


@dataclass
class StudentOutputs:
    """What a student forward returns.

    Attributes:
        logits: [B, T] serving logits, one column per task.
        features: name -> [B, d] hidden tensors (``pooled_embeddings``, ``last_hidden``).
        adapted: teacher feature name -> [B, d_teacher] adapter output of the paired
            student feature (empty without adapters).
        aux_logits: [B, T] logits of the auxiliary heads, or None.
        task_log_vars: [T] learned log-variances (uncertainty weighting), or None.
        tasks: the T task names, column order (task weights are keyed by name).
        teacher_mapped: [B, T] the teacher adapter's map of the teacher logits passed to
            ``forward``, or None.
    """

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    adapted: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_logits: torch.Tensor | None = None
    task_log_vars: torch.Tensor | None = None
    tasks: tuple[str, ...] = ()
    teacher_mapped: torch.Tensor | None = None


# Registered so DistributedDataParallel can find the output tensors (see teacher/outputs.py).
pytree.register_dataclass(StudentOutputs)


class TeacherLogitAdapter(nn.Module):
    """Per-task affine map of teacher logits, ``a_k * t_k + b_k`` (ExFM's student-side
    adapter, Meta 2025): starts as the identity; trained on the true labels.

    Shapes: ``forward(teacher_logits [B, T])`` -> [B, T].
    """

    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n_tasks))
        self.bias = nn.Parameter(torch.zeros(n_tasks))

    def forward(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        return teacher_logits * self.scale + self.bias


@register_student("mlp")
def _mlp(spec: FeatureSpec, cfg: StudentConfig, in_width: int) -> nn.Module:
    return MLP(in_width, list(cfg.hidden))


class CrossTower(nn.Module):
    """A small DCN-v2 student tower: TorchRec's low-rank cross network over the
    embeddings and dense features, then the MLP over ``hidden``."""

    def __init__(self, in_width: int, cfg: StudentConfig) -> None:
        super().__init__()
        layers = int(cfg.arch_params.get("cross_layers", 2))
        rank = int(cfg.arch_params.get("cross_rank", 16))
        if layers < 1 or rank < 1:
            raise ConfigError(f"groups.{cfg.name}.arch_params: cross_layers and "
                              f"cross_rank must be >= 1, got {layers} and {rank}")
        self.cross = LowRankCrossNet(in_width, layers, rank)
        self.mlp = MLP(in_width, list(cfg.hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.cross(x))


@register_student("dcn")
def _dcn(spec: FeatureSpec, cfg: StudentConfig, in_width: int) -> nn.Module:
    return CrossTower(in_width, cfg)


def build_student_tower(spec: FeatureSpec, cfg: StudentConfig,
                        in_width: int) -> tuple[nn.Module, int]:
    """``cfg.arch``'s tower and the width of its output (one forward on a zero batch,
    which also checks a plugin's tower keeps the contract)."""
    where = f"groups.{cfg.name}.arch"
    tower = STUDENTS.builder(cfg.arch, where)(spec, cfg, in_width)
    out = dry_forward(tower, (torch.zeros(2, in_width),), f"{where} = {cfg.arch!r}",
                      f"forward(x [2, {in_width}])")
    if not is_rows(out, 2):
        raise ConfigError(f"{where} = {cfg.arch!r}: forward(x [B, {in_width}]) must return "
                          f"last_hidden, a float [B, d] tensor; got {shape_of(out)}")
    return tower, int(out.shape[1])


def student_features(spec: FeatureSpec, cfg: StudentConfig) -> tuple[str, ...]:
    """The sparse features a student reads; privileged ones are refused."""
    allowed = spec.student_view().sparse_names
    if not cfg.features:
        return allowed
    bad = [f for f in cfg.features if f not in allowed]
    if bad:
        raise ConfigError(f"groups.{cfg.name}: features {bad} are privileged or unknown; "
                          f"a student may read {list(allowed)}")
    return tuple(f for f in allowed if f in cfg.features)


class StudentModel(nn.Module):
    """An embedding + tower (default: MLP) multi-task student.

    Args:
        spec: the dataset schema (privileged features are never read).
        cfg: the student's config.
        teacher_dims: teacher feature name -> width, for the adapters of
            ``cfg.adapters``; needed only when the config asks for adapters.
        uncertainty: learn per-task log-variances (Kendall et al. 2018).
        table_device: where the embedding tables are built; ``meta`` for a model that
            TorchRec shards (``student/sharding.py`` materialises the shards).

    Shapes: ``forward(dense [B, D_in], sparse KJT)`` -> :class:`StudentOutputs` with
    ``logits`` [B, T], ``pooled_embeddings`` [B, F * E], ``last_hidden`` [B, hidden[-1]].
    """

    def __init__(self, spec: FeatureSpec, cfg: StudentConfig,
                 teacher_dims: dict[str, int] | None = None,
                 uncertainty: bool = False,
                 table_device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.tasks = spec.tasks
        self.feature_names = student_features(spec, cfg)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            tables: dict[str, EmbeddingBagConfig] = {}
            for name in self.feature_names:
                f = spec.feature(name)
                if f.table in tables:
                    tables[f.table].feature_names.append(name)
                else:
                    tables[f.table] = EmbeddingBagConfig(
                        name=f"s_{f.table}", embedding_dim=cfg.embedding_dim,
                        num_embeddings=f.cardinality, feature_names=[name],
                        pooling=PoolingType.MEAN)
            self.ebc = EmbeddingBagCollection(tables=list(tables.values()),
                                              device=torch.device(table_device))
            width = len(self.feature_names) * cfg.embedding_dim + len(spec.dense)
            # `mlp` keeps its name for the default tower (the checkpoints' keys)
            self.mlp, hidden = build_student_tower(spec, cfg, width)
            self.heads = nn.Linear(hidden, len(spec.tasks))
            self.aux_heads = nn.Linear(hidden, len(spec.tasks)) \
                if cfg.aux_heads else None
            dims = {"pooled_embeddings": len(self.feature_names) * cfg.embedding_dim,
                    "last_hidden": hidden}
            self.adapter_pairs = dict(cfg.adapters)
            adapters = {}
            for s_name, t_name in self.adapter_pairs.items():
                if s_name not in dims:
                    raise ConfigError(f"groups.{cfg.name}.adapters.{s_name}: unknown "
                                      f"student feature; it has {list(dims)}")
                if teacher_dims is None or t_name not in teacher_dims:
                    raise ConfigError(f"groups.{cfg.name}.adapters.{s_name} = "
                                      f"{t_name!r}: the teacher produces "
                                      f"{sorted(teacher_dims or {})}")
                adapters[s_name] = nn.Linear(dims[s_name], teacher_dims[t_name])
            self.adapters = nn.ModuleDict(adapters)
            self.task_log_vars = nn.Parameter(torch.zeros(len(spec.tasks))) \
                if uncertainty else None
            self.teacher_adapter = TeacherLogitAdapter(len(spec.tasks)) \
                if cfg.teacher_adapter else None

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor,
                teacher_logits: torch.Tensor | None = None) -> StudentOutputs:
        """``teacher_logits`` [B, T]: mapped by the teacher adapter, if there is one
        (inside forward so DDP sees the adapter's parameters used)."""
        pooled = self.ebc(sparse)
        emb = torch.cat([pooled[n] for n in self.feature_names], dim=1)
        hidden = self.mlp(torch.cat([emb, dense], dim=1))
        features = {"pooled_embeddings": emb, "last_hidden": hidden}
        adapted = {self.adapter_pairs[s]: a(features[s]) for s, a in self.adapters.items()}
        return StudentOutputs(
            logits=self.heads(hidden), features=features, adapted=adapted,
            aux_logits=self.aux_heads(hidden) if self.aux_heads is not None else None,
            # an op on it inside forward: DDP (the sharded path wraps every student in
            # it) fails on a parameter handed out of forward as it is
            task_log_vars=self.task_log_vars.clone() if self.task_log_vars is not None
            else None, tasks=self.tasks,
            teacher_mapped=self.teacher_adapter(teacher_logits)
            if self.teacher_adapter is not None and teacher_logits is not None else None)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The serving model's weights: adapters, auxiliary heads and log-variances dropped."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith(_TRAINING_ONLY)}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
