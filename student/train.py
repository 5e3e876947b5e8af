"""The student's training step and inference.

``student_step`` takes a batch and the teacher's outputs for the same rows; it is the
one step both the online stream and offline soft labels feed.
"""

from __future__ import annotations

import numpy as np
import torch

from data.spec import Batch, ExampleTable
from student.config import StudentConfig
from student.losses import Objective
from student.model import StudentModel
from teacher.outputs import TeacherOutputs


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
                 teacher: TeacherOutputs | None) -> dict[str, float]:
    """One optimizer step on ``batch``.

    Returns the total loss (``loss``), each term's value, and with a teacher the share
    of rows where student and teacher agree on the first task's side of 0.5
    (``agreement``, measured before the step).
    """
    out = model(batch.dense, batch.sparse)
    loss, parts = objective(out, teacher, batch)
    if teacher is not None:
        parts["agreement"] = float(((out.logits[:, 0] > 0) ==
                                    (teacher.logits[:, 0] > 0)).float().mean())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    parts["loss"] = float(loss.detach())
    return parts


@torch.no_grad()
def predict_student(model: StudentModel, table: ExampleTable, batch_size: int = 4096
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Serving logits [N, T] and labels [N, T] of every row of ``table``, in row order."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for arrays in table.iter_batches(batch_size, keys=model.feature_names):
        batch = arrays.to_batch()
        logits.append(model(batch.dense, batch.sparse).logits)
        labels.append(batch.labels)
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()
