"""committee: what a teacher committee costs, 1, 2 and 3 members of the default one."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from recdistill.jobs.bench.common import distill_runs, pred_kd_cfg, stats


def bench_committee(teacher: str, repeats: int) -> dict[str, Any]:
    import dataclasses

    from recdistill.cluster.config import default_teachers
    from recdistill.teacher.config import TeacherConfig
    members = default_teachers(TeacherConfig())
    runs = [(f"{k}@{r}", dataclasses.replace(pred_kd_cfg(passes=1), teachers=members[:k]))
            for r in range(repeats) for k in (1, 2, 3)]
    cpu: dict[int, list[float]] = {1: [], 2: [], 3: []}
    rate: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for name, report in distill_runs(runs, teacher):
        k = int(name.split("@")[0])
        u = report["teacher"]["usage"]
        cpu[k].append(u["cpu_s"] / u["examples"])  # every member's CPU, per example
        rate[k].append(report["students"]["pred_kd"]["examples_trained"]
                       / report["train_wall_s"])
    return {"members": {str(k): {"teacher_cpu_s_per_example": stats(cpu[k]),
                                 "online_examples_per_s": stats(rate[k]),
                                 "names": [m.name for m in members[:k]]} for k in cpu},
            "cpu_ratio_3_vs_1": statistics.median(
                [c / a for a, c in zip(cpu[1], cpu[3])]),
            "rate_ratio_3_vs_1": statistics.median(
                [c / a for a, c in zip(rate[1], rate[3])]),
            "repeats": repeats, "passes": 1}


def run(a: argparse.Namespace, teacher: str) -> dict[str, Any]:
    return bench_committee(teacher, min(a.repeats, 5))


def summary(r: dict[str, Any]) -> None:
    print(f"committee: 1 pass of MovieLens-100k, one pred_kd group, {r['repeats']} repeats")
    print(f"{'members':<30}{'teacher CPU us/ex':>18}{'online ex/s':>14}")
    for k, v in r["members"].items():
        print(f"{k + ' ' + '+'.join(v['names']):<30}"
              f"{v['teacher_cpu_s_per_example']['median'] * 1e6:>18.1f}"
              f"{v['online_examples_per_s']['median']:>14,.0f}")
    print(f"3 members / 1, paired per repeat: teacher CPU {r['cpu_ratio_3_vs_1']:.2f}x, "
          f"online examples/s {r['rate_ratio_3_vs_1']:.2f}x")
