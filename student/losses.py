"""Distillation losses: one pure function per loss, registered by name with its config.

Every loss has the signature ``(student: StudentOutputs, teacher: TeacherOutputs | None,
batch: Batch, cfg) -> scalar Tensor``. Labels are [B, T] with NaN where a task has no
label for a row (a student may learn a task it has no labels for from the teacher
alone). A binary task has one logit, so soft labels are sigmoid/BCE, not softmax/KL.
A student's objective is a weighted sum of such terms (``build_objective``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from recdistill.data.configs import from_mapping
from recdistill.data.errors import ConfigError
from recdistill.data.spec import Batch
from recdistill.student.config import LossTerm, StudentConfig
from recdistill.student.model import StudentOutputs
from recdistill.teacher.outputs import TeacherOutputs

LossFn = Callable[[StudentOutputs, "TeacherOutputs | None", Batch, Any], torch.Tensor]


@dataclass(frozen=True)
class RegisteredLoss:
    fn: LossFn
    config_cls: type
    needs_teacher: bool
    reads_features: bool = False  # a feature term: the KD guard weighs it on its own


LOSSES: dict[str, RegisteredLoss] = {}


def register_loss(name: str, config_cls: type, needs_teacher: bool = True,
                  reads_features: bool = False) -> Callable[[LossFn], LossFn]:
    def wrap(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        LOSSES[name] = RegisteredLoss(fn, config_cls, needs_teacher, reads_features)
        return fn
    return wrap


def _task_weights(weights: dict[str, float], student: StudentOutputs) -> torch.Tensor:
    """[T] weights from a task -> weight map (missing tasks weigh 1)."""
    device = student.logits.device
    if not weights:
        return torch.ones(student.logits.shape[1], device=device)
    tasks = student.tasks
    unknown = set(weights) - set(tasks)
    if unknown:
        raise ConfigError(f"task_weights: unknown tasks {sorted(unknown)}; tasks are "
                          f"{list(tasks)}")
    return torch.tensor([float(weights.get(t, 1.0)) for t in tasks], device=device)


def _per_task_hard(logits: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task mean BCE over labelled rows, [T], and a [T] mask of tasks with labels."""
    have = ~torch.isnan(labels)
    bce = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(labels),
                                             reduction="none")
    count = have.sum(dim=0)
    per_task = (bce * have).sum(dim=0) / count.clamp(min=1)
    return per_task, count > 0


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over labelled tasks of the per-task BCE over labelled rows (NaN = no label);
    zero (still connected to ``logits``) when nothing is labelled."""
    per_task, have = _per_task_hard(logits, labels)
    return per_task[have].mean() if bool(have.any()) else logits.sum() * 0.0


def _per_task_soft(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """Per-task T^2 * mean_b BCE(sigmoid(t/T), sigmoid(s/T)), [T]."""
    target = torch.sigmoid(teacher_logits.detach().float() / temperature)
    bce = F.binary_cross_entropy_with_logits(student_logits / temperature, target,
                                             reduction="none")
    return temperature ** 2 * bce.mean(dim=0)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    w = weights if mask is None else weights * mask
    return (values * w).sum() / w.sum().clamp(min=1e-12)


def _need_teacher(teacher: TeacherOutputs | None, loss: str) -> TeacherOutputs:
    if teacher is None:
        raise ValueError(f"loss {loss!r} needs teacher outputs for the batch")
    return teacher


@dataclass(frozen=True)
class HardLabel:
    """Config of ``hard_label``: per-task weights (default 1)."""

    task_weights: dict[str, float] = field(default_factory=dict)


@register_loss("hard_label", HardLabel, needs_teacher=False)
def hard_label(student: StudentOutputs, teacher: TeacherOutputs | None, batch: Batch,
               cfg: HardLabel) -> torch.Tensor:
    """Binary cross-entropy with the true labels (the no-KD baseline).

    L = sum_k w_k * mean_{b labelled} BCE(y_bk, sigmoid(s_bk)) / sum_{k labelled} w_k

    Args:
        student.logits: (B, T) serving logits.
        batch.labels: (B, T) 0/1 labels, NaN where missing.
    """
    per_task, have = _per_task_hard(student.logits, batch.labels)
    w = _task_weights(cfg.task_weights, student)
    return _weighted_mean(per_task, w, have)


@dataclass(frozen=True)
class PredictionKD:
    """Config of ``prediction_kd``: temperature T and per-task weights."""

    temperature: float = 1.0
    task_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"prediction_kd.temperature must be > 0, got {self.temperature}")


@register_loss("prediction_kd", PredictionKD)
def prediction_kd(student: StudentOutputs, teacher: TeacherOutputs | None, batch: Batch,
                  cfg: PredictionKD) -> torch.Tensor:
    """Soft-label distillation for binary tasks (Hinton et al. 2015, sigmoid form).

    L = T^2 * sum_k w_k * mean_b BCE(sigmoid(t_bk / T), sigmoid(s_bk / T)) / sum_k w_k

    The T^2 keeps gradient sizes comparable across temperatures. Combined with
    ``hard_label`` weighted (1 - a) and this weighted a, it is the DESIGN's
    ``(1-a)*BCE(y, s) + a*T^2*BCE(sigmoid(t/T), sigmoid(s/T))``.

    Args:
        student.logits: (B, T) student logits.
        teacher.logits: (B, T) teacher logits for the same rows, same task order.
    """
    t = _need_teacher(teacher, "prediction_kd")
    per_task = _per_task_soft(student.logits, t.logits, cfg.temperature)
    return _weighted_mean(per_task, _task_weights(cfg.task_weights, student))


@dataclass(frozen=True)
class LogitMSE:
    """Config of ``logit_mse``: per-task weights."""

    task_weights: dict[str, float] = field(default_factory=dict)


@register_loss("logit_mse", LogitMSE)
def logit_mse(student: StudentOutputs, teacher: TeacherOutputs | None, batch: Batch,
              cfg: LogitMSE) -> torch.Tensor:
    """Logit matching, as the booster-to-light-net hint of Rocket Launching (Zhou et al.
    AAAI 2018) and Ba & Caruana 2014.

    L = sum_k w_k * mean_b (s_bk - t_bk)^2 / sum_k w_k
    """
    t = _need_teacher(teacher, "logit_mse")
    per_task = ((student.logits - t.logits.detach().float()) ** 2).mean(dim=0)
    return _weighted_mean(per_task, _task_weights(cfg.task_weights, student))


@dataclass(frozen=True)
class FeatureKD:
    """Config of ``feature_kd``: distance and per-teacher-feature weights."""

    metric: str = "mse"
    feature_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in ("mse", "cosine"):
            raise ConfigError(f"feature_kd.metric: expected 'mse' or 'cosine', got "
                              f"{self.metric!r}")


@register_loss("feature_kd", FeatureKD, reads_features=True)
def feature_kd(student: StudentOutputs, teacher: TeacherOutputs | None, batch: Batch,
               cfg: FeatureKD) -> torch.Tensor:
    """Feature (hint) distillation through learned adapters (FitNets, Romero et al.
    ICLR 2015).

    For each adapted pair f: a_f = W_f h_f + b_f (student tensor through its adapter),
    mse:    L_f = mean_b,d (a_f - z_f)^2
    cosine: L_f = mean_b (1 - cos(a_f, z_f))
    L = sum_f w_f L_f / sum_f w_f, z_f the teacher's tensor (no gradient).

    Args:
        student.adapted: name -> (B, d_f) adapter outputs.
        teacher.features: name -> (B, d_f) teacher tensors.
    """
    t = _need_teacher(teacher, "feature_kd")
    if not student.adapted:
        raise ValueError("feature_kd needs a student with adapters")
    total, weight = None, 0.0
    for name, a in student.adapted.items():
        if name not in t.features:
            raise KeyError(f"feature_kd: teacher sent no feature {name!r}; it sent "
                           f"{sorted(t.features)}")
        z = t.features[name].detach().float()
        if cfg.metric == "mse":
            term = ((a - z) ** 2).mean()
        else:
            term = (1.0 - F.cosine_similarity(a, z, dim=1)).mean()
        w = float(cfg.feature_weights.get(name, 1.0))
        total = w * term if total is None else total + w * term
        weight += w
    assert total is not None
    return total / max(weight, 1e-12)


@dataclass(frozen=True)
class MultiTaskKD:
    """Config of ``multitask_kd``."""

    temperature: float = 1.0
    alpha: float = 0.5
    task_weights: dict[str, float] = field(default_factory=dict)
    uncertainty: bool = False

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"multitask_kd.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"multitask_kd.alpha must be in [0, 1], got {self.alpha}")


@register_loss("multitask_kd", MultiTaskKD)
def multitask_kd(student: StudentOutputs, teacher: TeacherOutputs | None, batch: Batch,
                 cfg: MultiTaskKD) -> torch.Tensor:
    """Per-task prediction distillation with fixed or learned task weights.

    For task k: L_k = (1-a) * H_k + a * T^2 * S_k where H_k is the BCE with true labels
    and S_k the soft-label BCE; a task with no labels in the batch learns from the
    teacher alone, L_k = T^2 * S_k.
    fixed:       L = sum_k w_k L_k / sum_k w_k
    uncertainty: L = sum_k exp(-u_k) L_k + u_k / 2, u_k = log sigma_k^2 learned
                 (Kendall, Gal & Cipolla, CVPR 2018).
    """
    t = _need_teacher(teacher, "multitask_kd")
    hard, have = _per_task_hard(student.logits, batch.labels)
    soft = _per_task_soft(student.logits, t.logits, cfg.temperature)
    per_task = torch.where(have, (1 - cfg.alpha) * hard + cfg.alpha * soft, soft)
    if cfg.uncertainty:
        if student.task_log_vars is None:
            raise ValueError("multitask_kd with uncertainty = true needs a student built "
                             "with uncertainty=True")
        u = student.task_log_vars
        return (torch.exp(-u) * per_task + 0.5 * u).sum()
    return _weighted_mean(per_task, _task_weights(cfg.task_weights, student))


@dataclass(frozen=True)
class AuxHeadKD:
    """Config of ``aux_head_kd``."""

    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"aux_head_kd.temperature must be > 0, got {self.temperature}")


@register_loss("aux_head_kd", AuxHeadKD)
def aux_head_kd(student: StudentOutputs, teacher: TeacherOutputs | None, batch: Batch,
                cfg: AuxHeadKD) -> torch.Tensor:
    """ExFM-style auxiliary-head distillation (Liang et al., "External Large Foundation
    Model", Meta 2025): the soft labels train a separate auxiliary head, so the serving
    head sees true labels only while the shared trunk learns from both.

    L = T^2 * mean_k mean_b BCE(sigmoid(t_bk / T), sigmoid(aux_bk / T))
    """
    t = _need_teacher(teacher, "aux_head_kd")
    if student.aux_logits is None:
        raise ValueError("aux_head_kd needs a student built with aux_heads = true")
    return _per_task_soft(student.aux_logits, t.logits, cfg.temperature).mean()


@dataclass
class Objective:
    """A student's weighted sum of registered losses, built once from its config."""

    terms: list[tuple[str, float, RegisteredLoss, Any]]
    tasks: tuple[str, ...]

    @property
    def needs_teacher(self) -> bool:
        return any(r.needs_teacher for _, w, r, _ in self.terms if w > 0)

    @property
    def uncertainty(self) -> bool:
        return any(getattr(c, "uncertainty", False) for _, _, _, c in self.terms)

    @property
    def feature_terms(self) -> tuple[str, ...]:
        """The names of its terms that read teacher features (weighted > 0)."""
        return tuple(dict.fromkeys(n for n, w, r, _ in self.terms
                                   if w > 0 and r.reads_features))

    def __call__(self, student: StudentOutputs, teacher: TeacherOutputs | None,
                 batch: Batch, kd_scale: float = 1.0,
                 off: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and each term's (unweighted) value; ``kd_scale`` multiplies the
        weight of every term that reads the teacher (staleness weighting); terms named
        in ``off`` (the KD guard's) are left out."""
        total: torch.Tensor | None = None
        parts: dict[str, float] = {}
        for name, weight, reg, cfg in self.terms:
            if name in off:
                continue
            value = reg.fn(student, teacher, batch, cfg)
            parts[name] = float(value.detach())
            if reg.needs_teacher:
                weight = weight * kd_scale
            total = weight * value if total is None else total + weight * value
        if total is None:  # every term off (a group of feature terms only): no step
            total = student.logits.sum() * 0.0
        return total, parts


def resolve_terms(cfg: StudentConfig) -> list[tuple[str, float, Any, Any]]:
    """A student's loss terms as ``(name, weight, registered loss, its config)``; errors
    name the term (``groups.<student>.losses[i]``). Needs no dataset."""
    terms = []
    for i, term in enumerate(cfg.losses):
        where = f"groups.{cfg.name}.losses[{i}]"
        if term.name not in LOSSES:
            raise ConfigError(f"{where}.name: unknown loss {term.name!r}; known: "
                              f"{sorted(LOSSES)}")
        reg = LOSSES[term.name]
        terms.append((term.name, term.weight, reg,
                      from_mapping(reg.config_cls, term.params, f"{where}.params")))
    return terms


def feature_terms(cfg: StudentConfig) -> tuple[str, ...]:
    """The loss terms of a student that read teacher features (the KD guard turns them
    off on their own); unknown names are left to :func:`resolve_terms` to refuse."""
    return tuple(dict.fromkeys(t.name for t in cfg.losses if t.weight > 0
                               and t.name in LOSSES and LOSSES[t.name].reads_features))


def build_objective(cfg: StudentConfig, tasks: tuple[str, ...], group_key: str = "",
                    readable: tuple[str, ...] | None = None) -> Objective:
    """Resolve a student's loss terms against the registry and the dataset's tasks;
    ``listwise_kd`` without a key of its own gets the dataset's ``group_key``, which
    must be among the sparse features the student reads (``readable``, if given)."""
    terms = resolve_terms(cfg)
    for i, (name, weight, reg, loss_cfg) in enumerate(terms):
        for key in ("task_weights",):
            unknown = set(getattr(loss_cfg, key, {}) or {}) - set(tasks)
            if unknown:
                raise ConfigError(f"groups.{cfg.name}.losses[{i}].params.{key}: unknown "
                                  f"tasks {sorted(unknown)}; tasks are {list(tasks)}")
        if name == "listwise_kd":
            loss_cfg = replace(loss_cfg, key=loss_cfg.key or group_key)
            where = f"groups.{cfg.name}.losses[{i}] (listwise_kd)"
            if not loss_cfg.key:
                raise ConfigError(f"{where}: the dataset has no group_key; name the "
                                  "feature whose value makes a list in params.key")
            if readable is not None and loss_cfg.key not in readable:
                raise ConfigError(f"{where}: the student does not read {loss_cfg.key!r}; "
                                  f"it reads {list(readable)}")
            terms[i] = (name, weight, reg, loss_cfg)
    return Objective(terms, tasks)


def make_term(name: str, weight: float = 1.0, **params: Any) -> LossTerm:
    """Shorthand for building a :class:`LossTerm` in code."""
    return LossTerm(name, weight, dict(params))


# Registers the losses over pairs and lists of a batch's rows (relation_kd, listwise_kd).
from recdistill.student import relational  # noqa: E402,F401
