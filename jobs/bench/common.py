"""What the suites share: statistics, the machine, distill runs on one local cluster."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any

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
    from cluster.config import DistillConfig, default_groups
    groups = tuple(g for g in default_groups() if g.student.name == "pred_kd")
    return DistillConfig(groups=groups, **kw)


def ensure_bench_teacher(cfg: Any) -> None:
    """Train ``cfg``'s missing teacher on a cluster of its own, outside the measured runs."""
    import ray

    from jobs.common import start_local_ray
    from jobs.distill import ensure_teacher, teacher_exists
    if teacher_exists(cfg):
        return
    start_local_ray(4, dashboard=False)
    try:
        ensure_teacher(cfg)
    finally:
        ray.shutdown()


def distill_runs(configs: list[tuple[str, Any]], teacher: str) -> list[tuple[str, dict]]:
    """Run ``jobs.distill`` for each (name, config) on one local Ray cluster; the
    reports' JSON form."""
    import dataclasses

    import ray

    from cluster.config import RunOptions
    from jobs.common import start_local_ray
    from jobs.distill import run
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
