"""What the suites share: statistics, the machine, distill runs on one local cluster."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable

import torch


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rates_table(r: dict[str, Any], rows: list[tuple[str, str]], width: int) -> None:
    """Print ``name: median, min, max`` examples/s of each ``(name, key of r)``."""
    print(f"{'':<{width}}{'median ex/s':>14}{'min':>12}{'max':>12}")
    for name, key in rows:
        q = r[key]
        print(f"{name:<{width}}{q['median']:>14,.0f}{q['min']:>12,.0f}{q['max']:>12,.0f}")


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def pred_kd_cfg(**kw: Any) -> Any:
    """A distill config with the one ``pred_kd`` group (the pipeline and scale suites')."""
    from recdistill.cluster.config import DistillConfig, default_groups
    groups = tuple(g for g in default_groups() if g.student.name == "pred_kd")
    return DistillConfig(groups=groups, **kw)


def ensure_bench_teacher(cfg: Any) -> None:
    """Train ``cfg``'s missing teacher on a cluster of its own, outside the measured runs."""
    import ray

    from recdistill.cluster.session import start_local_ray
    from recdistill.cluster.teachers import ensure_teacher, teacher_exists
    from recdistill.jobs.train_teacher import run as train_teacher
    if teacher_exists(cfg):
        return
    start_local_ray(4, dashboard=False)
    try:
        ensure_teacher(cfg, train_teacher)
    finally:
        ray.shutdown()


def distill_runs(configs: list[tuple[str, Any]], teacher: str) -> list[tuple[str, dict]]:
    """Run ``jobs.distill`` for each (name, config) on one local Ray cluster; the
    reports' JSON form."""
    import dataclasses

    import ray

    from recdistill.cluster.config import RunOptions
    from recdistill.cluster.session import start_local_ray
    from recdistill.jobs.distill import run
    out = []
    start_local_ray(16, dashboard=False)
    try:
        for name, cfg in configs:
            cfg = dataclasses.replace(cfg, teacher_group=dataclasses.replace(
                cfg.teacher_group, checkpoint=teacher))
            t0 = time.perf_counter()
            report = run(cfg, RunOptions(progress=False)).to_json()
            print(f"  {name}: {time.perf_counter() - t0:.0f}s", flush=True)
            out.append((name, report))
    finally:
        ray.shutdown()
    return out


def teacher_alone(cfg: Any, data: Any, rank_cls: type | None = None, keep: bool = False,
                  then: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """The label group of ``cfg`` labelling ``cfg.passes`` passes with nobody consuming,
    called as the online driver calls it: ``teacher_group.calls_in_flight`` lockstep
    rounds in flight, each pass's shares handed over as the job does (the next pass's
    once this pass's first round is back when ``teacher_group.prefetch``). The group
    is shut down after.

    The clock starts when the first round is back: the first pass's stream start is a
    one-time cost the job overlaps with the teacher's validation evaluation (it hands
    the first pass over before evaluating); it is returned as ``first_round_s``.

    Returns ``examples`` and ``wall_s`` (after the first round), ``first_round_s``,
    ``usage`` (the ranks'), ``info`` (rank 0's setup info), ``kept`` (with ``keep``:
    per rank, the refs of its first-pass batches), and what ``then(label_group,
    result)`` adds (called before the group is shut down: more calls on its ranks)."""
    from recdistill.cluster.data import pass_shards, train_dataset
    from recdistill.cluster.label_group import LabelGroup
    labels = LabelGroup.teacher(cfg)
    if rank_cls is not None:
        labels.rank_cls = rank_cls
    out: dict[str, Any] = {"info": labels.start()}
    try:
        ds = train_dataset(data.train)
        kept: list[list[Any]] = [[] for _ in labels.actors]
        n, t0, handed = 0, time.perf_counter(), -1

        def hand(q: int) -> int:
            if handed < q < cfg.passes:
                labels.start_pass(pass_shards(ds, data.train, cfg.seed, q, labels.ranks,
                                              cfg.teacher_group.split), q)
                return q
            return handed

        first = None
        for p in range(cfg.passes):
            handed = hand(p)
            ended = False
            while not ended or labels.in_flight:
                while not ended and labels.in_flight < cfg.teacher_group.calls_in_flight:
                    labels.request(cfg.label_batches_per_call, p)
                rnd = labels.collect()
                ended = ended or rnd.ended
                if cfg.teacher_group.prefetch:
                    handed = hand(p + 1)
                if first is None:
                    first = time.perf_counter() - t0
                    t0 = time.perf_counter()
                else:
                    n += sum(len(ids) for ids, _ in rnd.batches)
                if keep and p == 0:  # batch i of every rank, then i + 1: rank j mod K's
                    for j, (_, ref) in enumerate(rnd.batches):
                        kept[j % labels.ranks].append(ref)
        out.update(wall_s=time.perf_counter() - t0, examples=n, first_round_s=first,
                   usage=labels.usage(), kept=kept)
        if then is not None:
            out.update(then(labels, out))
        return out
    finally:
        labels.shutdown()
