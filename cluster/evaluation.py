"""Evaluation of the student groups and the teacher on a table in the object store,
each call made through the failure executor (a replica or rank that dies in it is replaced and
the evaluation asked again)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from ray.exceptions import RayError

from recdistill.cluster.recovery import Executor
from recdistill.cluster.report import SEED_MARK, base_name
from recdistill.student.metrics import task_metrics

Metrics = dict[str, dict[str, float]]  # task -> metric -> value


def evaluate_groups(executor: Executor, table_ref: Any, batch_size: int,
                    tasks: tuple[str, ...], best: bool = False,
                    names: list[str] | None = None) -> dict[str, Metrics]:
    """The serving metrics of groups ``names`` (default: every group; their best
    states' if ``best``), the groups evaluating side by side."""
    refs = {n: executor.groups[n].actors.evaluate_async(table_ref, batch_size, best)
            for n in (list(executor.groups) if names is None else names)}
    out = {}
    for name, ref in refs.items():
        try:
            # read-only arrays from the object store
            logits, labels = executor.groups[name].actors.evaluation(ref)
        except RayError:  # the replica died: re-form the group and ask again
            logits, labels = executor.on_group(
                name, lambda g: g.evaluate(table_ref, batch_size, best))
        out[name] = task_metrics(torch.tensor(logits), torch.tensor(labels), tasks)
    return out


def evaluate_teacher(executor: Executor, table_ref: Any, batch_size: int,
                     tasks: tuple[str, ...]) -> tuple[Metrics, dict[str, Metrics]]:
    """The teacher's metrics (every rank takes part): of the logits the students learn
    from (a committee's mean), and per committee member ({} for a single teacher)."""
    labels, members = executor.on_labels(
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


def kd_guard(executor: Executor, teacher_valid: Metrics, pass_number: int,
             write: Callable[[str], None]) -> None:
    """The KD guard (``DistillConfig.kd_guard``) after a pass: tasks where a KD group's
    baseline (``baseline``, or ``baseline@k`` for seed k) reached the teacher's
    validation AUC lose their KD; ``write`` says so."""
    groups = executor.groups
    if "baseline" not in groups:
        return
    for name, g in groups.items():
        base, k = base_name(name)
        if base == "baseline" or g.stopped_after or \
                all(t.name == "hard_label" for t in g.cfg.student.losses):
            continue
        paired = f"baseline{SEED_MARK}{k}" if k else "baseline"
        curve = groups.get(paired, groups["baseline"]).history.curve
        off = guard_off(teacher_valid, curve, g.kd_off)
        if off != g.kd_off:
            new = [t for t in off if t not in g.kd_off]
            executor.on_group(name, lambda a: a.set_kd_guard(off))
            g.kd_off = off
            g.guard_log.update({t: pass_number for t in new})
            write(f"kd guard: {name}: KD off on {new} after pass {pass_number} ({paired} "
                  "reached the teacher's validation AUC)")
