"""Distillation losses over the rows of a batch together, not one row at a time: the
teacher's similarities between examples (``relation_kd``) and its order within each
user's list (``listwise_kd``). Registered in ``student.losses``' registry like the
others, with the same signature."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from recdistill.data.spec import Batch
from recdistill.student.losses import (_need_teacher, _task_weights, _weighted_mean,
                                       register_loss)
from recdistill.student.model import StudentOutputs
from recdistill.teacher.outputs import TeacherOutputs


@dataclass(frozen=True)
class RelationKD:
    """Config of ``relation_kd``: which student and teacher tensors are compared."""

    student_feature: str = "last_hidden"
    teacher_feature: str = "last_hidden"


@register_loss("relation_kd", RelationKD, reads_features=True)
def relation_kd(student: StudentOutputs, teacher: TeacherOutputs | None, batch: Batch,
                cfg: RelationKD) -> torch.Tensor:
    """Similarity-preserving distillation (Tung & Mori, ICCV 2019, with cosine
    similarities): the student's pairwise similarities between the batch's examples
    match the teacher's. No adapter: the two tensors may differ in width, and no free
    projector can match for a student whose own features do not.

    G_s = n(h) n(h)^T, G_t = n(z) n(z)^T (n: each row scaled to unit L2 norm), [B, B];
    L = mean_ij (G_s - G_t)_ij^2.

    Args:
        student.features[cfg.student_feature]: (B, d_s).
        teacher.features[cfg.teacher_feature]: (B, d_t), a committee's every member's
            tensor side by side.
    """
    t = _need_teacher(teacher, "relation_kd")
    if cfg.teacher_feature not in t.features:
        raise KeyError(f"relation_kd: teacher sent no feature {cfg.teacher_feature!r}; "
                       f"it sent {sorted(t.features)}")
    if cfg.student_feature not in student.features:
        raise KeyError(f"relation_kd: the student has no feature {cfg.student_feature!r}; "
                       f"it has {sorted(student.features)}")
    h = F.normalize(student.features[cfg.student_feature].float(), dim=1)
    z = F.normalize(t.features[cfg.teacher_feature].detach().float(), dim=1)
    return ((h @ h.T - z @ z.T) ** 2).mean()


@dataclass(frozen=True)
class ListwiseKD:
    """Config of ``listwise_kd``: the sparse feature whose value makes a list (default,
    "": the dataset's ``group_key``) and per-task weights."""

    key: str = ""
    task_weights: dict[str, float] = field(default_factory=dict)


def group_ids(batch: Batch, key: str) -> torch.Tensor:
    """[B] each row's first id of sparse feature ``key`` (-1 where it has none)."""
    jt = batch.sparse[key]
    values, lengths = jt.values(), jt.lengths()
    if not len(values):
        return torch.full_like(lengths, -1, dtype=torch.long)
    first = jt.offsets()[:-1].clamp(max=len(values) - 1)
    return torch.where(lengths > 0, values[first].long(), torch.full_like(values[first], -1)
                       .long())


@register_loss("listwise_kd", ListwiseKD)
def listwise_kd(student: StudentOutputs, teacher: TeacherOutputs | None, batch: Batch,
                cfg: ListwiseKD) -> torch.Tensor:
    """Listwise distillation in the calibration-compatible form of CLID (Kang et al.,
    WSDM 2024): within each key's rows of the batch (a user's items), the teacher's and
    the student's probabilities normalised over the list, q_i = p_t,i / sum_j p_t,j and
    r_i = p_s,i / sum_j p_s,j, and the cross-entropy of r against q. Normalising the
    probabilities (not a softmax of the logits) leaves the student's scale to the
    pointwise terms beside it, so it stays calibrated; only the order within a list is
    taught here.

    L = sum_k w_k mean_{lists l, |l| >= 2} (-sum_{i in l} q_ik log r_ik) / sum_k w_k

    Zero (still connected to the logits) when no list of the batch has two rows.
    """
    t = _need_teacher(teacher, "listwise_kd")
    if not cfg.key:
        raise ValueError("listwise_kd needs a key (build_objective fills in the "
                         "dataset's group_key)")
    _, inv = torch.unique(group_ids(batch, cfg.key), return_inverse=True)
    n_lists = int(inv.max()) + 1 if len(inv) else 0
    size = torch.bincount(inv, minlength=n_lists)
    listed = size[inv] >= 2
    if not bool(listed.any()):
        return student.logits.sum() * 0.0
    ps = torch.sigmoid(student.logits.float())
    pt = torch.sigmoid(t.logits.detach().float())
    width = (n_lists, ps.shape[1])
    r = ps / ps.new_zeros(width).index_add(0, inv, ps)[inv]
    q = pt / pt.new_zeros(width).index_add(0, inv, pt)[inv]
    ce = -(q * torch.log(r.clamp(min=1e-12)))[listed]
    per_list = ce.new_zeros(width).index_add(0, inv[listed], ce)[size >= 2]  # [L, T]
    return _weighted_mean(per_list.mean(dim=0), _task_weights(cfg.task_weights, student))
