"""fanout: the teacher's CPU per example with 1, 2 and 4 student groups on one stream."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from recdistill.jobs.bench.common import distill_runs, stats


def bench_fanout(teacher: str, repeats: int) -> dict[str, Any]:
    import dataclasses

    from recdistill.cluster.config import DistillConfig, default_groups
    # The same stream in every configuration: copies of the feat_kd group (logits and
    # the 128-wide last_hidden travel). Mixing group kinds would change what the
    # teacher encodes and ships, not just how many groups read it.
    feat = next(g for g in default_groups() if g.student.name == "feat_kd")
    groups = tuple(dataclasses.replace(feat, student=dataclasses.replace(
        feat.student, name=f"feat_kd_{i}")) for i in range(4))
    runs = [(f"{n}@{r}", dataclasses.replace(DistillConfig(passes=1), groups=groups[:n]))
            for r in range(repeats) for n in (1, 2, 4)]
    per: dict[int, list[float]] = {1: [], 2: [], 4: []}
    # the same work split by stage (wall seconds per example inside the teacher rank):
    # if the forward, whose work does not depend on the groups, grows as much as the
    # total, the growth is contention for the cores, not work
    stages: dict[int, dict[str, list[float]]] = {n: {} for n in per}
    for name, report in distill_runs(runs, teacher):
        n = int(name.split("@")[0])
        u = report["teacher"]["usage"]
        per[n].append(u["cpu_s"] / u["examples"])
        for key in ("input_s", "forward_s", "encode_s"):
            stages[n].setdefault(key, []).append(u[key] / u["examples"])
    ratios = [b / a for a, b in zip(per[1], per[4])]
    return {"groups": {str(n): {"teacher_cpu_s_per_example": stats(v),
                                "seconds_per_example": {k: stats(x)
                                                        for k, x in stages[n].items()}}
                       for n, v in per.items()},
            "ratio_4_vs_1": statistics.median(ratios), "ratio_4_vs_1_per_repeat": ratios,
            "ratio_2_vs_1": statistics.median([b / a for a, b in zip(per[1], per[2])]),
            "forward_ratio_4_vs_1": statistics.median(
                [b / a for a, b in zip(stages[1]["forward_s"], stages[4]["forward_s"])]),
            "repeats": repeats, "passes": 1}


def run(a: argparse.Namespace, teacher: str) -> dict[str, Any]:
    return bench_fanout(teacher, min(a.repeats, 5))


def summary(r: dict[str, Any]) -> None:
    print(f"fanout: teacher CPU seconds per example, 1 pass of MovieLens-100k, "
          f"{r['repeats']} repeats")
    print(f"{'groups':<8}{'median us/ex':>14}{'min':>10}{'max':>10}")
    for n, v in r["groups"].items():
        q = v["teacher_cpu_s_per_example"]
        print(f"{n:<8}{q['median'] * 1e6:>14.1f}{q['min'] * 1e6:>10.1f}"
              f"{q['max'] * 1e6:>10.1f}")
    print(f"4 groups / 1 group, paired per repeat: median {r['ratio_4_vs_1']:.3f}x "
          f"({', '.join(f'{x:.3f}' for x in r['ratio_4_vs_1_per_repeat'])}); "
          f"the teacher's forward alone: {r['forward_ratio_4_vs_1']:.3f}x")
    for n, v in r["groups"].items():
        q = v["seconds_per_example"]
        print(f"  {n} groups, us/example (median): " + ", ".join(
            f"{k[:-2]} {x['median'] * 1e6:.1f}" for k, x in q.items()))