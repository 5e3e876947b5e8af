"""Evaluation of the student groups and the teacher on a table in the object store,
each call made through the recovery (a replica or rank that dies in it is replaced and
the evaluation asked again)."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayError

from recdistill.cluster.groups import CALL_TIMEOUT_S
from recdistill.cluster.recovery import Recovery
from recdistill.student.metrics import task_metrics

Metrics = dict[str, dict[str, float]]  # task -> metric -> value


def evaluate_groups(recovery: Recovery, table_ref: Any, batch_size: int,
                    tasks: tuple[str, ...], best: bool = False) -> dict[str, Metrics]:
    """Every group's serving metrics (its best state's if ``best``), the groups
    evaluating side by side."""
    refs = {n: g.evaluate_async(table_ref, batch_size, best)
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
                     tasks: tuple[str, ...]) -> tuple[Metrics, dict[str, Metrics]]:
    """The teacher's metrics (every rank takes part): of the logits the students learn
    from (a committee's mean), and per committee member ({} for a single teacher)."""
    labels, members = recovery.on_labels(
        lambda source: source.evaluate_members(table_ref, batch_size))
    logits = np.mean(np.stack([np.asarray(v, np.float32) for v in members.values()]),
                     axis=0)
    combined = task_metrics(torch.tensor(logits), torch.tensor(labels), tasks)
    if len(members) == 1:
        return combined, {}
    return combined, {name: task_metrics(torch.tensor(v), torch.tensor(labels), tasks)
                      for name, v in members.items()}


def guard_off(teacher: Metrics, baseline_curve: list[dict[str, Any]], kd_off: tuple[str, ...]
              ) -> tuple[str, ...]:
    """The KD guard's validation gate: the tasks on which the teacher no longer teaches,
    ``kd_off`` plus every task whose validation AUC the no-KD baseline has reached
    (its best pass so far >= the teacher's). Tasks once off stay off: a baseline that
    caught up with the teacher stays there."""
    off = list(kd_off)
    for task, m in teacher.items():
        best = max((c["valid"][task]["auc"] for c in baseline_curve), default=-1.0)
        if task not in off and best >= m["auc"]:
            off.append(task)
    return tuple(t for t in teacher if t in off)
