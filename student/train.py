"""The student's training step and inference.

``student_step`` takes a batch and the teacher's outputs for the same rows; it is the
one step both the online stream and offline soft labels feed.
"""

from __future__ import annotations

import numpy as np
import torch

from recdistill.data.spec import Batch, ExampleTable
from recdistill.student.config import StudentConfig
from recdistill.student.losses import Objective, masked_bce
from recdistill.student.model import StudentModel
from recdistill.teacher.outputs import TeacherOutputs


def make_student_optimizer(model: StudentModel, cfg: StudentConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def mask_labels(batch: Batch, tasks: tuple[str, ...], label_tasks: tuple[str, ...]) -> Batch:
    """The batch with NaN labels for the tasks a student has no labels for."""
    if not label_tasks or set(label_tasks) >= set(tasks):
        return batch
    unknown = set(label_tasks) - set(tasks)
    if unknown:
        raise ValueError(f"label_tasks {sorted(unknown)} are not tasks {list(tasks)}")
    keep = torch.tensor([t in label_tasks for t in tasks])
    labels = torch.where(keep, batch.labels, torch.full_like(batch.labels, float("nan")))
    return Batch(batch.dense, batch.sparse, labels, batch.ids)


def student_step(model: StudentModel, optimizer: torch.optim.Optimizer,
                 objective: Objective, batch: Batch,
                 teacher: TeacherOutputs | None, kd_scale: float = 1.0,
                 weight: float = 1.0,
                 kd_tasks: torch.Tensor | None = None,
                 terms_off: tuple[str, ...] = ()) -> dict[str, float]:
    """One optimizer step on ``batch``.

    ``kd_tasks``: [T] bool, the tasks the teacher may teach (the KD guard); on the
    others the teacher's logit is replaced by the student's own (detached), so every
    prediction-KD term gives them no gradient and their true labels still train them
    (also inside ``multitask_kd``, which holds the hard-label term). With no task left,
    the terms that read teacher features are left out too. ``terms_off``: loss terms
    the guard turned off (feature terms), left out of the objective.

    ``kd_scale`` multiplies the KD terms (staleness weighting). ``weight`` multiplies
    the whole loss before backward (0: this replica contributes no gradient to a DDP
    step it must take part in). With a teacher adapter
    (``StudentConfig.teacher_adapter``) the adapter's map of the teacher logits, trained
    here on the true labels, is the KD target.

    Returns the total loss (``loss``), each term's value, ``label_bce`` (the BCE of the
    student's logits on the batch's true labels: not a term of the loss, but the one
    number every group's objective can be compared on), and with a teacher the share
    of rows where student and teacher agree on the first task's side of 0.5
    (``agreement``, measured before the step).
    """
    out = model(batch.dense, batch.sparse,
                teacher.logits if teacher is not None else None)
    adapter_loss = None
    if out.teacher_mapped is not None and teacher is not None:
        adapter_loss = masked_bce(out.teacher_mapped, batch.labels)
        teacher = TeacherOutputs(logits=out.teacher_mapped.detach(),
                                 features=teacher.features, version=teacher.version,
                                 members=teacher.members)
    if teacher is not None and kd_tasks is not None and not bool(kd_tasks.all()):
        # The guard: no KD gradient on the tasks off, while every loss term (a
        # multi-task KD term holds the hard labels too) keeps training on the labels.
        if not bool(kd_tasks.any()):  # every task off: no feature KD either
            terms_off = (*terms_off, *objective.feature_terms)
        teacher = TeacherOutputs(
            logits=torch.where(kd_tasks, teacher.logits.float(), out.logits.detach()),
            features=teacher.features, version=teacher.version, members=teacher.members)
    loss, parts = objective(out, teacher, batch, kd_scale, terms_off)
    if adapter_loss is not None:
        loss = loss + adapter_loss
        parts["teacher_adapter"] = float(adapter_loss.detach())
    parts["label_bce"] = float(masked_bce(out.logits.detach(), batch.labels))
    if teacher is not None:
        parts["agreement"] = float(((out.logits[:, 0] > 0) ==
                                    (teacher.logits[:, 0] > 0)).float().mean())
    optimizer.zero_grad()
    (loss * weight if weight != 1.0 else loss).backward()
    optimizer.step()
    parts["loss"] = float(loss.detach())
    return parts


@torch.no_grad()
def predict_student(model: StudentModel, table: ExampleTable, batch_size: int = 4096,
                    net: torch.nn.Module | None = None,
                    device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Serving logits [N, T] and labels [N, T] of every row of ``table``, in row order.

    ``net``: what to call instead of ``model`` (its DistributedModelParallel wrapper:
    every replica of a sharded student calls this on the same table). ``device``: where
    the model is (batches go there; None: the CPU)."""
    was_training = model.training
    model.eval()
    forward = net if net is not None else model
    logits, labels = [], []
    for arrays in table.iter_batches(batch_size, keys=model.feature_names):
        batch = arrays.to_batch()
        on = batch if device is None or device.type == "cpu" else batch.to(device)
        logits.append(forward(on.dense, on.sparse).logits.float().cpu())
        labels.append(batch.labels)
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()
