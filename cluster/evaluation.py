"""Evaluation of the student groups and the teacher on a split in the object store (an
in-memory table, or the description of files read block by block where they are
read), each call made through the failure executor (a replica or rank that dies in it is
replaced and the evaluation asked again). Metrics come from mergeable states
(``student/metrics.py``): a group's replica adds up its blocks' state and returns it;
the teacher's blocks come to the driver one at a time (a committee's students learn
from the members' mean logits, so the members' logits of a block meet here), so no
process holds a whole split's scores."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from ray.exceptions import RayError

from recdistill.cluster.recovery import Executor
from recdistill.cluster.report import SEED_MARK, base_name
from recdistill.student.losses import feature_terms
from recdistill.student.metrics import MetricState

Metrics = dict[str, dict[str, float]]  # task -> metric -> value


def evaluate_groups(executor: Executor, split_ref: Any, batch_size: int,
                    tasks: tuple[str, ...], best: bool = False,
                    names: list[str] | None = None) -> dict[str, Metrics]:
    """The serving metrics of groups ``names`` (default: every group; their best
    states' if ``best``), the groups evaluating side by side."""
    refs = {n: executor.groups[n].actors.evaluate_async(split_ref, batch_size, best)
            for n in (list(executor.groups) if names is None else names)}
    out = {}
    for name, ref in refs.items():
        try:
            state = executor.groups[name].actors.evaluation(ref)
        except RayError:  # the replica died: re-form the group and ask again
            state = executor.on_group(name, lambda g: g.evaluate(split_ref, batch_size, best))
        out[name] = state.compute()
    return out


def evaluate_teacher(executor: Executor, split_ref: Any, n_blocks: int, batch_size: int,
                     tasks: tuple[str, ...], group_key: str = ""
                     ) -> tuple[Metrics, dict[str, Metrics]]:
    """The teacher's metrics on a split of ``n_blocks`` blocks (every rank takes part):
    of the logits the students learn from (a committee's mean), and per committee member
    ({} for a single teacher). A rank lost mid-way re-forms the source, which scores
    the split again from its first block."""

    def score(source: Any) -> tuple[MetricState, dict[str, MetricState]]:
        combined, members = MetricState.empty(tasks), {}
        for b in range(n_blocks):
            labels, logits, keys = source.evaluate_members(split_ref, b, batch_size,
                                                           group_key)
            combined.update(np.mean(np.stack([np.asarray(v, np.float32)
                                              for v in logits.values()]), axis=0), labels,
                            keys)
            if len(logits) > 1:  # a committee: each member's own metrics too
                for name, v in logits.items():
                    members.setdefault(name, MetricState.empty(tasks)).update(v, labels,
                                                                              keys)
        return combined, members

    combined, members = executor.on_labels(score)
    return combined.compute(), {name: m.compute() for name, m in members.items()}


GUARD_MARGIN = 0.001  # validation AUC a KD group may trail its baseline by (noise)


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


def trailing(curve: list[dict[str, Any]], baseline_curve: list[dict[str, Any]],
             tasks: tuple[str, ...], margin: float = GUARD_MARGIN) -> tuple[str, ...]:
    """The tasks on which a KD group's best validation AUC so far trails its same-seed
    baseline's by more than ``margin``, each task judged only once both have stopped
    improving on it (their best pass is before the last): KD groups learn slower at
    first (relation KD trailed by up to 0.015 after pass 1 on MovieLens and led by 0.005
    from pass 4), and a baseline's early dip is noise, so a gap while either still
    improves says nothing yet."""
    if len(curve) < 2 or len(baseline_curve) < len(curve):
        return ()
    base = baseline_curve[:len(curve)]

    def best(c: list[dict[str, Any]], task: str) -> float:
        return max(x["valid"][task]["auc"] for x in c)

    return tuple(t for t in tasks if best(base, t) <= best(base[:-1], t)
                 and best(curve, t) <= best(curve[:-1], t)
                 and best(curve, t) < best(base, t) - margin)


def guard_step(teacher: Metrics, curve: list[dict[str, Any]],
               baseline_curve: list[dict[str, Any]], kd_off: tuple[str, ...],
               terms_off: tuple[str, ...], feature_terms: tuple[str, ...]
               ) -> dict[str, str]:
    """What the KD guard turns off after a pass: name (a task, or a feature loss term)
    -> why. A task the baseline reached the teacher on loses its KD; a group that
    trails its baseline loses its feature terms first (the terms least tied to the
    labels), and, trailing still a pass later, its KD on the tasks it trails on."""
    out = {t: "the baseline reached the teacher's validation AUC"
           for t in guard_off(teacher, baseline_curve, kd_off) if t not in kd_off}
    behind = [t for t in trailing(curve, baseline_curve, tuple(teacher)) if t not in kd_off]
    if behind:
        on = [f for f in feature_terms if f not in terms_off]
        why = f"it trailed its baseline on {behind}"
        if on:
            out.update({f: why for f in on})
        else:
            out.update({t: why for t in behind if t not in out})
    return out


def kd_guard(executor: Executor, teacher_valid: Metrics, pass_number: int,
             write: Callable[[str], None], probe: dict[str, Metrics] | None = None) -> None:
    """The KD guard (``DistillConfig.kd_guard``) after a pass, for every KD group
    against its same-seed baseline (``baseline``, or ``baseline@k`` for seed k): see
    :func:`guard_step`; ``write`` says what it turned off and why. ``probe``: the
    baselines' validation metrics within pass 1 (``pass_number`` 0), which only the
    "baseline reached the teacher" rule reads."""
    groups = executor.groups
    if "baseline" not in groups:
        return
    for name, g in groups.items():
        base, k = base_name(name)
        if base == "baseline" or g.stopped_after or \
                all(t.name == "hard_label" for t in g.cfg.student.losses):
            continue
        paired = f"baseline{SEED_MARK}{k}" if k else "baseline"
        paired = paired if paired in groups else "baseline"
        curve = groups[paired].history.curve if probe is None else \
            [{"valid": probe[paired]}]
        features = feature_terms(g.cfg.student)
        new = guard_step(teacher_valid, g.history.curve if probe is None else [], curve,
                         g.kd_off, g.terms_off, features)
        if not new:
            continue
        for what, why in new.items():
            g.guard_log[what], g.guard_why[what] = pass_number, why
        # (with every task off the replicas leave out the feature terms too)
        executor.on_group(name, lambda a: a.set_kd_guard(g.kd_off, g.terms_off))
        for what, why in new.items():
            when = f"after pass {pass_number}" if pass_number else "in pass 1 (probe)"
            write(f"kd guard: {name}: {'KD on ' if what in teacher_valid else ''}{what} "
                  f"off {when} ({why}; {paired})")


def guard_probe(executor: Executor, teacher_valid: Metrics, share: float, pass_rows: int,
                evaluate: Callable[[list[str]], dict[str, Metrics]],
                write: Callable[[str], None]) -> bool:
    """The KD guard's probe (``DistillConfig.kd_guard_probe``): once every group has
    taken the batches up to ``share`` of pass 1's ``pass_rows`` rows (and no more:
    :func:`probe_room`), the baselines are evaluated on validation (after those
    batches: an actor's calls run in order) and every task a baseline already beats
    the teacher on loses its KD from the next batch on (a weak teacher taught a whole
    first pass before). Returns whether it ran."""
    bases = [n for n in executor.groups if base_name(n)[0] == "baseline"]
    if not bases or any(_taken(g.ledger) < share * pass_rows
                        for g in executor.groups.values() if not g.stopped_after):
        return False
    kd_guard(executor, teacher_valid, 0, write, probe=evaluate(bases))
    return True


def probe_room(ledger: Any, share: float, pass_rows: int, most: int, batch_rows: int
               ) -> int:
    """Batches (of ``batch_rows``) a group may take now while the probe is pending in
    pass 1: none past ``share`` of the pass. Every group waits there until the probe
    has run, so its decision applies from the same batch in each group and a seed
    still gives one answer (without the wait, how far the KD groups had got when the
    baselines were evaluated depended on timing)."""
    left = int(share * pass_rows) - _taken(ledger)
    return min(most, max(0, -(-left // batch_rows)))


def _taken(ledger: Any) -> int:
    """Rows of pass 1 a group has trained or has in flight."""
    return ledger.books(0).examples + sum(len(i.ids) for i in ledger.in_flight.values())
