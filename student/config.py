"""Student configuration: model shape and the loss terms it trains on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recdistill.data.errors import ConfigError


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of a student's objective.

    Attributes:
        name: a registered loss (``student.losses.LOSSES``).
        weight: its weight in the sum.
        params: the loss's own config fields (temperature, task weights, ...), checked
            against that loss's config class when the objective is built.
    """

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"loss {self.name!r}: weight must be >= 0, got {self.weight}")


@dataclass(frozen=True)
class StudentConfig:
    """A student model and its objective.

    Attributes:
        name: the student (group) name.
        embedding_dim: width of its embedding tables (a multiple of 4).
        hidden: widths of its MLP; the last one is its ``last_hidden`` feature.
        arch: its tower over the embeddings and dense features (``mlp``: TorchRec's MLP
            over ``hidden``; ``dcn``: a low-rank cross network, then that MLP; or a name
            a plugin registered, ``common/registry.py``).
        arch_params: settings of the tower (``dcn``: ``cross_layers``, default 2, and
            ``cross_rank``, default 16).
        features: sparse features it reads; empty = every non-privileged feature.
        label_tasks: tasks whose true labels it sees; empty = all. Other tasks are
            learned from the teacher alone.
        losses: the objective, a weighted sum of registered losses.
        aux_heads: give the student an ExFM-style auxiliary head per task (trained by
            the ``aux_head_kd`` loss; serving uses the main heads).
        adapters: student feature -> teacher feature pairs for feature distillation; a
            linear adapter per pair maps the student tensor to the teacher's width.
        lr: Adam learning rate.
        weight_decay: Adam L2 decay.
        batch_size: examples per step.
        seed: initialisation seed.
        staleness_tau: weight the KD terms of a batch by ``exp(-staleness / tau)``, the
            staleness being how many training steps the teacher version that labelled
            the batch is behind the newest version the stream has seen (teacher
            refresh, ``teacher_group.refresh_every``); 0 = no weighting.
        teacher_adapter: an ExFM-style adapter on the student side: a per-task affine map
            ``a_k * t_k + b_k`` of the teacher logits, trained on the true labels, whose
            output (detached) replaces the teacher logits as the KD target, absorbing
            the shift between a stale teacher and fresh data. Dropped at export.
        sharding: how its embedding tables are held over the group's replicas:
            ``row_wise`` (a slice of every table's rows per replica), ``table_wise``
            (whole tables spread over the replicas), ``auto`` (TorchRec's planner
            decides) or ``none`` (plain tables under dense Adam, DDP all-reducing every
            table's full gradient).
        embedding_optimizer: the fused FBGEMM optimizer of its sharded tables
            (``rowwise_adagrad``, ``adagrad``, ``sgd``; FBGEMM's ``adam`` is GPU-only).
        embedding_lr: that optimizer's learning rate (the dense part keeps Adam at ``lr``).
    """

    name: str = "student"
    embedding_dim: int = 8
    hidden: tuple[int, ...] = (64, 32)
    arch: str = "mlp"
    arch_params: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = ()
    label_tasks: tuple[str, ...] = ()
    losses: tuple[LossTerm, ...] = (LossTerm("hard_label"),)
    aux_heads: bool = False
    adapters: dict[str, str] = field(default_factory=dict)
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    seed: int = 0
    staleness_tau: float = 0.0
    teacher_adapter: bool = False
    sharding: str = "row_wise"
    embedding_optimizer: str = "rowwise_adagrad"
    embedding_lr: float = 0.5

    def __post_init__(self) -> None:
        if self.embedding_dim < 4 or self.embedding_dim % 4:
            raise ConfigError(f"groups.{self.name}.embedding_dim must be a positive "
                              f"multiple of 4, got {self.embedding_dim}")
        if not self.hidden or any(w < 1 for w in self.hidden):
            raise ConfigError(f"groups.{self.name}.hidden must be positive widths, "
                              f"got {self.hidden}")
        if not self.losses:
            raise ConfigError(f"groups.{self.name}.losses must name at least one loss")
        if not self.lr > 0:
            raise ConfigError(f"groups.{self.name}.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"groups.{self.name}.batch_size must be >= 1")
        if self.staleness_tau < 0:
            raise ConfigError(f"groups.{self.name}.staleness_tau must be >= 0, got "
                              f"{self.staleness_tau}")
        shardings = ("none", "table_wise", "row_wise", "auto")
        if self.sharding not in shardings:
            raise ConfigError(f"groups.{self.name}.sharding must be one of {shardings}, "
                              f"got {self.sharding!r}")
        optimizers = ("rowwise_adagrad", "adagrad", "adam", "sgd")
        if self.embedding_optimizer not in optimizers:
            raise ConfigError(f"groups.{self.name}.embedding_optimizer must be one of "
                              f"{optimizers}, got {self.embedding_optimizer!r}")
        if self.embedding_lr < 0:
            raise ConfigError(f"groups.{self.name}.embedding_lr must be >= 0, got "
                              f"{self.embedding_lr}")
        if any(t.name == "aux_head_kd" for t in self.losses) and not self.aux_heads:
            raise ConfigError(f"groups.{self.name}.losses: aux_head_kd needs aux_heads = true")
