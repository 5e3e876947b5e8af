"""Evaluation of the student groups and the teacher on a table in the object store,
each call made through the recovery (a replica or rank that dies in it is replaced and
the evaluation asked again)."""

from __future__ import annotations

from typing import Any

import ray
import torch
from ray.exceptions import RayError

from cluster.groups import CALL_TIMEOUT_S
from cluster.recovery import Recovery
from student.metrics import task_metrics

Metrics = dict[str, dict[str, float]]  # task -> metric -> value


def evaluate_groups(recovery: Recovery, table_ref: Any, batch_size: int,
                    tasks: tuple[str, ...], best: bool = False) -> dict[str, Metrics]:
    """Every group's serving metrics (its best state's if ``best``), the groups
    evaluating side by side."""
    refs = {n: g.replicas[0].evaluate.remote(table_ref, batch_size, best)
            for n, g in recovery.groups.items()}
    out = {}
    for name, ref in refs.items():
        try:
            # read-only arrays from the object store
            logits, labels = ray.get(ref, timeout=CALL_TIMEOUT_S)
        except RayError:  # the replica died: re-form the group and ask again
            logits, labels = recovery.on_group(
                name, lambda g: g.evaluate(table_ref, batch_size, best))
        out[name] = task_metrics(torch.tensor(logits), torch.tensor(labels), tasks)
    return out


def evaluate_teacher(recovery: Recovery, table_ref: Any, batch_size: int,
                     tasks: tuple[str, ...]) -> Metrics:
    """The teacher's metrics (every rank takes part)."""
    logits, labels = recovery.on_labels(lambda labels: labels.evaluate(table_ref, batch_size))
    return task_metrics(torch.tensor(logits), torch.tensor(labels), tasks)
